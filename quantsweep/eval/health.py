"""Diagnosis of non-finite models: which module first produces NaN/Inf, and are weights finite?

When a task reports non-finite samples, :func:`diagnose_nonfinite` runs one probe
forward pass with hooks on every module and names the first decoder layer and
module (in execution order) whose output contains NaN or Inf. It also reports
any parameters or buffers that are themselves non-finite.

Example:
    >>> import quantsweep
    >>> model, tokenizer = quantsweep.load_model("toy")
    >>> model.model.layers[2].mlp.down_proj.weight.data[0, 0] = float("nan")  # break one weight
    >>> report = diagnose_nonfinite(model, tokenizer)
    >>> report.first_module, report.first_layer
    ('model.layers.2.mlp.down_proj', 2)
    >>> report.nonfinite_weights
    ['model.layers.2.mlp.down_proj.weight']
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from quantsweep.models.layout import decoder_layer_prefix
from quantsweep.quant.finite import nonfinite_weights

DEFAULT_PROBE_TEXT = "The quick brown fox jumps over the lazy dog. " * 4


@dataclass
class NonFiniteReport:
    """Where non-finite values first appear.

    Attributes:
        logits_finite: whether the probe's logits were all finite.
        first_module: dotted name of the first module (execution order) whose output was non-finite.
        first_layer: index of the decoder layer holding that module, if any.
        nonfinite_weights: names of parameters and buffers that contain NaN/Inf
            (:func:`quantsweep.quant.finite.nonfinite_weights`).

    Example:
        >>> NonFiniteReport(logits_finite=True).to_dict()["first_module"] is None
        True
    """

    logits_finite: bool
    first_module: str | None = None
    first_layer: int | None = None
    nonfinite_weights: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return _first_tensor(output[0])
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


def diagnose_nonfinite(model: nn.Module, tokenizer, text: str = DEFAULT_PROBE_TEXT) -> NonFiniteReport:
    """Run one probe forward pass and name where NaN/Inf first appears.

    Example:
        >>> import quantsweep
        >>> model, tokenizer = quantsweep.load_model("toy")
        >>> diagnose_nonfinite(model, tokenizer)
        NonFiniteReport(logits_finite=True, first_module=None, first_layer=None, nonfinite_weights=[])
        >>> model.lm_head.bias = torch.nn.Parameter(torch.full((model.config.vocab_size,), float("inf")))
        >>> report = diagnose_nonfinite(model, tokenizer)
        >>> report.logits_finite, report.first_module, report.first_layer
        (False, 'lm_head', None)
    """
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name or module is model:
            continue

        def hook(mod, args, output, name=name):
            tensor = _first_tensor(output)
            if tensor is not None and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                order.append(name)

        handles.append(module.register_forward_hook(hook))
    try:
        device = next(model.parameters()).device
        ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        for handle in handles:
            handle.remove()
    report = NonFiniteReport(
        logits_finite=bool(torch.isfinite(logits).all()), nonfinite_weights=list(nonfinite_weights(model))
    )
    if order:
        # hooks fire when a module *finishes*; a parent finishes after its children, so the
        # first entry is the innermost module that produced a non-finite output first
        report.first_module = order[0]
        match = re.match(rf"^{re.escape(decoder_layer_prefix(model))}\.(\d+)\.", order[0] + ".")
        report.first_layer = int(match.group(1)) if match else None
    return report


class NonFiniteLogitCounter:
    """Counts generated sequences whose logits contain NaN or Inf (a forward hook on the model).

    Generation batches are wrapped in :meth:`tracking`; outside it the hook does nothing,
    so log-likelihood scoring (whose NaN/Inf shows in the log-likelihoods themselves) is
    not counted twice.

    Example:
        >>> import quantsweep
        >>> model, tokenizer = quantsweep.load_model("toy")
        >>> prompts = tokenizer(["the color of po ba fe is", "the home of po ba fe is"], return_tensors="pt")
        >>> counter = NonFiniteLogitCounter(model)
        >>> with counter.tracking(batch_size=2):
        ...     _ = model.generate(**prompts, max_new_tokens=2, do_sample=False)
        >>> counter.total
        0
        >>> model.lm_head.weight.data[1] = float("nan")  # every row's logits now hold a NaN
        >>> with counter.tracking(batch_size=2):
        ...     _ = model.generate(**prompts, max_new_tokens=2, do_sample=False)
        >>> counter.total
        2
        >>> counter.close()
    """

    def __init__(self, model: nn.Module):
        self.row_flags: torch.Tensor | None = None
        self.total = 0
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        logits = getattr(output, "logits", None)
        if logits is None or self.row_flags is None:
            return
        bad = ~torch.isfinite(logits.detach()).reshape(logits.shape[0], -1).all(dim=-1)
        if bad.shape[0] == self.row_flags.shape[0]:
            self.row_flags |= bad.to(self.row_flags.device)
        elif bad.any():  # batch changed shape mid-generation (beam search): count the call
            self.row_flags[:] = True

    @contextlib.contextmanager
    def tracking(self, batch_size: int):
        """Count the rows of one generation batch of ``batch_size`` sequences."""
        self.row_flags = torch.zeros(batch_size, dtype=torch.bool)
        try:
            yield
        finally:
            self.total += int(self.row_flags.sum())
            self.row_flags = None

    def close(self) -> None:
        """Remove the hook."""
        self._handle.remove()
