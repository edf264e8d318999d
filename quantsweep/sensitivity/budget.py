"""Bits per weight, counted as :mod:`quantsweep.measure.cost` counts them, and a mixed recipe within a budget.

The budget is the average number of bits per *quantized* weight: every weight the recipe
quantizes (its decoder Linears, plus embeddings or head if it asks for them), with its
codes, its fp16 scales and its zero points
(:func:`~quantsweep.measure.cost.recipe_weight_bits`). Tensors kept in floating point
(embeddings, norms, biases) are left out, so that "2.5 bits per weight" means what it
means in the quantization literature; ``cost_fields`` reports the whole-model figure.

The mixed recipe is the recipe as it is (``low`` bits) everywhere, and ``high`` bits on
the most sensitive units, taken in rank order, each one only if the average still fits
the budget. It is written as the recipe plus ``overrides`` (one override, a list of globs
on module names), the format every recipe accepts.

Example:
    >>> import quantsweep
    >>> from quantsweep.sensitivity.units import scan_units
    >>> model, _ = quantsweep.load_model("toy")
    >>> units = scan_units(model, "layer")
    >>> mixed = mixed_recipe(model, quantsweep.get_recipe("w2-rtn"), [units[2], units[0]], budget=2.8)
    >>> mixed.promoted, round(mixed.bits_per_weight, 3), mixed.recipe["overrides"]
    (('model.layers.2',), 2.645, [{'match': ['model.layers.2.*'], 'bits': 4}])
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import yaml
from torch import nn

from quantsweep.measure.cost import recipe_weight_bits
from quantsweep.methods.targets import weight_targets


def default_high_bits(bits: int) -> int:
    """The precision the most sensitive units get by default: 4 bits above a 1-3 bit recipe, 8 above 4-7.

    Example:
        >>> default_high_bits(2), default_high_bits(4)
        (4, 8)
        >>> default_high_bits(8)
        Traceback (most recent call last):
        ValueError: the recipe already has 8 bits; give high_bits above it to spend a budget
    """
    for candidate in (4, 8):
        if candidate > bits:
            return candidate
    raise ValueError(f"the recipe already has {bits} bits; give high_bits above it to spend a budget")


def recipe_bits(config) -> int:
    """The recipe's ``bits`` (the weight precision a budget starts from).

    Raises:
        ValueError: the recipe has no ``bits`` setting.

    Example:
        >>> import quantsweep
        >>> recipe_bits(quantsweep.get_recipe("w2-rtn"))
        2
        >>> recipe_bits(quantsweep.get_recipe("w8a8-smoothquant"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: recipe 'w8a8-smoothquant' (method smoothquant) has no 'bits' setting; ...
    """
    if "bits" not in {f.name for f in dataclasses.fields(config)}:
        raise ValueError(
            f"recipe {config.name!r} (method {config.method}) has no 'bits' setting; a budget needs a weight "
            "method with 'bits' (rtn, gptq, awq, ...)"
        )
    return config.bits


def with_bits(config, bits: int):
    """The recipe ``config`` at ``bits`` bits (checked by the method's own config).

    Raises:
        ValueError: the recipe has no ``bits`` setting, or the method does not support ``bits``.

    Example:
        >>> import quantsweep
        >>> with_bits(quantsweep.get_recipe("w2-rtn"), 4).bits
        4
        >>> with_bits(quantsweep.get_recipe("w8a8-smoothquant"), 4)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: recipe 'w8a8-smoothquant' (method smoothquant) has no 'bits' setting; ...
    """
    recipe_bits(config)
    return dataclasses.replace(config, bits=bits)


def _unit_of(name: str, units) -> str | None:
    for unit in units:
        if name == unit.name or name.startswith(unit.name + "."):
            return unit.name
    return None


def target_bits(model: nn.Module, config) -> dict[str, tuple[int, float]]:
    """``{module name: (weights, theoretical bits)}`` of every weight ``config`` quantizes.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> weights, bits = target_bits(model, quantsweep.get_recipe("w4-rtn"))["model.layers.0.mlp.up_proj"]
        >>> weights, bits / weights  # asymmetric, groups of 128: 4 + (16 + 4) / 128
        (49152, 4.15625)
    """
    found = {}
    for name, module in weight_targets(model, config).items():
        bits = recipe_weight_bits(config, module.weight)
        if bits is None:
            raise ValueError(f"recipe {config.name!r} has no bit width to count")
        found[name] = (module.weight.numel(), bits)
    return found


@dataclass(frozen=True)
class MixedRecipe:
    """A mixed-precision recipe chosen within a budget.

    Attributes:
        recipe: the recipe mapping (what :meth:`to_yaml` writes): the base recipe plus overrides.
        budget: the target average bits per quantized weight.
        low_bits, high_bits: the two precisions.
        promoted: the units at ``high_bits``, most sensitive first.
        bits_per_weight: the mixed recipe's average bits per quantized weight (<= budget).
        uniform_bits_per_weight: the base recipe's (``low_bits`` everywhere).
        quantized_weights: how many weights the average is over.

    Example:
        >>> MixedRecipe({"name": "x"}, 2.5, 2, 4, (), 2.2, 2.2, 10).to_yaml()
        'name: x\\n'
    """

    recipe: dict[str, Any]
    budget: float
    low_bits: int
    high_bits: int
    promoted: tuple[str, ...]
    bits_per_weight: float
    uniform_bits_per_weight: float
    quantized_weights: int

    def to_yaml(self) -> str:
        """The recipe as YAML (what ``quantsweep run --recipe FILE`` reads).

        Example:
            >>> "bits: 4" in MixedRecipe({"bits": 4}, 4.5, 4, 8, (), 4.2, 4.2, 10).to_yaml()
            True
        """
        return yaml.safe_dump(self.recipe, sort_keys=False)


def check_budget(budget) -> float:
    """``budget`` as a float if it is a positive finite number of bits per weight, else a ValueError.

    Example:
        >>> check_budget(2.5)
        2.5
        >>> check_budget(0)
        Traceback (most recent call last):
        ValueError: budget must be a positive number of bits per weight, got 0
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a positive number of bits per weight, got {budget!r}")
    return float(budget)


def mixed_recipe(model: nn.Module, config, ranking, *, budget: float, high_bits: int | None = None) -> MixedRecipe:
    """The recipe at its own bits everywhere and ``high_bits`` on the most sensitive units that fit ``budget``.

    Args:
        model: the model (full precision or not: only shapes are read).
        config: the base recipe (its ``bits`` are the low precision).
        ranking: :class:`~quantsweep.sensitivity.units.Unit` objects, most sensitive first.
        budget: the target average bits per quantized weight.
        high_bits: the precision of promoted units (default :func:`default_high_bits`).

    Raises:
        ValueError: the budget is below the base recipe's own bits per weight, or the recipe
            has no ``bits``.

    Example:
        >>> import quantsweep
        >>> from quantsweep.sensitivity.units import scan_units
        >>> model, _ = quantsweep.load_model("toy")
        >>> mixed_recipe(model, quantsweep.get_recipe("w2-rtn"), scan_units(model), budget=2.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: budget 2 bits per weight is below what w2-rtn itself takes (2.141 bits per weight); ...
    """
    budget = check_budget(budget)
    high_bits = default_high_bits(recipe_bits(config)) if high_bits is None else high_bits
    high = with_bits(config, high_bits)
    low_bits = target_bits(model, config)
    high_bits_by_name = target_bits(model, high)
    weights = sum(count for count, _ in low_bits.values())
    total = sum(bits for _, bits in low_bits.values())
    uniform = total / weights
    if uniform > budget:
        raise ValueError(
            f"budget {budget:g} bits per weight is below what {config.name} itself takes ({uniform:.3f} bits per "
            f"weight); give a budget of at least that"
        )
    extra: dict[str, float] = {}
    for name, (_, bits) in low_bits.items():
        unit = _unit_of(name, ranking)
        if unit is not None:
            extra[unit] = extra.get(unit, 0.0) + high_bits_by_name[name][1] - bits
    promoted = []
    for unit in ranking:
        cost = extra.get(unit.name, 0.0)
        if (total + cost) / weights <= budget:
            total += cost
            promoted.append(unit.name)
    kinds = {unit.name: unit.kind for unit in ranking}
    patterns = [f"{name}.*" if kinds[name] == "layer" else name for name in promoted]  # a layer: all it holds
    recipe = {key: value for key, value in config.to_dict().items()}
    recipe["name"] = f"{config.name}-mixed-{budget:g}bpw"
    recipe["description"] = (
        f"{config.name} with the {len(promoted)} most sensitive units at {high_bits} bits: "
        f"{total / weights:.3f} bits per weight (budget {budget:g})"
    )
    if promoted:
        recipe["overrides"] = [{"match": patterns, "bits": high_bits}]
    return MixedRecipe(
        recipe=recipe,
        budget=budget,
        low_bits=config.bits,
        high_bits=high_bits,
        promoted=tuple(promoted),
        bits_per_weight=total / weights,
        uniform_bits_per_weight=uniform,
        quantized_weights=weights,
    )
