"""The scan: quantize one unit at a time, the rest in full precision, and measure KL from the fp model.

For a model and a recipe:

1. the full-precision model's next-token log-probabilities on the scan text are computed
   once (kept in host memory: tokens x vocabulary x 4 bytes, e.g. 4,096 tokens x 153,000
   tokens of vocabulary = 2.5 GB);
2. the recipe quantizes the whole model once (calibrated methods calibrate once), and the
   quantized parameters of the units still to measure are copied to host memory; the
   :class:`~quantsweep.models.snapshot.WeightSnapshot` then restores full precision;
3. for each unit: its quantized parameters are put in, one forward over the scan text
   gives the KL divergence at every position, and its full-precision parameters go back.

So a scan costs one quantization and one forward of a few thousand tokens per unit, not
an evaluation per unit. A layer-by-layer method (GPTQ and its kin) quantizes each layer
from the inputs the quantized layers before it produce, as in the full recipe; the
scan then measures that layer alone. Activation and KV-cache quantizers a recipe attaches
are not part of the scan (it measures the weight stage) and a warning says so.

Each unit's result is one record in a :class:`~quantsweep.sweep.store.CellStore`, keyed by
a hash of everything that changes it, so a rerun measures only the units not yet stored.

Example:
    >>> import tempfile, torch
    >>> from quantsweep.sweep.prepare import PreparedModel
    >>> from quantsweep.sweep.spec import model_from_dict
    >>> from quantsweep.sweep.store import CellStore
    >>> from quantsweep.sensitivity.units import scan_units
    >>> prepared = PreparedModel(model_from_dict({"path": "toy", "device": "cpu"}))
    >>> model, tokenizer = prepared.load()
    >>> windows = torch.randint(4, 120, (4, 32), generator=torch.Generator().manual_seed(0))
    >>> store = CellStore(tempfile.mkdtemp())
    >>> records, measured = run_scan(prepared, "w2-rtn", scan_units(model), windows, store, key_fields={})
    >>> len(measured), all(r["kl_mean"] > 0 for r in records)
    (4, True)
    >>> run_scan(prepared, "w2-rtn", scan_units(model), windows, store, key_fields={})[1]  # all stored: nothing to measure
    ()
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from quantsweep.models.snapshot import remove_hooks
from quantsweep.sensitivity.divergence import next_token_divergence
from quantsweep.sensitivity.units import Unit
from quantsweep.sweep.fingerprint import text_fingerprint

logger = logging.getLogger(__name__)

RECORD_KIND = "sensitivity"
BATCH_TOKENS = 2048  # tokens per forward: bounds the logits held at once (tokens x vocabulary)


def _batches(windows: torch.Tensor) -> list[torch.Tensor]:
    per_batch = max(1, BATCH_TOKENS // windows.shape[1])
    return list(torch.split(windows, per_batch))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def reference_logprobs(model: nn.Module, windows: torch.Tensor) -> list[torch.Tensor]:
    """The model's next-token log-probabilities at every position of ``windows`` ``[n, L]``, per batch, on the CPU.

    Example:
        >>> import quantsweep, torch
        >>> model, _ = quantsweep.load_model("toy")
        >>> [tuple(t.shape) for t in reference_logprobs(model, torch.ones(2, 8, dtype=torch.long))]
        [(2, 8, 123)]
    """
    device = _device(model)
    return [
        torch.log_softmax(model(input_ids=batch.to(device), use_cache=False).logits.float(), dim=-1).cpu()
        for batch in _batches(windows)
    ]


@torch.no_grad()
def divergence_stats(model: nn.Module, windows: torch.Tensor, reference: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Mean, 99th percentile and maximum KL (nats) and top-1 agreement of ``model`` against ``reference``.

    Example:
        >>> import quantsweep, torch
        >>> model, _ = quantsweep.load_model("toy")
        >>> windows = torch.ones(2, 8, dtype=torch.long)
        >>> stats = divergence_stats(model, windows, reference_logprobs(model, windows))
        >>> stats["kl_mean"] < 1e-6, stats["top1_agreement"], stats["positions"]
        (True, 1.0, 16)
    """
    device = _device(model)
    kls, agree = [], []
    for batch, ref in zip(_batches(windows), reference):
        logits = model(input_ids=batch.to(device), use_cache=False).logits
        kl, same = next_token_divergence(ref.to(device), logits)
        kls.append(kl.flatten().cpu())
        agree.append(same.flatten().cpu())
    kl = torch.cat(kls).double()
    finite = bool(torch.isfinite(kl).all())
    return {
        "kl_mean": float(kl.mean()) if finite else math.nan,
        "kl_p99": float(torch.quantile(kl, 0.99)) if finite else math.nan,
        "kl_max": float(kl.max()) if finite else math.nan,
        "top1_agreement": float(torch.cat(agree).double().mean()),
        "positions": int(kl.numel()),
        "non_finite": not finite,
    }


def unit_key(key_fields: dict[str, Any], unit: Unit) -> str:
    """The store key of one unit's record: a hash of the scan's key fields and the unit's name.

    Example:
        >>> unit_key({"model": "abc"}, Unit("model.layers.0", 0, ())) == unit_key({"model": "abc"}, Unit("model.layers.1", 1, ()))
        False
    """
    return "sens-" + text_fingerprint({"kind": RECORD_KIND, **key_fields, "unit": unit.name})


def _quantized_parameters(prepared, config, units: Sequence[Unit]) -> dict[str, torch.Tensor]:
    """Quantize the whole model once and copy the units' parameters to host memory; then restore fp."""
    model = prepared.model
    before = [name for name, _ in model.named_parameters()]
    prepared.quantize(config)
    after = [name for name, _ in model.named_parameters()]
    if after != before:
        prepared.restore()
        raise ValueError(
            f"recipe {config.name!r} replaces modules (e.g. bitsandbytes layers); the scan splices quantized "
            "weights into the fp model, so it needs a fake-quant recipe"
        )
    attached = remove_hooks(model)
    if attached:
        logger.warning(
            "recipe %s attached %d activation / KV-cache quantizers; the scan measures the weight stage only",
            config.name,
            attached,
        )
    params = dict(model.named_parameters())
    quantized = {
        name: params[name].detach().to("cpu", copy=True) for unit in units for name in unit.parameter_names(model)
    }
    prepared.restore()
    return quantized


@torch.no_grad()
def run_scan(
    prepared,
    recipe,
    units: Sequence[Unit],
    windows: torch.Tensor,
    store,
    *,
    key_fields: dict[str, Any],
    force: bool = False,
    record_fields: dict[str, Any] | None = None,
    on_unit: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """Measure every unit not yet in ``store``; return all units' records (model order) and those measured now.

    Args:
        prepared: a loaded :class:`~quantsweep.sweep.prepare.PreparedModel` (weights restored to fp after).
        recipe: the recipe (name, path or config) whose weight stage is scanned.
        units: the units, from :func:`~quantsweep.sensitivity.units.scan_units`.
        windows: the scan text, token ids ``[n, L]``.
        store: a :class:`~quantsweep.sweep.store.CellStore`.
        key_fields: what else changes a result (model fingerprint, dtype, text, versions...):
            hashed with each unit's name into its key, and kept in its record.
        force: measure every unit again.
        record_fields: extra fields for each record (the model's name, the text's provenance).
        on_unit: called with each record as it is written (progress).

    Example:
        >>> import tempfile, torch
        >>> from quantsweep.sweep.prepare import PreparedModel
        >>> from quantsweep.sweep.spec import model_from_dict
        >>> from quantsweep.sweep.store import CellStore
        >>> from quantsweep.sensitivity.units import scan_units
        >>> prepared = PreparedModel(model_from_dict({"path": "toy", "device": "cpu"}))
        >>> units = scan_units(prepared.load()[0])[:1]
        >>> records, _ = run_scan(prepared, "w8-rtn", units, torch.ones(1, 16, dtype=torch.long), CellStore(tempfile.mkdtemp()),
        ...                       key_fields={})
        >>> records[0]["unit"], records[0]["top1_agreement"]
        ('model.layers.0', 1.0)
    """
    from quantsweep.recipes import get_recipe

    config = get_recipe(recipe)
    model = prepared.model
    keys = {unit.name: unit_key(key_fields, unit) for unit in units}
    pending = [unit for unit in units if force or store.status(keys[unit.name]) != "done"]
    if len(pending) < len(units):
        logger.info("sensitivity: %d of %d units already stored", len(units) - len(pending), len(units))
    if pending:
        prepared.restore()
        started = time.perf_counter()
        reference = reference_logprobs(model, windows)
        logger.info("sensitivity: fp reference on %d tokens in %.1f s", windows.numel(), time.perf_counter() - started)
        quantized = _quantized_parameters(prepared, config, pending)
        params = dict(model.named_parameters())
        try:
            for index, unit in enumerate(pending, start=1):
                started = time.perf_counter()
                names = unit.parameter_names(model)
                full_precision = {name: params[name].detach().clone() for name in names}
                for name in names:
                    params[name].copy_(quantized[name].to(params[name].device))
                try:
                    stats = divergence_stats(model, windows, reference)
                finally:
                    for name in names:
                        params[name].copy_(full_precision[name])
                record = {
                    "key": keys[unit.name],
                    "status": "done",
                    "kind": RECORD_KIND,
                    **(record_fields or {}),
                    "recipe": config.name,
                    "recipe_config": config.to_dict(),
                    "unit": unit.name,
                    "layer": unit.layer,
                    "module": unit.kind,
                    "quantized_weights": sum(params[f"{name}.weight"].numel() for name in unit.linears),
                    **stats,
                    "seconds": time.perf_counter() - started,
                    "scope": "weights",
                    "key_fields": key_fields,
                }
                store.write_cell(record)
                logger.info(
                    "sensitivity %d/%d %s: KL %.4g nats, top-1 agreement %.3f (%.1f s)",
                    index,
                    len(pending),
                    unit.name,
                    stats["kl_mean"],
                    stats["top1_agreement"],
                    record["seconds"],
                )
                if on_unit is not None:
                    on_unit(record)
        finally:
            prepared.restore()
    records = [store.read_cell(keys[unit.name]) for unit in units]
    return records, tuple(unit.name for unit in pending)
