"""The sequential, layer-by-layer calibration engine shared by GPTQ, GPTAQ, AWQ, ...

Peak device memory is one decoder layer plus the calibration activations: the
model stays where it was loaded (the host), and one decoder layer at a time moves
to the compute device.

Procedure of :func:`run_sequential`:

1. **Capture.** The parts before the first decoder layer (embeddings, rotary
   tables) move to the device; layer 0 is swapped for a catcher that records its
   input hidden states and keyword arguments (``attention_mask``,
   ``position_ids``, ``position_embeddings``, ...) for each calibration batch and
   then stops the forward pass. Those parts move back to the host.
2. **For each decoder layer**, in order:

   a. move the layer to the device;
   b. with ``propagate_fp=True``, run the still full-precision layer on the
      full-precision stream, giving the next layer's full-precision inputs;
   c. call ``layer_quantizer(ctx)`` with a :class:`LayerContext`. The quantizer
      changes the layer's weights in place (and may attach hooks). It reads
      activations with :meth:`LayerContext.capture_inputs`, which runs the layer
      on every batch with forward hooks and hands each hooked module's input to
      a callback (so Hessians ``H = 2 X^T X / n`` accumulate without storing X);
   d. run the now *quantized* layer on the quantized stream: its outputs are the
      next layer's inputs (as in GPTQ, errors of earlier layers are seen by later
      ones);
   e. move the layer back to the host and release cached device memory.

The engine returns one :class:`LayerReport` per layer with wall time (device
synchronised) and peak device memory (None on CPU), and whatever dict the
quantizer returned.

Helpers a method usually needs:

* :func:`require_calibration` - the clear error when no calibration data was given;
* :func:`compute_device` - resolve a recipe's ``device`` field (``auto``: the model's
  accelerator if it lives on one, else the best available, the model staying on the host);
* :meth:`LayerContext.linear_groups` - the Linears grouped by shared input, in call
  order (q/k/v, o, gate/up, down): GPTQ's true-sequential order, AWQ's scaling groups;
* :meth:`LayerContext.capture_inputs` - stream each module's inputs (and, with
  ``propagate_fp=True``, the full-precision model's inputs to the same module,
  optionally from an FP copy of the layer, ``fp_layer``) to a callback.

Methods turn the returned reports into plain data with
:func:`quantsweep.methods.result.layer_report` and return them in their
:class:`~quantsweep.methods.result.QuantizationResult`.

Memory: only the layer being quantized and the calibration activations (one
stream, two with ``propagate_fp``; N x L x hidden each, host-side with
``activations_on_host=True``) live on the device, plus what the quantizer
allocates (GPTQ: one ``in x in`` Hessian and its factor per input group).

Writing a method on top of it (what AWQ, SmoothQuant and GPTQ do)::

    def quantize_layer(ctx: LayerContext) -> dict:
        linears = ctx.linears()                      # {"self_attn.q_proj": Linear, ...}
        sums = {name: 0 for name in linears}
        def observe(name, x, x_fp):                  # x: [tokens, in_features] on ctx.device
            sums[name] = sums[name] + x.abs().sum(0)
        ctx.capture_inputs(linears, observe)
        for name, linear in linears.items():
            linear.weight.data = my_quantizer(linear.weight.data, sums[name])
        return {"linears": len(linears)}

    reports = run_sequential(model, calibration, "cpu", quantize_layer, desc="my-method")

Example:
    >>> import quantsweep
    >>> model, _ = quantsweep.load_model("toy")
    >>> calibration = torch.randint(0, 123, (1, 8))  # token ids [N, L]
    >>> reports = run_sequential(model, calibration, "cpu", lambda ctx: None)
    >>> [report.name for report in reports]
    ['model.layers.0', 'model.layers.1', 'model.layers.2', 'model.layers.3']
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from quantsweep import device as devices
from quantsweep._text import safe_text
from quantsweep.models.layout import decoder_layer_prefix, decoder_layers, linears_in, lm_head

logger = logging.getLogger(__name__)

# What a quantizer returns: None, or a small dict of facts recorded in the LayerReport.
LayerQuantizer = Callable[["LayerContext"], "dict[str, Any] | None"]
# Callback of capture_inputs: (module name, input [tokens, features], FP-stream input or None).
InputObserver = Callable[[str, torch.Tensor, "torch.Tensor | None"], None]


class _StopForward(Exception):
    """Raised by the catcher to end the forward pass once layer 0's inputs are recorded."""


@dataclass
class LayerReport:
    """What happened to one decoder layer.

    Attributes:
        index: position of the layer in the decoder stack.
        name: dotted module name, e.g. ``model.layers.3``.
        seconds: wall time for the layer (move, quantize, recompute outputs, move back),
            measured with the device synchronised.
        peak_device_bytes: peak device memory during the layer; None on CPU.
        info: the dict the layer quantizer returned (empty if it returned None).

    Example:
        >>> LayerReport(0, "model.layers.0", 0.5, None).to_dict()["seconds"]
        0.5
    """

    index: int
    name: str
    seconds: float
    peak_device_bytes: int | None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON results and benchmarks.

        Example:
            >>> LayerReport(1, "model.layers.1", 0.1, None).to_dict()["index"]
            1
        """
        return {
            "index": self.index,
            "name": self.name,
            "seconds": self.seconds,
            "peak_device_bytes": self.peak_device_bytes,
            "info": dict(self.info),
        }


@dataclass
class LayerContext:
    """Everything a layer quantizer sees for one decoder layer.

    Attributes:
        index: position of the layer in the decoder stack.
        name: dotted module name of the layer, e.g. ``model.layers.0``.
        layer: the decoder layer, already on ``device``; quantize it in place.
        device: the compute device string (``"cpu"``, ``"cuda:0"``, ``"npu:0"``).
        inputs: the layer's input hidden states on the quantized stream, one tensor
            ``[batch, seq_len, hidden]`` per calibration batch.
        fp_inputs: the same on the full-precision stream (``propagate_fp=True``), else None.
        layer_kwargs: keyword arguments the model passes to the layer, one dict per
            batch (attention mask, position ids, rotary ``position_embeddings``, ...);
            positional arguments after the hidden states, if any, sit under
            :data:`POSITIONAL_KEY`. Call the layer through :meth:`forward`.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> calibration = torch.randint(0, 123, (1, 8))  # token ids [N, L]
        >>> def quantizer(ctx):
        ...     outputs = ctx.forward()  # the layer's outputs, per batch
        ...     return {"batches": len(outputs)}
        >>> run_sequential(model, calibration, "cpu", quantizer)[0].info
        {'batches': 1}
    """

    index: int
    name: str
    layer: nn.Module
    device: str
    inputs: list[torch.Tensor]
    fp_inputs: list[torch.Tensor] | None
    layer_kwargs: list[dict[str, Any]]

    def linears(self) -> dict[str, nn.Linear]:
        """The layer's Linears by name relative to the layer (``self_attn.q_proj``, ...).

        Example:
            >>> import quantsweep
            >>> model, _ = quantsweep.load_model("toy")
            >>> calibration = torch.randint(0, 123, (1, 8))  # token ids [N, L]
            >>> seen = {}
            >>> def look(ctx):
            ...     seen[ctx.index] = sorted(ctx.linears())[:1]
            >>> _ = run_sequential(model, calibration, "cpu", look)
            >>> seen[0]
            ['mlp.down_proj']
        """
        return linears_in(self.layer)

    def full_name(self, relative: str) -> str:
        """The model-level dotted name of a module of this layer.

        Example:
            >>> import quantsweep
            >>> model, _ = quantsweep.load_model("toy")
            >>> calibration = torch.randint(0, 123, (1, 8))  # token ids [N, L]
            >>> seen = {}
            >>> def look(ctx):
            ...     seen[ctx.index] = ctx.full_name("mlp.up_proj")
            >>> _ = run_sequential(model, calibration, "cpu", look)
            >>> seen[0]
            'model.layers.0.mlp.up_proj'
        """
        return f"{self.name}.{relative}"

    def forward(self, inputs: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Run the layer (as it is now) on each batch; return its output hidden states.

        Args:
            inputs: batches to run; defaults to :attr:`inputs` (the quantized stream).

        Example:
            >>> import quantsweep
            >>> model, _ = quantsweep.load_model("toy")
            >>> calibration = torch.randint(0, 123, (1, 8))  # token ids [N, L]
            >>> seen = {}
            >>> def look(ctx):
            ...     seen[ctx.index] = [tuple(output.shape) for output in ctx.forward()]
            >>> _ = run_sequential(model, calibration, "cpu", look)
            >>> seen[0]
            [(1, 8, 128)]
        """
        batches = self.inputs if inputs is None else inputs
        return [
            _layer_output(self.layer, batch.to(self.device), kwargs)
            for batch, kwargs in zip(batches, self.layer_kwargs)
        ]

    def linear_groups(self) -> list[dict[str, nn.Linear]]:
        """The layer's Linears grouped by shared input, in the order the layer calls them.

        For a Llama block: ``[{q, k, v}, {o}, {gate, up}, {down}]``. GPTQ's
        "true sequential" mode quantizes one group, then re-captures the next
        group's inputs; AWQ scales the Linears that share an input together.
        Found from one forward pass on the first batch.

        Example:
            >>> import quantsweep
            >>> model, _ = quantsweep.load_model("toy")
            >>> calibration = torch.randint(0, 123, (1, 8))  # token ids [N, L]
            >>> seen = {}
            >>> def look(ctx):
            ...     seen[ctx.index] = [sorted(group) for group in ctx.linear_groups()]
            >>> _ = run_sequential(model, calibration, "cpu", look)
            >>> seen[0]
            [['self_attn.k_proj', 'self_attn.q_proj', 'self_attn.v_proj'], ['self_attn.o_proj'], ['mlp.gate_proj', 'mlp.up_proj'], ['mlp.down_proj']]
        """
        linears = self.linears()
        order: list[tuple[str, int]] = []
        alive: list[torch.Tensor] = []  # hold inputs so no address is reused within the pass

        def make_hook(name: str):
            def hook(module, args, kwargs):
                x = args[0] if args else kwargs.get("hidden_states")
                alive.append(x)
                order.append((name, (x.data_ptr(), tuple(x.shape)) if x is not None else id(module)))

            return hook

        handles = [
            module.register_forward_pre_hook(make_hook(name), with_kwargs=True) for name, module in linears.items()
        ]
        try:
            _layer_output(self.layer, self.inputs[0].to(self.device), self.layer_kwargs[0])
        finally:
            for handle in handles:
                handle.remove()
        groups: dict[object, dict[str, nn.Linear]] = {}
        for name, key in order:
            groups.setdefault(key, {}).setdefault(name, linears[name])
        found = list(groups.values())
        unused = [name for name in linears if not any(name in group for group in found)]
        if unused:  # Linears the forward never reached still get quantized, last
            found.append({name: linears[name] for name in unused})
        return found

    def capture_inputs(
        self,
        modules: dict[str, nn.Module],
        observe: InputObserver,
        *,
        with_fp: bool = False,
        fp_layer: nn.Module | None = None,
    ) -> None:
        """Run the layer on every batch and show ``observe`` the input of each module.

        For every batch and every module in ``modules`` (usually from
        :meth:`linears`), ``observe(name, x, x_fp)`` is called with the module's
        first input (positional, or the ``hidden_states`` keyword) on the quantized
        stream, flattened to 2-D ``[tokens, features]``.
        With ``with_fp=True`` (needs ``propagate_fp=True``) the layer first runs on
        the full-precision batch and ``x_fp`` is the same module's input there
        (same shape as ``x``); otherwise ``x_fp`` is None. Nothing is stored
        beyond one batch, so statistics such as Hessians accumulate in O(features^2).

        The full-precision pass runs ``fp_layer`` when given (a copy of the layer
        taken before any of its weights changed; ``modules`` must then be keyed by
        names relative to the layer, as :meth:`linears` gives them), so that
        ``x_fp`` stays the full-precision model's input even after some Linears of
        this layer were quantized.

        Raises:
            ValueError: ``with_fp=True`` but the engine does not carry the FP stream.

        Example:
            >>> import quantsweep
            >>> model, _ = quantsweep.load_model("toy")
            >>> calibration = torch.randint(0, 123, (1, 8))  # token ids [N, L]
            >>> shapes = {}
            >>> def look(ctx):
            ...     def observe(name, x, x_fp):
            ...         shapes[name] = tuple(x.shape)
            ...     ctx.capture_inputs(ctx.linears(), observe)
            >>> _ = run_sequential(model, calibration, "cpu", look)
            >>> shapes["mlp.down_proj"], shapes["self_attn.q_proj"]  # [tokens, in_features]
            ((8, 384), (8, 128))
        """
        if with_fp and self.fp_inputs is None:
            raise ValueError("capture_inputs(with_fp=True) needs run_sequential(..., propagate_fp=True)")
        recorded: dict[str, torch.Tensor] = {}
        mode = {"fp": False}

        def make_hook(name: str):
            def hook(module, args, kwargs):
                x = args[0] if args else kwargs.get("hidden_states")
                if x is None:
                    raise ValueError(f"cannot find the input of module {self.full_name(name)!r}")
                x = x.detach().reshape(-1, x.shape[-1])
                if mode["fp"]:
                    recorded[name] = x
                else:
                    observe(name, x, recorded.pop(name, None) if with_fp else None)

            return hook

        handles = [
            module.register_forward_pre_hook(make_hook(name), with_kwargs=True) for name, module in modules.items()
        ]
        fp_runner = self.layer
        if with_fp and fp_layer is not None:
            fp_runner = fp_layer
            handles += [
                fp_layer.get_submodule(name).register_forward_pre_hook(make_hook(name), with_kwargs=True)
                for name in modules
            ]
        try:
            for index, kwargs in enumerate(self.layer_kwargs):
                if with_fp:
                    mode["fp"] = True
                    _layer_output(fp_runner, self.fp_inputs[index].to(self.device), kwargs)
                    mode["fp"] = False
                _layer_output(self.layer, self.inputs[index].to(self.device), kwargs)
                recorded.clear()
        finally:
            for handle in handles:
                handle.remove()


# Key in a layer-kwargs dict holding positional arguments after the hidden states
# (older or non-Llama models pass e.g. the cache or mask positionally).
POSITIONAL_KEY = "__positional_args__"


def _layer_output(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    if POSITIONAL_KEY in kwargs:
        kwargs = dict(kwargs)
        output = layer(hidden, *kwargs.pop(POSITIONAL_KEY), **kwargs)
    else:
        output = layer(hidden, **kwargs)
    # Older transformers return (hidden_states, ...) tuples; 5.x returns the tensor.
    return output[0] if isinstance(output, (tuple, list)) else output


def _to_device(value: Any, device: str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(item, device) for item in value)
    if isinstance(value, list):
        return [_to_device(item, device) for item in value]
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    return value


class _Catcher(nn.Module):
    """Stands in for decoder layer 0: records its inputs, then stops the forward pass."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer
        self.hidden: torch.Tensor | None = None
        self.kwargs: dict[str, Any] = {}

    def forward(self, *args, **kwargs):
        if args:
            self.hidden = args[0]
            if len(args) > 1:
                kwargs[POSITIONAL_KEY] = tuple(args[1:])
        else:
            self.hidden = kwargs.pop("hidden_states")
        self.kwargs = kwargs
        raise _StopForward

    def __getattr__(self, name: str):
        # Model code may read attributes of the layer it calls (e.g. attention_type).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.layer, name)


def _move_tensors(module: nn.Module, device: str) -> list[tuple[nn.Module, str, str, torch.device]]:
    """Move ``module``'s own parameters and buffers (not its children's); return how to undo it."""
    moved = []
    for kind in ("_parameters", "_buffers"):
        for key, tensor in getattr(module, kind).items():
            if tensor is None or str(tensor.device) == device:
                continue
            moved.append((module, kind, key, tensor.device))
            if kind == "_parameters":
                tensor.data = tensor.data.to(device)
            else:
                module._buffers[key] = tensor.to(device)
    return moved


def _restore_tensors(moved) -> None:
    for module, kind, key, original in moved:
        tensor = getattr(module, kind)[key]
        if kind == "_parameters":
            tensor.data = tensor.data.to(original)
        else:
            module._buffers[key] = tensor.to(original)


def capture_layer_inputs(
    model: nn.Module,
    input_ids: torch.Tensor,
    device: str,
    *,
    batch_size: int = 1,
    activations_on_host: bool = False,
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Hidden states and keyword arguments entering decoder layer 0, one entry per batch.

    Only the modules outside the decoder layers (and outside the output head) visit
    the device, and only for this call.

    Args:
        model: a causal LM whose layers :func:`quantsweep.models.layout.decoder_layers` finds.
        input_ids: LongTensor ``[N, L]``.
        device: compute device.
        batch_size: calibration samples per forward pass.
        activations_on_host: keep the captured hidden states in host memory.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> calibration = torch.randint(0, 123, (1, 8))  # token ids [N, L]
        >>> inputs, kwargs = capture_layer_inputs(model, calibration, "cpu")
        >>> tuple(inputs[0].shape), "position_embeddings" in kwargs[0]
        ((1, 8, 128), True)
    """
    layers = decoder_layers(model)
    inside = {id(m) for layer in layers for m in layer.modules()}
    head = lm_head(model)
    if head is not None:
        inside.update(id(m) for m in head.modules())
    moved = []
    for module in model.modules():
        if id(module) not in inside:
            moved.extend(_move_tensors(module, device))
    catcher = _Catcher(layers[0])
    layers[0] = catcher
    hidden_states: list[torch.Tensor] = []
    kwargs_list: list[dict[str, Any]] = []
    kwargs_by_batch_size: dict[int, dict[str, Any]] = {}
    try:
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                batch = input_ids[start : start + batch_size].to(device)
                try:
                    model(input_ids=batch, use_cache=False)
                except _StopForward:
                    pass
                else:
                    raise RuntimeError("the model never called its first decoder layer")  # internal invariant
                hidden = catcher.hidden.detach()
                hidden_states.append(hidden.to("cpu") if activations_on_host else hidden)
                # Without padding the kwargs depend only on the batch shape: keep one copy per size.
                size = batch.shape[0]
                if size not in kwargs_by_batch_size:
                    kwargs_by_batch_size[size] = _to_device(catcher.kwargs, device)
                kwargs_list.append(kwargs_by_batch_size[size])
                catcher.hidden, catcher.kwargs = None, {}
    finally:
        layers[0] = catcher.layer
        _restore_tensors(moved)
    return hidden_states, kwargs_list


def require_calibration(calibration, config):
    """Return ``calibration`` if it is usable, else raise a ValueError saying how to supply it.

    Accepts :class:`quantsweep.calibration.CalibrationData` or a LongTensor ``[N, L]``.

    Example:
        >>> import quantsweep
        >>> require_calibration(None, quantsweep.get_recipe("w4-gptq"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: recipe 'w4-gptq' (method gptq) needs calibration data: pass ...
    """
    if calibration is None:
        raise ValueError(
            f"recipe {config.name!r} (method {config.method}) needs calibration data: pass "
            "calibration=quantsweep.calibration.load_calibration(source, tokenizer, n_samples, seq_len) "
            "to quantize(), or --calib-source SOURCE on the command line (toy, wikitext2, c4, pile, "
            "or a local .txt/.jsonl file)"
        )
    ids = calibration.input_ids if hasattr(calibration, "input_ids") else calibration
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
        raise TypeError(
            f"recipe {config.name!r}: calibration must be CalibrationData or a LongTensor of token ids "
            f"[N, L], got {type(calibration).__name__}"
        )
    return calibration


def compute_device(requested: str, model: nn.Module) -> str:
    """The device one decoder layer is quantized on.

    ``"auto"`` keeps an accelerator the model already lives on, and otherwise
    takes the best available device (NPU, then CUDA, then CPU) while the model
    itself stays on the host. Any other value goes through
    :func:`quantsweep.device.resolve_device`.

    Example:
        >>> compute_device("cpu", nn.Linear(2, 2))
        'cpu'
    """
    if requested == "auto":
        home = _module_device(model)
        if home.type != "cpu":
            return devices.resolve_device(str(home))
    return devices.resolve_device(requested)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


def run_sequential(
    model: nn.Module,
    calibration,
    device: str | torch.device,
    layer_quantizer: LayerQuantizer,
    *,
    propagate_fp: bool = False,
    batch_size: int = 1,
    activations_on_host: bool = False,
    desc: str = "quantize",
) -> list[LayerReport]:
    """Quantize ``model`` one decoder layer at a time on ``device``; see the module docstring.

    Args:
        model: a Hugging Face causal LM, on the host (or already on ``device``).
        calibration: a :class:`quantsweep.calibration.CalibrationData` or a LongTensor ``[N, L]``.
        device: compute device, e.g. ``"cpu"``, ``"cuda:0"``, ``"npu:0"``, ``"auto"``.
        layer_quantizer: ``fn(ctx: LayerContext) -> dict | None``, quantizes ``ctx.layer`` in place.
        propagate_fp: also carry the full-precision stream (GPTAQ's target), in
            ``ctx.fp_inputs``; costs one more set of activations and one more forward per layer.
        batch_size: calibration samples per forward pass (memory ~ batch x L x intermediate).
        activations_on_host: keep activations between layers in host memory, moving one
            batch at a time; lowers device memory for long calibration sets, costs transfers.
        desc: label of the progress bar.

    Returns:
        One :class:`LayerReport` per decoder layer, in order.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> calibration = torch.randint(0, 123, (1, 8))  # token ids [N, L]
        >>> reports = run_sequential(model, calibration, "cpu", lambda ctx: {"layer": ctx.index})
        >>> len(reports), reports[-1].info
        (4, {'layer': 3})
    """
    input_ids = calibration.input_ids if hasattr(calibration, "input_ids") else calibration
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise TypeError("calibration must be CalibrationData or a LongTensor of token ids [N, L]")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = devices.resolve_device(device)
    layers = decoder_layers(model)
    prefix = decoder_layer_prefix(model)
    inputs, layer_kwargs = capture_layer_inputs(
        model, input_ids, device, batch_size=batch_size, activations_on_host=activations_on_host
    )
    fp_inputs = [x.clone() for x in inputs] if propagate_fp else None
    reports: list[LayerReport] = []
    park = (lambda x: x.to("cpu")) if activations_on_host else (lambda x: x)
    with torch.no_grad():
        for index, layer in enumerate(tqdm(layers, desc=safe_text(desc), unit="layer", leave=False)):
            devices.synchronize(device)
            devices.reset_peak_memory(device)
            start = time.perf_counter()
            home = _module_device(layer)
            layer.to(device)
            ctx = LayerContext(
                index=index,
                name=f"{prefix}.{index}",
                layer=layer,
                device=device,
                inputs=inputs,
                fp_inputs=fp_inputs,
                layer_kwargs=layer_kwargs,
            )
            next_fp = [park(x) for x in ctx.forward(fp_inputs)] if propagate_fp else None
            info = layer_quantizer(ctx) or {}
            # Outputs of the quantized layer replace its inputs batch by batch, so the
            # quantized stream never holds two copies of the activations.
            for batch_index, batch in enumerate(inputs):
                kwargs = layer_kwargs[batch_index]
                inputs[batch_index] = park(_layer_output(layer, batch.to(device), kwargs))
            if propagate_fp:
                fp_inputs = next_fp
            layer.to(home)
            devices.synchronize(device)
            seconds = time.perf_counter() - start
            peak = devices.peak_memory_bytes(device)
            devices.empty_cache(device)
            reports.append(
                LayerReport(index=index, name=ctx.name, seconds=seconds, peak_device_bytes=peak, info=dict(info))
            )
            logger.debug("%s: layer %d took %.3f s", desc, index, seconds)
    logger.info("%s: %d layers in %.2f s", desc, len(reports), sum(r.seconds for r in reports))
    return reports
