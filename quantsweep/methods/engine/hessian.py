"""The Hessian driver shared by GPTQ, GPTAQ, BiLLM and SliM-LLM.

Each of these methods quantizes a decoder Linear from the Hessian of its layer loss
``H = 2 X X^T / n`` (:class:`~quantsweep.methods.engine.obs.HessianAccumulator`),
layer by layer through :func:`~quantsweep.methods.engine.sequential.run_sequential`.
They differ only in how one Linear is quantized from its Hessian, which each method
passes in as ``quantize_linear(full_name, weight, accumulator, cache)``.

Example: the body of a ``quantize_linear`` (here GPTQ's), on one Linear's Hessian:
    >>> import torch
    >>> from quantsweep.methods.engine.obs import HessianAccumulator, gptq_quantize
    >>> accumulator = HessianAccumulator(8)
    >>> accumulator.add(torch.randn(64, 8))  # the Linear's inputs [tokens, in_features]
    >>> weight, info = gptq_quantize(torch.randn(4, 8), accumulator.hessian, bits=4, group_size=None,
    ...                              symmetric=True, act_order=False)
    >>> tuple(weight.shape)
    (4, 8)
"""

from __future__ import annotations

import copy

from torch import nn

from quantsweep.methods.engine.obs import HessianAccumulator
from quantsweep.methods.engine.sequential import LayerContext, compute_device, require_calibration, run_sequential
from quantsweep.methods.targets import check_group_sizes


def hessian_quantizer(
    config, quantize_linear, *, asymmetric: bool = False, after_group=None, packed: dict | None = None
):
    """A :data:`~quantsweep.methods.engine.sequential.LayerQuantizer` for Hessian-based methods.

    The Linears of a decoder layer are grouped by shared input
    (:meth:`LayerContext.linear_groups`: q/k/v, o, gate/up, down). Each group gets
    one Hessian accumulator (and, when ``asymmetric``, GPTAQ's cross term) and one
    factorisation cache, since its Linears see the same inputs. With
    ``config.true_sequential`` the groups are calibrated one after another, each
    after the previous ones were quantized; otherwise all from one pass.
    For each Linear, ``quantize_linear(full_name, weight, accumulator, cache) ->
    (new_weight, info)`` or ``(new_weight, info, quantized_weight)`` is called; the
    third item, a :class:`~quantsweep.quant.packed.QuantizedWeight`, goes into
    ``packed[full_name]`` when ``packed`` is given. ``after_group(ctx, group)``, if given, runs once
    a group's weights are set (GPTAQ W4A4 attaches activation quantization there).

    Example:
        >>> import quantsweep
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> shape = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=128, num_hidden_layers=1,
        ...                     num_attention_heads=4, num_key_value_heads=2)
        >>> model = LlamaForCausalLM(shape).eval()  # one random decoder layer keeps the example fast
        >>> calibration = torch.randint(0, 64, (2, 16))  # token ids [N, L]
        >>> from quantsweep.methods.engine.obs import gptq_quantize
        >>> def quantize_linear(name, weight, accumulator, cache):
        ...     return gptq_quantize(weight, accumulator.hessian, bits=4, group_size=None,
        ...                          symmetric=True, act_order=False)
        >>> layer_fn = hessian_quantizer(quantsweep.get_recipe("w4-gptq"), quantize_linear)
        >>> reports = run_sequential(model, calibration, "cpu", layer_fn)
        >>> sorted(reports[0].info["linears"])[:3]
        ['mlp.down_proj', 'mlp.gate_proj', 'mlp.up_proj']
    """

    def quantize_layer(ctx: LayerContext) -> dict:
        groups = ctx.linear_groups()
        stages = [[group] for group in groups] if getattr(config, "true_sequential", False) else [groups]
        # The FP target of a later stage must come from the unquantized layer: keep one
        # FP copy of this layer (one more layer of device memory) while it is quantized.
        fp_layer = copy.deepcopy(ctx.layer) if asymmetric and len(stages) > 1 else None
        infos = {}
        for stage in stages:
            # One accumulator per group, fed by the group's first Linear.
            leaders = {next(iter(group)): group for group in stage}
            accumulators = {
                name: HessianAccumulator(group[name].in_features, ctx.device, asymmetric=asymmetric)
                for name, group in leaders.items()
            }
            ctx.capture_inputs(
                {name: group[name] for name, group in leaders.items()},
                lambda name, x, x_fp: accumulators[name].add(x, x_fp),
                with_fp=asymmetric,
                fp_layer=fp_layer,
            )
            for leader, group in leaders.items():
                cache: dict = {}
                for name, linear in group.items():
                    new_weight, info, *representation = quantize_linear(
                        ctx.full_name(name), linear.weight.data, accumulators[leader], cache
                    )
                    linear.weight.data.copy_(new_weight)
                    if packed is not None and representation:
                        packed[ctx.full_name(name)] = representation[0]
                    infos[name] = info
                accumulators[leader] = None  # free the Hessian and its factor before the next group's
                del cache
                if after_group is not None:
                    after_group(ctx, group)
        del fp_layer
        return {"linears": infos}

    return quantize_layer


def run_hessian_method(
    model: nn.Module,
    config,
    calibration,
    method: str,
    quantize_linear,
    *,
    asymmetric: bool = False,
    after_group=None,
    packed: dict | None = None,
    overrides=(),
):
    """The shared driver of the Hessian-based methods (GPTQ, GPTAQ, BiLLM, SliM-LLM).

    Checks calibration and group sizes before any weight changes, quantizes layer by
    layer with :func:`hessian_quantizer`, and records the per-layer reports. With
    ``asymmetric`` the full-precision stream is propagated too (GPTAQ's target).
    Embedding/head targets are left to the caller (:func:`~quantsweep.methods.targets.quantize_extra_targets`
    at its bit width). ``packed``, if given, receives each Linear's quantized
    representation by full module name (see :func:`hessian_quantizer`). ``overrides``
    are checked with the group sizes (:func:`~quantsweep.methods.targets.check_group_sizes`);
    honouring them is up to ``quantize_linear``.

    Example:
        >>> import quantsweep
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> shape = LlamaConfig(vocab_size=64, hidden_size=128, intermediate_size=128, num_hidden_layers=1,
        ...                     num_attention_heads=4, num_key_value_heads=2)
        >>> model = LlamaForCausalLM(shape).eval()  # one random decoder layer keeps the example fast
        >>> calibration = torch.randint(0, 64, (2, 16))  # token ids [N, L]
        >>> from quantsweep.methods.engine.obs import gptq_quantize
        >>> def quantize_linear(name, weight, accumulator, cache):
        ...     return gptq_quantize(weight, accumulator.hessian, bits=4, group_size=None,
        ...                          symmetric=True, act_order=False)
        >>> config = quantsweep.get_recipe("w4-gptq")
        >>> reports = run_hessian_method(model, config, calibration, "gptq", quantize_linear)
        >>> [report.name for report in reports]
        ['model.layers.0']
    """
    calibration = require_calibration(calibration, config)
    check_group_sizes(model, config, overrides)
    reports = run_sequential(
        model,
        calibration,
        compute_device(config.device, model),
        hessian_quantizer(config, quantize_linear, asymmetric=asymmetric, after_group=after_group, packed=packed),
        propagate_fp=asymmetric,
        batch_size=config.calibration_batch_size,
        desc=f"{method} {config.name}",
    )
    return reports
