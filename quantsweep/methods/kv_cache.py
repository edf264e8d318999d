"""KV-cache quantization: keys (after RoPE) and values are fake-quantized as they enter the cache.

Where: every decoder layer's attention module (``self_attn`` in Llama and openPangu-Embedded)
computes its keys and values, applies RoPE to the keys, and then hands both to
``cache.update(key, value, layer_idx)``, which appends them to the KV cache and returns
everything the layer may attend to. A forward pre-hook on the attention module replaces
the ``cache`` argument by a thin wrapper whose ``update`` first quantizes the new keys and
values (:func:`quantsweep.quant.kv_cache.fake_quantize_kv`: per head, per token, groups
along ``head_dim``) and then passes them on to the real cache. So:

* the cache stores quantized keys and values, and a cached token is read back exactly as
  it was quantized when it entered;
* a forward without a cache (``use_cache=False``) gets a wrapper with no cache behind it:
  the same quantizer on the same tokens, so a full forward and a cached one see the same
  keys and values, token by token;
* the attention kernel (eager, sdpa, flash) is untouched, and no global registry or
  config changes.

Both hooks are recorded with :func:`quantsweep.models.snapshot.attach_hook`, so
:meth:`quantsweep.models.snapshot.WeightSnapshot.restore` removes them. A forward hook
checks that the attention module really called ``cache.update``; an attention that
bypasses it raises instead of running unquantized.

Example:
    >>> import quantsweep, torch
    >>> model, _ = quantsweep.load_model("toy", device="cpu")
    >>> kv = attach_kv_cache_quant(model, bits=4, group_size=16)
    >>> kv.bits, len(kv.modules), kv_cache_bits(model)
    (4, 4, 4)
    >>> model(torch.tensor([[3, 4, 5]])).logits.shape
    torch.Size([1, 3, 123])
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

from torch import nn

from quantsweep.models.layout import decoder_layer_prefix, decoder_layers
from quantsweep.models.snapshot import attach_hook
from quantsweep.quant.kv_cache import check_kv_group_size, check_kv_settings, fake_quantize_kv

# The name attention modules give their KV-cache argument: transformers 5.2x, then older ones.
CACHE_PARAMETERS = ("cache", "past_key_values", "past_key_value")
_MARK = "_quantsweep_kv_cache"


@dataclass(frozen=True)
class KVCacheQuant:
    """What :func:`attach_kv_cache_quant` attached.

    Attributes:
        bits: integer bits of keys and values.
        group_size: channels per scale along ``head_dim`` (None: one scale per head and token).
        symmetric: symmetric (zero point 0) or asymmetric integers.
        modules: the attention modules whose keys and values are quantized, by full name.
        head_dim: the attention heads' width.

    Example:
        >>> KVCacheQuant(bits=8, group_size=None, symmetric=False, modules=("model.layers.0.self_attn",),
        ...     head_dim=32).bits
        8
    """

    bits: int
    group_size: int | None
    symmetric: bool
    modules: tuple[str, ...]
    head_dim: int


class _QuantizingCache:
    """Stands in for the attention's ``cache`` argument for one call: quantizes what ``update`` receives.

    With a real cache behind it, the quantized keys and values are stored there and
    everything it returns (past and new) comes back; with none (a forward without a
    cache) the quantized new keys and values are returned as they are. Every other
    attribute is the real cache's.
    """

    def __init__(self, inner, quantize):
        self._inner = inner
        self._quantize = quantize
        self.updates = 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.updates += 1
        key_states, value_states = self._quantize(key_states), self._quantize(value_states)
        if self._inner is None:
            return key_states, value_states
        return self._inner.update(key_states, value_states, layer_idx, *args, **kwargs)

    def __getattr__(self, name):
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(f"no KV cache in this forward (use_cache=False): it has no {name!r}")
        return getattr(inner, name)


def _cache_parameter(module: nn.Module) -> tuple[str, int | None] | None:
    """``(name, position)`` of the KV-cache parameter of ``module.forward``, or None if it takes none."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    for position, parameter in enumerate(parameters):
        if parameter.name in CACHE_PARAMETERS:
            positional = parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
            return parameter.name, position if positional else None
    return None


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The attention module of every decoder layer, by full name: the child that takes the KV cache.

    Raises:
        ValueError: a decoder layer has no child whose ``forward`` takes a KV cache, or several.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy", device="cpu")
        >>> list(attention_modules(model))[:2]
        ['model.layers.0.self_attn', 'model.layers.1.self_attn']
    """
    prefix = decoder_layer_prefix(model)
    found = {}
    for index, layer in enumerate(decoder_layers(model)):
        takers = [(name, child) for name, child in layer.named_children() if _cache_parameter(child)]
        if len(takers) != 1:
            what = "no child" if not takers else f"{len(takers)} children ({', '.join(n for n, _ in takers)})"
            raise ValueError(
                f"KV-cache quantization needs one attention module per decoder layer; {prefix}.{index} "
                f"({type(layer).__name__}) has {what} whose forward takes a KV cache ({'/'.join(CACHE_PARAMETERS)})"
            )
        name, child = takers[0]
        found[f"{prefix}.{index}.{name}"] = child
    return found


def _head_dim(name: str, module: nn.Module) -> int:
    head_dim = getattr(module, "head_dim", None)
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(
            f"KV-cache quantization needs the head width: {name} ({type(module).__name__}) has no head_dim"
        )
    return head_dim


def check_kv_cache(model: nn.Module, group_size: int | None) -> dict[str, int]:
    """Check that every attention module has a ``head_dim`` that ``group_size`` divides; return the head widths.

    The one check of a model against KV-cache settings, run before any hook is attached
    (and by :func:`quantsweep.methods.compose.check_composed` before any stage runs).
    Works on a model built on the meta device.

    Raises:
        ValueError: a layer without one recognisable attention module, an attention
            module without ``head_dim``, or a ``group_size`` that does not divide it.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy", device="cpu")
        >>> set(check_kv_cache(model, 16).values())
        {32}
        >>> check_kv_cache(model, 24)
        Traceback (most recent call last):
        ...
        ValueError: KV-cache group_size 24 does not divide head_dim 32 of model.layers.0.self_attn; choose a divisor of 32, or None for one scale per head
    """
    head_dims = {name: _head_dim(name, module) for name, module in attention_modules(model).items()}
    for name, head_dim in head_dims.items():
        check_kv_group_size(head_dim, group_size, name)
    return head_dims


def attach_kv_cache_quant(
    model: nn.Module, *, bits: int, group_size: int | None = None, symmetric: bool = False
) -> KVCacheQuant:
    """Fake-quantize every attention's keys (after RoPE) and values as they enter the KV cache.

    Per head and per token, in groups of ``group_size`` channels along ``head_dim``,
    min-max, asymmetric by default (see the module docstring for where and why a cached
    evaluator then stays exact). Everything is checked before any hook is attached.

    Args:
        model: a causal LM whose decoder layers each hold one attention module that hands
            its keys and values to ``cache.update`` (Llama, openPangu-Embedded, GQA or not).
        bits: 2..8.
        group_size: channels per scale; must divide ``head_dim``. None: one scale per head and token.
        symmetric: symmetric integers (zero point 0) instead of asymmetric.

    Returns:
        A :class:`KVCacheQuant` describing what was attached.

    Raises:
        TypeError / ValueError: a bad setting, a ``group_size`` that does not divide
            ``head_dim``, a layer without a recognisable attention module, or KV-cache
            quantization already attached (restore the model first).

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy", device="cpu")
        >>> attach_kv_cache_quant(model, bits=4, group_size=24)
        Traceback (most recent call last):
        ...
        ValueError: KV-cache group_size 24 does not divide head_dim 32 of model.layers.0.self_attn; choose a divisor of 32, or None for one scale per head
    """
    check_kv_settings(bits, group_size, symmetric)
    head_dims = check_kv_cache(model, group_size)
    modules = attention_modules(model)
    current = kv_cache_bits(model)
    if current is not None:
        raise ValueError(
            f"the KV cache is already quantized to {current} bits; restore the FP model "
            "(WeightSnapshot.restore) before attaching another KV-cache quantizer"
        )
    quantize = functools.partial(fake_quantize_kv, bits=bits, group_size=group_size, symmetric=symmetric)
    for name, module in modules.items():
        _attach(name, module, quantize, bits)
    return KVCacheQuant(
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        modules=tuple(modules),
        head_dim=next(iter(head_dims.values())),
    )


def _attach(name: str, module: nn.Module, quantize, bits: int) -> None:
    parameter, position = _cache_parameter(module)
    current: dict[str, _QuantizingCache] = {}  # this call's wrapper, from the pre-hook to the check

    def wrap_cache(module, args, kwargs):
        if position is not None and position < len(args):
            proxy = _QuantizingCache(args[position], quantize)
            args = args[:position] + (proxy,) + args[position + 1 :]
        else:
            key = next((k for k in CACHE_PARAMETERS if k in kwargs), parameter)
            proxy = _QuantizingCache(kwargs.get(key), quantize)
            kwargs = {**kwargs, key: proxy}
        current["proxy"] = proxy
        return args, kwargs

    def check_quantized(module, args, output):
        proxy = current.pop("proxy", None)
        if proxy is not None and proxy.updates == 0:
            raise RuntimeError(
                f"{name} ({type(module).__name__}) never called cache.update, so its keys and values "
                "were not quantized; this attention module is not supported by KV-cache quantization"
            )

    pre = module.register_forward_pre_hook(wrap_cache, with_kwargs=True)
    post = module.register_forward_hook(check_quantized)
    attach_hook(module, pre)
    attach_hook(module, post)
    # Plain attribute in __dict__ (not a buffer): it must not enter state_dict.
    module.__dict__[_MARK] = (bits, pre.id)


def kv_cache_bits(model: nn.Module) -> int | None:
    """The bits a live KV-cache quantizer gives ``model``'s keys and values, or None (full precision).

    Example:
        >>> import quantsweep
        >>> from quantsweep.models.snapshot import WeightSnapshot
        >>> model, _ = quantsweep.load_model("toy", device="cpu")
        >>> snapshot = WeightSnapshot(model)
        >>> _ = attach_kv_cache_quant(model, bits=8)
        >>> kv_cache_bits(model)
        8
        >>> snapshot.restore(model)
        >>> kv_cache_bits(model) is None
        True
    """
    for module in model.modules():
        mark = module.__dict__.get(_MARK)
        if mark is None:
            continue
        bits, hook_id = mark
        # WeightSnapshot.restore removes the hook; the mark is then stale.
        if hook_id in module._forward_pre_hooks:
            return bits
    return None
