"""AWQ: activation-aware weight quantization by per-input-channel scaling.

Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan, Han. "AWQ: Activation-aware Weight
Quantization for On-Device LLM Compression and Acceleration", MLSys 2024 (arXiv:2306.00978).

Weights that meet large activations matter most. For each group of Linears that read
the same input (see :mod:`quantsweep.methods.mappings`: ``input_layernorm -> q/k/v``,
``v_proj -> o_proj``, ``post_attention_layernorm -> gate/up``, ``up_proj -> down_proj``),
AWQ scales input channel ``j`` of the weights by ``s_j`` before quantizing, and divides
the input by ``s_j`` (folded into the previous op, so no runtime cost):

    s = mean_tokens |x| ** alpha,  s <- s / sqrt(max(s) * min(s))

``alpha`` is chosen on a grid ``{0, 1/n_grid, ..., (n_grid-1)/n_grid}`` (20 points by
default, as in the paper) to minimise ``sum_i || X W_i^T - (X/s) Q(W_i s)^T ||^2`` over the
group's Linears. ``alpha = 0`` is plain RTN, so on the search tokens AWQ is never worse
than RTN (with ``duo_scaling`` the alpha = 0 point is not RTN, and it can be; the
reported ``error_vs_rtn`` is always against plain RTN). Then, optionally, a clipping search shrinks each weight group's range
(``max|w| * (1 - k/n_grid)``, k < ``max_shrink * n_grid``) to minimise that group's
share of the output error, skipping ``q_proj``/``k_proj`` as the authors' code does.
Finally every Linear of the layer is RTN-quantized with its scaled, clipped weights.

openPangu's biases: for ``v_proj -> o_proj`` the scale divides ``v_proj``'s weight rows
and its bias (biases of the *targets* are unaffected by input scaling). Under grouped-query
attention one scale per ``v_proj`` output is searched and repeated per KV head.

Deviations from the paper, stated:

* The search loss is the output error of the group's own Linears, not of the enclosing
  block (the authors' code uses the attention / MLP block output for the norm groups).
* The search and clipping use an evenly strided subsample of at most
  ``max_search_tokens`` / ``max_clip_tokens`` calibration tokens (memory bound); the mean
  ``|x|`` uses every token.
* Calibration runs layer by layer on the outputs of the already quantized layers
  (:mod:`quantsweep.methods.engine.sequential`).
* ``duo_scaling`` (off by default) uses ``s = mean|x|^alpha / mean|w|^(1-alpha)``, the
  variant of later AutoAWQ / llm-compressor releases, not the paper.

Example:
    >>> import quantsweep
    >>> recipe = quantsweep.get_recipe("w4-awq")
    >>> recipe.bits, recipe.group_size, recipe.n_grid, recipe.clip_search
    (4, 128, 20, True)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from quantsweep.methods.engine.sequential import compute_device, require_calibration, run_sequential
from quantsweep.methods.mappings import ResolvedScaling, expand_to_consumer, fold_scales, mappings_for, reduce_to_source
from quantsweep.methods.registry import RecipeConfig, RecipeError, register_method
from quantsweep.methods.result import QuantizationResult, layer_report
from quantsweep.methods.targets import check_group_sizes, quantize_extra_targets
from quantsweep.quant import fake_quantize

logger = logging.getLogger(__name__)

AWQ_BITS = (2, 3, 4, 5, 6, 7, 8)
# Linears whose clipping the authors' code skips: their outputs meet in the attention
# scores q k^T, where the per-channel output error is a poor proxy.
_NO_CLIP = ("q_proj", "k_proj", "query", "key")


@dataclass(frozen=True, kw_only=True)
class AWQConfig(RecipeConfig):
    """AWQ weight-only quantization.

    Attributes:
        bits: weight bit width, 2..8.
        group_size: weights per group along in_features (128 in the paper); None = per channel.
        symmetric: symmetric integers; AWQ uses asymmetric with a zero point (False).
        n_grid: points of the alpha grid in [0, 1).
        duo_scaling: also divide by mean|w|^(1-alpha) (later AWQ releases), not the paper.
        clip_search: search a per-group clipping range after scaling.
        max_shrink: largest fraction of a group's range the clipping search may remove.
        max_search_tokens: tokens (subsampled) used in the scale search.
        max_clip_tokens: tokens (subsampled) used in the clipping search.
        calibration_batch_size: calibration samples per forward pass.
        device: where each decoder layer is quantized; ``auto`` = the model's accelerator,
            else the best available one (the model itself stays on the host).

    Example:
        >>> AWQConfig(name="w4-awq", method="awq").n_grid
        20
    """

    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False
    n_grid: int = 20
    duo_scaling: bool = False
    clip_search: bool = True
    max_shrink: float = 0.5
    max_search_tokens: int = 4096
    max_clip_tokens: int = 512
    calibration_batch_size: int = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bits not in AWQ_BITS:
            raise RecipeError(f"recipe {self.name!r}: awq supports bits {list(AWQ_BITS)}, got {self.bits}")
        if self.group_size is not None and self.group_size <= 0:
            raise RecipeError(f"recipe {self.name!r}: group_size must be positive or null, got {self.group_size}")
        for key in ("n_grid", "max_search_tokens", "max_clip_tokens", "calibration_batch_size"):
            if getattr(self, key) <= 0:
                raise RecipeError(f"recipe {self.name!r}: {key} must be positive, got {getattr(self, key)}")
        if not 0.0 <= self.max_shrink < 1.0:
            raise RecipeError(f"recipe {self.name!r}: max_shrink must be in [0, 1), got {self.max_shrink}")


@dataclass
class ScaleSearch:
    """Result of the scale search for one group of Linears.

    Attributes:
        scales: per source channel, positive.
        alpha: the chosen exponent.
        error: squared output error at the chosen alpha (sum over the group's Linears).
        rtn_error: the same for plain RTN (all scales 1).

    Example:
        >>> ScaleSearch(torch.ones(2), 0.0, 1.0, 1.0).alpha
        0.0
    """

    scales: torch.Tensor
    alpha: float
    error: float
    rtn_error: float


def _quantize(weight: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    return fake_quantize(weight, config.bits, config.group_size, config.symmetric)


def _weight_mean(weights: list[torch.Tensor], group_size: int | None) -> torch.Tensor:
    # mean over output rows of |w| normalised by its group's max: a per-input-channel salience.
    stacked = torch.cat([w.float().abs() for w in weights], dim=0)
    size = group_size or stacked.shape[1]
    grouped = stacked.reshape(stacked.shape[0], -1, size)
    grouped = grouped / grouped.amax(dim=-1, keepdim=True).clamp_min(1e-12)
    return grouped.reshape(stacked.shape).mean(dim=0)


def search_scales(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    config: AWQConfig,
    *,
    x_mean: torch.Tensor | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    expand: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> ScaleSearch:
    """Grid-search the AWQ exponent for Linears ``weights`` that all read input ``x``.

    Args:
        x: ``[tokens, in_features]`` inputs (the search subsample).
        weights: the ``[out, in_features]`` weights of the group.
        config: bits, group size, symmetry, grid size, duo scaling.
        x_mean: mean |x| per input channel over all tokens; defaults to ``x``'s.
        reduce: per-input-channel statistic -> per-source-channel (GQA ``v -> o``).
        expand: per-source-channel scales -> per-input-channel.

    Example:
        >>> x = torch.randn(64, 128); w = torch.randn(16, 128)
        >>> r = search_scales(x, [w], AWQConfig(name="a", method="awq"))
        >>> r.error <= r.rtn_error
        True
    """
    x = x.float()
    mean = reduce((x.abs().mean(dim=0) if x_mean is None else x_mean.float()).to(x.device))
    w_mean = reduce(_weight_mean(weights, config.group_size).to(x.device)) if config.duo_scaling else None
    references = [x @ w.float().T for w in weights]

    def output_error(full: torch.Tensor) -> float:
        return sum(
            float((x @ (_quantize(w.float() * full, config) / full).T - reference).pow(2).sum())
            for w, reference in zip(weights, references)
        )

    # Plain RTN (all scales 1). Without duo scaling it is also the grid's alpha = 0 point.
    rtn_error = output_error(torch.ones(x.shape[1], device=x.device))
    best: ScaleSearch | None = None
    for step in range(config.n_grid):
        alpha = step / config.n_grid
        s = mean.pow(alpha).clamp_min(1e-4)
        if w_mean is not None:
            s = s / w_mean.pow(1.0 - alpha).clamp_min(1e-4)
        s = s / (s.max() * s.min()).sqrt()
        error = output_error(expand(s))
        # Strictly better only: a NaN error never wins, and ties keep the smaller alpha.
        if best is None or error < best.error:
            best = ScaleSearch(scales=s, alpha=alpha, error=error, rtn_error=rtn_error)
    assert best is not None  # n_grid >= 1
    return best


def search_clip(x: torch.Tensor, weight: torch.Tensor, config: AWQConfig, chunk: int = 256) -> torch.Tensor:
    """Per-(row, group) clipping bound minimising that group's output error; returns ``[out, groups]``.

    Tries ``max|w| * (1 - k / n_grid)`` for ``k < max_shrink * n_grid`` (k = 0 is no clipping).

    Example:
        >>> bound = search_clip(torch.randn(32, 128), torch.randn(8, 128), AWQConfig(name="a", method="awq"))
        >>> bound.shape
        torch.Size([8, 1])
    """
    out_features, in_features = weight.shape
    size = config.group_size or in_features
    groups = in_features // size
    xg = x.float().reshape(x.shape[0], groups, size)
    bounds = []
    for start in range(0, out_features, chunk):
        w = weight[start : start + chunk].float()
        wg = w.reshape(w.shape[0], groups, size)
        reference = torch.einsum("tgk,ogk->otg", xg, wg)
        original = wg.abs().amax(dim=-1)  # [rows, groups]
        best_error = torch.full_like(original, math.inf)
        best_bound = original.clone()
        for k in range(max(1, int(config.max_shrink * config.n_grid))):
            bound = original * (1.0 - k / config.n_grid)
            clipped = torch.clamp(wg, -bound[..., None], bound[..., None])
            w_hat = _quantize(clipped.reshape(w.shape), config).reshape(wg.shape)
            error = (torch.einsum("tgk,ogk->otg", xg, w_hat) - reference).pow(2).mean(dim=1)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_bound = torch.where(better, bound, best_bound)
        bounds.append(best_bound)
    return torch.cat(bounds, dim=0)


def apply_clip(weight: torch.Tensor, bound: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """Clamp each (row, group) of ``weight`` to ``[-bound, bound]``.

    Example:
        >>> apply_clip(torch.tensor([[3.0, -3.0]]), torch.tensor([[1.0]]), None).tolist()
        [[1.0, -1.0]]
    """
    size = group_size or weight.shape[1]
    grouped = weight.reshape(weight.shape[0], -1, size)
    b = bound.to(weight.dtype)[..., None]
    return torch.clamp(grouped, -b, b).reshape(weight.shape)


class _InputStats:
    """Running mean |x| over all tokens and an evenly strided token subsample."""

    def __init__(self, stride: int):
        self.stride = stride
        self.abs_sum: torch.Tensor | None = None
        self.count = 0
        self.samples: list[torch.Tensor] = []

    def add(self, x: torch.Tensor) -> None:
        x = x.float()
        total = x.abs().sum(dim=0)
        self.abs_sum = total if self.abs_sum is None else self.abs_sum + total
        self.count += x.shape[0]
        self.samples.append(x[:: self.stride].clone())

    def tokens(self) -> torch.Tensor:
        return torch.cat(self.samples, dim=0)

    def mean(self) -> torch.Tensor:
        return self.abs_sum / self.count


def quantize_layer_awq(ctx, pairs: list[ResolvedScaling], config: AWQConfig) -> dict:
    """AWQ on one decoder layer (a :data:`~quantsweep.methods.engine.sequential.LayerQuantizer` body).

    Example:
        >>> import quantsweep
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> shape = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=128, num_hidden_layers=1,
        ...                     num_attention_heads=4, num_key_value_heads=2)
        >>> model = LlamaForCausalLM(shape).eval()  # one random decoder layer keeps the example fast
        >>> calibration = torch.randint(0, 64, (2, 16))  # token ids [N, L]
        >>> pairs, config = mappings_for(model, "awq"), quantsweep.get_recipe("w4-awq")
        >>> reports = run_sequential(model, calibration, "cpu", lambda ctx: quantize_layer_awq(ctx, pairs[ctx.index], config))
        >>> sorted(reports[0].info)
        ['alphas', 'clipped', 'error_vs_rtn']
    """
    linears = ctx.linears()
    by_id = {id(m): name for name, m in linears.items()}
    # One observed module per distinct input: the first target of each pair, and any
    # Linear no pair covers (it is only clipped and quantized).
    input_of: dict[str, str] = {}
    observed: dict[str, nn.Module] = {}
    for pair in pairs:
        key = by_id[id(pair.targets[0])]
        observed[key] = pair.targets[0]
        for target in pair.targets:
            input_of[by_id[id(target)]] = key
    for name, linear in linears.items():
        if name not in input_of:
            input_of[name] = name
            observed[name] = linear
    total_tokens = sum(batch.shape[0] * batch.shape[1] for batch in ctx.inputs)
    stride = max(1, math.ceil(total_tokens / config.max_search_tokens))
    stats = {key: _InputStats(stride) for key in observed}
    ctx.capture_inputs(observed, lambda key, x, _fp: stats[key].add(x))
    tokens = {key: s.tokens() for key, s in stats.items()}
    means = {key: s.mean() for key, s in stats.items()}

    alphas, gains = [], []
    for pair in pairs:
        key = by_id[id(pair.targets[0])]
        result = search_scales(
            tokens[key],
            [t.weight.data for t in pair.targets],
            config,
            x_mean=means[key],
            reduce=lambda v, p=pair: reduce_to_source(v, p),
            expand=lambda v, p=pair: expand_to_consumer(v, p),
        )
        fold_scales(pair, result.scales)
        # The targets now read x / s: keep the stored inputs in step for the clipping search.
        full = expand_to_consumer(result.scales, pair).to(tokens[key].device)
        tokens[key] = tokens[key] / full
        alphas.append(result.alpha)
        gains.append(result.error / result.rtn_error if result.rtn_error > 0 else 1.0)

    clipped = 0
    for name, linear in linears.items():
        weight = linear.weight.data
        if config.clip_search and name.rsplit(".", 1)[-1] not in _NO_CLIP:
            x = tokens[input_of[name]]
            x = x[:: max(1, math.ceil(x.shape[0] / config.max_clip_tokens))]
            weight = apply_clip(weight, search_clip(x, weight, config).to(weight.device), config.group_size)
            clipped += 1
        linear.weight.data.copy_(
            fake_quantize(weight, config.bits, config.group_size, config.symmetric, ctx.full_name(name))
        )
    return {"alphas": alphas, "error_vs_rtn": gains, "clipped": clipped}


@register_method("awq", config=AWQConfig, needs_calibration=True, smooths=True)
def apply_awq(model, config: AWQConfig, calibration=None):
    """Quantize ``model``'s decoder Linears with AWQ, one layer at a time.

    Args:
        model: a Llama-style causal LM (openPangu-Embedded included).
        config: the recipe.
        calibration: :class:`quantsweep.calibration.CalibrationData` or token ids ``[N, L]``.

    Raises:
        ValueError: no calibration data; layers that cannot be mapped (names the
            unmatched modules); a group size that does not divide a layer's width.
            All checks run before any weight changes.

    Example:
        >>> import quantsweep
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> shape = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=128, num_hidden_layers=1,
        ...                     num_attention_heads=4, num_key_value_heads=2)
        >>> model = LlamaForCausalLM(shape).eval()  # one random decoder layer keeps the example fast
        >>> calibration = torch.randint(0, 64, (2, 16))  # token ids [N, L]
        >>> apply_awq(model, quantsweep.get_recipe("w4-awq"), calibration).method
        'awq'
    """
    require_calibration(calibration, config)
    pairs_by_layer = mappings_for(model, "awq")
    check_group_sizes(model, config)
    reports = run_sequential(
        model,
        calibration,
        compute_device(config.device, model),
        lambda ctx: quantize_layer_awq(ctx, pairs_by_layer[ctx.index], config),
        batch_size=config.calibration_batch_size,
        desc=f"awq {config.name}",
    )
    quantize_extra_targets(model, config)  # embedding table / head when asked: plain RTN
    logger.info("awq: %d-bit, group %s, %d layers", config.bits, config.group_size, len(reports))
    return QuantizationResult(method="awq", report=layer_report(reports))
