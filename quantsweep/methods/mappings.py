"""Which operation feeds which Linears inside a decoder layer, for SmoothQuant and AWQ.

SmoothQuant and AWQ rescale the input channels of a group of Linears by ``s`` and
fold ``1/s`` into the operation that produces that input (an RMSNorm, or a previous
Linear), so the full-precision function is unchanged. Which pairs exist depends on
the architecture, so the pairs are data: regular expressions over module names
*relative to one decoder layer* (in the style of llm-compressor's mappings),
keyed by architecture family.

Llama-style layers (Llama, Mistral, Qwen2/3, and openPangu-Embedded, whose layer
names are Llama's) map as follows:

* SmoothQuant: ``input_layernorm -> q/k/v_proj``, ``post_attention_layernorm -> gate/up_proj``.
* AWQ: the two above, plus ``v_proj -> o_proj`` and ``up_proj -> down_proj``.

``v_proj -> o_proj`` under grouped-query attention: ``v_proj`` has ``n_kv * head_dim``
outputs while ``o_proj`` reads ``n_heads * head_dim`` inputs; query head ``h`` reads
the values of KV head ``h // (n_heads / n_kv)``. A scale on ``o_proj``'s inputs can be
folded into ``v_proj`` only when it is equal across the query heads that share a KV
head, so AWQ searches one scale per ``v_proj`` output row and repeats it per KV head
(:func:`expand_to_consumer`). openPangu's ``v_proj`` has a bias: folding scales its
weight rows *and* its bias entries.

Example:
    >>> import quantsweep
    >>> model, _ = quantsweep.load_model("toy")
    >>> [m.source_name for m in mappings_for(model, "smoothquant")[0]]
    ['model.layers.0.input_layernorm', 'model.layers.0.post_attention_layernorm']
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from quantsweep.models.layout import decoder_layer_prefix, decoder_layers

KINDS = ("smoothquant", "awq")


@dataclass(frozen=True)
class ScalingPattern:
    """One scaling pair as regexes: ``source`` produces the input that ``targets`` read.

    Each regex is matched with :func:`re.fullmatch` against module names relative to
    a decoder layer (e.g. ``self_attn.q_proj``) and must match exactly one module.

    Example:
        >>> ScalingPattern(r"input_layernorm", (r"self_attn\\.q_proj",)).targets
        ('self_attn\\\\.q_proj',)
    """

    source: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class ArchitectureMap:
    """The scaling pairs of one architecture family.

    Attributes:
        family: short name, e.g. ``llama``.
        model_types: ``config.model_type`` values known to belong to the family
            (compared case-insensitively).
        smoothquant: norm -> Linears pairs.
        awq: every foldable (previous op -> Linears) group.

    Example:
        >>> ARCHITECTURES["llama"].family
        'llama'
    """

    family: str
    model_types: tuple[str, ...]
    smoothquant: tuple[ScalingPattern, ...]
    awq: tuple[ScalingPattern, ...]


_ATTN_NORM = ScalingPattern(r"input_layernorm", (r"self_attn\.q_proj", r"self_attn\.k_proj", r"self_attn\.v_proj"))
_MLP_NORM = ScalingPattern(r"post_attention_layernorm", (r"mlp\.gate_proj", r"mlp\.up_proj"))

ARCHITECTURES: dict[str, ArchitectureMap] = {
    "llama": ArchitectureMap(
        family="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "pangu_embedded", "panguembedded", "openpangu"),
        smoothquant=(_ATTN_NORM, _MLP_NORM),
        awq=(
            _ATTN_NORM,
            ScalingPattern(r"self_attn\.v_proj", (r"self_attn\.o_proj",)),
            _MLP_NORM,
            ScalingPattern(r"mlp\.up_proj", (r"mlp\.down_proj",)),
        ),
    ),
}


@dataclass
class ResolvedScaling:
    """One scaling pair resolved to modules of one decoder layer.

    Attributes:
        source_name / source: the op whose output is divided by ``s`` (norm or Linear).
        target_names / targets: the Linears whose input columns are multiplied by ``s``.
        repeat: how many times each source output channel is read by the targets
            (``n_heads / n_kv`` for ``v_proj -> o_proj`` under GQA, else 1).
        head_dim: channels per KV head when ``repeat > 1``.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> pair = mappings_for(model, "awq")[0][1]
        >>> pair.source_name, pair.target_names
        ('model.layers.0.self_attn.v_proj', ['model.layers.0.self_attn.o_proj'])
    """

    source_name: str
    source: nn.Module
    target_names: list[str]
    targets: list[nn.Linear]
    repeat: int = 1
    head_dim: int = 0

    @property
    def channels(self) -> int:
        """Number of scales: output channels of the source op.

        Example:
            >>> pair = ResolvedScaling("v", nn.Linear(8, 4), ["o"], [nn.Linear(8, 8)], repeat=2, head_dim=2)
            >>> pair.channels
            4
        """
        return self.targets[0].in_features // self.repeat


def model_family(model: nn.Module) -> str | None:
    """The architecture family of ``model`` from ``config.model_type``, or None if unknown.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> model_family(model)
        'llama'
    """
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "").lower()
    for name, arch in ARCHITECTURES.items():
        if model_type in arch.model_types:
            return name
    return None


def mappings_for(model: nn.Module, kind: str) -> list[list[ResolvedScaling]]:
    """Resolve the scaling pairs of every decoder layer of ``model``.

    A known ``model_type`` selects its family; an unknown one is tried against
    every family and the first whose patterns all match is used, so any
    Llama-named model works.

    Args:
        model: a causal LM.
        kind: ``"smoothquant"`` or ``"awq"``.

    Returns:
        One list of :class:`ResolvedScaling` per decoder layer.

    Raises:
        ValueError: unknown ``kind``, or a layer whose modules cannot be matched; the
            message names the unmatched modules and the patterns that found nothing.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> len(mappings_for(model, "awq")[0])
        4
    """
    if kind not in KINDS:
        raise ValueError(f"unknown mapping kind {kind!r}; allowed: {', '.join(KINDS)}")
    family = model_family(model)
    candidates = [family] if family is not None else list(ARCHITECTURES)
    errors = []
    for candidate in candidates:
        try:
            return _resolve_model(model, ARCHITECTURES[candidate], kind)
        except _Unmatched as error:
            errors.append(f"{candidate}: {error}")
    raise ValueError(
        f"cannot map the layers of {type(model).__name__} (model_type "
        f"{getattr(getattr(model, 'config', None), 'model_type', None)!r}) for {kind}: "
        + "; ".join(errors)
        + f". Known families: {', '.join(ARCHITECTURES)}; add an ArchitectureMap to "
        "quantsweep.methods.mappings.ARCHITECTURES for this architecture"
    )


class _Unmatched(ValueError):
    pass


def _resolve_model(model: nn.Module, arch: ArchitectureMap, kind: str) -> list[list[ResolvedScaling]]:
    prefix = decoder_layer_prefix(model)
    patterns = arch.smoothquant if kind == "smoothquant" else arch.awq
    return [_resolve_layer(layer, patterns, f"{prefix}.{i}") for i, layer in enumerate(decoder_layers(model))]


def _candidate_modules(layer: nn.Module) -> dict[str, nn.Module]:
    # Leaf modules with a weight (Linears, norms, GPT-2's Conv1D...): what a pair can name,
    # and what an error message lists as unmatched.
    found = {}
    for name, module in layer.named_modules():
        if not name or next(module.children(), None) is not None or isinstance(module, nn.Embedding):
            continue
        if isinstance(getattr(module, "weight", None), torch.Tensor):
            found[name] = module
    return found


def _resolve_layer(layer: nn.Module, patterns, prefix: str) -> list[ResolvedScaling]:
    modules = _candidate_modules(layer)
    used: set[str] = set()
    failed: list[str] = []

    def find(pattern: str) -> str | None:
        hits = [name for name in modules if re.fullmatch(pattern, name)]
        if len(hits) != 1:
            failed.append(f"{pattern!r} matched {hits or 'nothing'}")
            return None
        used.add(hits[0])
        return hits[0]

    resolved = []
    for pattern in patterns:
        source = find(pattern.source)
        targets = [find(t) for t in pattern.targets]
        if source is None or None in targets:
            continue
        target_modules = [modules[t] for t in targets]
        if not all(isinstance(t, nn.Linear) for t in target_modules):
            failed.append(f"targets of {pattern.source!r} are not all Linear")
            continue
        resolved.append(_make_resolved(layer, prefix, source, modules[source], targets, target_modules))
    if failed:
        unmatched = [f"{prefix}.{name}" if prefix else name for name in modules if name not in used]
        raise _Unmatched(
            f"layer {prefix or type(layer).__name__}: unmatched modules {unmatched}; "
            f"patterns without a unique match: {failed}"
        )
    return resolved


def _make_resolved(layer, prefix, source_name, source, target_names, targets) -> ResolvedScaling:
    full = (lambda n: f"{prefix}.{n}") if prefix else (lambda n: n)
    in_features = {t.in_features for t in targets}
    if len(in_features) != 1:
        raise _Unmatched(f"targets {target_names} of {source_name} disagree on in_features {sorted(in_features)}")
    width = in_features.pop()
    channels = _source_channels(source)
    repeat, head_dim = 1, 0
    if channels != width:
        # GQA: v_proj (n_kv * head_dim outputs) feeds o_proj (n_heads * head_dim inputs).
        head_dim = _head_dim(layer)
        if not (isinstance(source, nn.Linear) and head_dim and width % channels == 0 and channels % head_dim == 0):
            raise _Unmatched(
                f"{full(source_name)} has {channels} output channels but {[full(t) for t in target_names]} "
                f"read {width}; cannot fold scales between them"
            )
        repeat = width // channels
    return ResolvedScaling(full(source_name), source, [full(t) for t in target_names], list(targets), repeat, head_dim)


def _source_channels(source: nn.Module) -> int:
    if isinstance(source, nn.Linear):
        return source.out_features
    return source.weight.numel()


def _head_dim(layer: nn.Module) -> int:
    for module in layer.modules():
        head_dim = getattr(module, "head_dim", None)
        if isinstance(head_dim, int) and head_dim > 0:
            return head_dim
    return 0


def expand_to_consumer(scales: torch.Tensor, pair: ResolvedScaling) -> torch.Tensor:
    """Scales per source channel -> scales per target input channel (repeats per KV head).

    Query head ``h`` reads KV head ``h // repeat``, so the ``head_dim`` scales of each
    KV head are repeated ``repeat`` times, in order.

    Example:
        >>> pair = ResolvedScaling("v", nn.Linear(8, 4), ["o"], [nn.Linear(8, 8)], repeat=2, head_dim=2)
        >>> expand_to_consumer(torch.tensor([1.0, 2.0, 3.0, 4.0]), pair)
        tensor([1., 2., 1., 2., 3., 4., 3., 4.])
    """
    if pair.repeat == 1:
        return scales
    per_head = scales.reshape(-1, pair.head_dim)
    return per_head.repeat_interleave(pair.repeat, dim=0).reshape(-1)


def reduce_to_source(values: torch.Tensor, pair: ResolvedScaling) -> torch.Tensor:
    """Per-target-input statistics -> per-source-channel (mean over the query heads of a KV head).

    Example:
        >>> pair = ResolvedScaling("v", nn.Linear(8, 4), ["o"], [nn.Linear(8, 8)], repeat=2, head_dim=2)
        >>> reduce_to_source(torch.arange(8.0), pair)
        tensor([1., 2., 5., 6.])
    """
    if pair.repeat == 1:
        return values
    grouped = values.reshape(-1, pair.repeat, pair.head_dim)
    return grouped.mean(dim=1).reshape(-1)


@torch.no_grad()
def fold_scales(pair: ResolvedScaling, scales: torch.Tensor) -> None:
    """Divide the source op's output by ``scales`` and multiply the targets' input columns.

    For a norm, its weight (and bias, if any) is divided. For a Linear source, its
    weight rows and bias entries are divided. The composed function is unchanged
    up to floating-point rounding.

    Args:
        pair: the resolved scaling pair.
        scales: positive tensor of ``pair.channels`` values.

    Example:
        >>> source, target = nn.Linear(4, 4), nn.Linear(4, 4)
        >>> pair = ResolvedScaling("source", source, ["target"], [target])
        >>> x = torch.randn(3, 4)
        >>> before = target(source(x))
        >>> fold_scales(pair, torch.tensor([1.0, 2.0, 4.0, 8.0]))
        >>> torch.allclose(target(source(x)), before, atol=1e-5)
        True
    """
    if scales.shape != (pair.channels,):
        raise ValueError(f"expected {pair.channels} scales for {pair.source_name}, got shape {tuple(scales.shape)}")
    source = pair.source
    s = scales.to(device=source.weight.device, dtype=torch.float32)
    if isinstance(source, nn.Linear):
        source.weight.data.copy_((source.weight.data.float() / s[:, None]).to(source.weight.dtype))
    else:
        source.weight.data.copy_((source.weight.data.float() / s).to(source.weight.dtype))
    bias = getattr(source, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias.data.copy_((bias.data.float() / s).to(bias.dtype))
    expanded = expand_to_consumer(s, pair)
    for target in pair.targets:
        w = target.weight.data
        w.copy_((w.float() * expanded.to(w.device)[None, :]).to(w.dtype))
