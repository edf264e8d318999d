"""Composed recipes: transforms, one weight method, activation and KV-cache quantization, in order.

A composed recipe lists its stages under ``stages:`` and is applied in that order:

1. **transforms**, each at most once: ``rotate`` (a seeded randomized Hadamard rotation of
   the residual stream, :mod:`quantsweep.methods.rotation`) or ``smooth`` (SmoothQuant's
   channel migration alone, :func:`quantsweep.methods.smoothquant.smooth_model`). Both keep
   the model's function; they make it easier to quantize.
2. **one weight method**: any registered method (``rtn``, ``gptq``, ...); the stage's
   other keys are that method's config fields.
3. **activations**: per-token dynamic fake quantization of the input of every quantized
   Linear (``bits``, ``symmetric``, ``clip_ratio``).
4. **kv_cache**: keys (after RoPE) and values fake-quantized as they enter the cache, per
   head and token, in groups along ``head_dim`` (:mod:`quantsweep.methods.kv_cache`).

Rules, checked when the recipe is read (before any model loads):

* at least one stage; at most one weight stage, one activations stage, one kv_cache stage
  and one transform of each kind;
* transforms come before the weight stage (a transform after it would move the quantized
  weights off their grid), and activations / kv_cache after it (the weight method sees the
  model the transforms left, with full-precision activations; quantizers of activations
  and of the cache are attached to the final weights);
* ``smooth`` and ``rotate`` are not combined, nor either with a weight method that
  rescales channels itself (``awq``, ``smoothquant``): smoothing after a rotation brings
  back the outlier channels the rotation spread out, a rotation after smoothing spreads the
  scales smoothing chose, and AWQ's scales are folded across ``up_proj -> down_proj``,
  where the rotation puts an online Hadamard;
* an activations stage is refused with a weight method that quantizes activations itself
  (``smoothquant``, ``gptaq`` with ``activation_bits``);
* per-module ``overrides`` need a weight method registered with ``per_module`` fields
  (RTN and GPTQ); an override skips a module's weights *and* its activations.

A one-method recipe (``method: rtn``) stays the method's own config, with the same key
as ever; with ``overrides:`` it becomes a one-stage composed recipe.

Example:
    >>> import quantsweep
    >>> recipe = composed_from_dict({"name": "w4a8", "stages": [
    ...     {"weight": "rtn", "bits": 4}, {"activations": {"bits": 8}}]})
    >>> recipe.method, [stage.kind for stage in recipe.stages]
    ('rtn+a8', ['weight', 'activations'])
    >>> model, _ = quantsweep.load_model("toy")
    >>> quantsweep.apply_recipe(model, recipe).kernel
    'fake-quant'
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from quantsweep._schema import build, check_types, did_you_mean, refuse_unknown
from quantsweep.methods.activation import ACTIVATION_BITS, attach_activation_quant
from quantsweep.methods.catalog import get_method
from quantsweep.methods.kv_cache import attach_kv_cache_quant, check_kv_cache
from quantsweep.methods.overrides import Override, module_configs, override_from_dict
from quantsweep.methods.registry import RecipeConfig, RecipeError
from quantsweep.methods.result import QuantizationResult
from quantsweep.methods.rotation import check_online, check_rotatable, load_rotation_matrix, rotate_model
from quantsweep.methods.targets import check_group_sizes, weight_targets
from quantsweep.models.layout import input_embeddings
from quantsweep.quant.kv_cache import KV_CACHE_BITS

logger = logging.getLogger(__name__)

STAGE_KINDS = ("transform", "weight", "activations", "kv_cache")
# Fields of a method's config that a weight stage never writes: the recipe supplies them.
_RECIPE_FIELDS = ("name", "method", "description")


def _checked(stage, where: str) -> None:
    check_types(stage, where, error=RecipeError)


@dataclass(frozen=True, kw_only=True)
class RotateStage:
    """Transform ``rotate``: a seeded randomized Hadamard rotation of the residual stream.

    Attributes:
        seed: seed of the random signs of the Hadamard matrix.
        online: modules whose input gets an online Hadamard transform (default ``down_proj``).
        matrix: a file holding a learned rotation (SpinQuant) used instead of the Hadamard.

    Example:
        >>> RotateStage(seed=1).to_dict()
        {'transform': 'rotate', 'seed': 1, 'online': ['down_proj'], 'matrix': None}
    """

    kind: ClassVar[str] = "transform"
    name: ClassVar[str] = "rotate"
    seed: int = 0
    online: tuple[str, ...] = ("down_proj",)
    matrix: str | None = None

    def __post_init__(self) -> None:
        _checked(self, "transform 'rotate'")
        try:
            object.__setattr__(self, "online", check_online(self.online))
        except (TypeError, ValueError) as error:
            raise RecipeError(f"transform 'rotate': {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """The stage as recipe YAML writes it.

        Example:
            >>> RotateStage().to_dict()["online"]
            ['down_proj']
        """
        return {"transform": "rotate", "seed": self.seed, "online": list(self.online), "matrix": self.matrix}


@dataclass(frozen=True, kw_only=True)
class SmoothStage:
    """Transform ``smooth``: SmoothQuant's migration of activation outliers into the weights, alone.

    Attributes:
        alpha: migration strength in [0, 1].
        calibration_batch_size: calibration samples per forward pass.
        device: where each decoder layer is processed (``auto``: the model's accelerator, else the best one).

    Example:
        >>> SmoothStage(alpha=0.8).to_dict()["alpha"]
        0.8
    """

    kind: ClassVar[str] = "transform"
    name: ClassVar[str] = "smooth"
    alpha: float = 0.5
    calibration_batch_size: int = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        _checked(self, "transform 'smooth'")
        if not 0.0 <= self.alpha <= 1.0:
            raise RecipeError(f"transform 'smooth': alpha must be in [0, 1], got {self.alpha}")
        if self.calibration_batch_size <= 0:
            raise RecipeError("transform 'smooth': calibration_batch_size must be positive")

    def to_dict(self) -> dict[str, Any]:
        """The stage as recipe YAML writes it.

        Example:
            >>> SmoothStage().to_dict()["transform"]
            'smooth'
        """
        return {"transform": "smooth", **dataclasses.asdict(self)}


TRANSFORMS: dict[str, type] = {"rotate": RotateStage, "smooth": SmoothStage}


@dataclass(frozen=True, kw_only=True)
class WeightStage:
    """The weight method of a composed recipe: a registered method's own config.

    Example:
        >>> from quantsweep.methods.rtn import RTNConfig
        >>> WeightStage(config=RTNConfig(name="r", method="rtn", bits=4)).to_dict()
        {'weight': 'rtn', 'quantize_embeddings': False, 'quantize_lm_head': False, 'bits': 4, 'group_size': 128, 'symmetric': True}
    """

    kind: ClassVar[str] = "weight"
    config: RecipeConfig

    @property
    def name(self) -> str:
        """The method's name, e.g. ``gptq``.

        Example:
            >>> from quantsweep.methods.rtn import RTNConfig
            >>> WeightStage(config=RTNConfig(name="r", method="rtn")).name
            'rtn'
        """
        return self.config.method

    def to_dict(self) -> dict[str, Any]:
        """The stage as recipe YAML writes it: ``weight: <method>`` and every config field.

        Example:
            >>> from quantsweep.methods.rtn import RTNConfig
            >>> WeightStage(config=RTNConfig(name="r", method="rtn")).to_dict()["weight"]
            'rtn'
        """
        fields = {k: v for k, v in self.config.to_dict().items() if k not in _RECIPE_FIELDS}
        return {"weight": self.config.method, **fields}


@dataclass(frozen=True, kw_only=True)
class ActivationStage:
    """Per-token dynamic activation quantization on the input of every quantized Linear.

    Attributes:
        bits: 2..8.
        symmetric: symmetric integers (default) or asymmetric with a zero point.
        clip_ratio: each token's range is shrunk by this factor in (0, 1] first (1.0: min-max).

    Example:
        >>> ActivationStage(bits=4).to_dict()
        {'activations': {'bits': 4, 'symmetric': True, 'clip_ratio': 1.0}}
    """

    kind: ClassVar[str] = "activations"
    name: ClassVar[str] = "activations"
    bits: int
    symmetric: bool = True
    clip_ratio: float = 1.0

    def __post_init__(self) -> None:
        _checked(self, "stage 'activations'")
        if self.bits not in ACTIVATION_BITS:
            raise RecipeError(f"stage 'activations': bits must be one of {list(ACTIVATION_BITS)}, got {self.bits}")
        if not 0.0 < self.clip_ratio <= 1.0:
            raise RecipeError(f"stage 'activations': clip_ratio must be in (0, 1], got {self.clip_ratio}")

    def to_dict(self) -> dict[str, Any]:
        """The stage as recipe YAML writes it.

        Example:
            >>> ActivationStage(bits=8).to_dict()["activations"]["bits"]
            8
        """
        return {"activations": dataclasses.asdict(self)}


@dataclass(frozen=True, kw_only=True)
class KVCacheStage:
    """Fake quantization of keys (after RoPE) and values as they enter the KV cache.

    Attributes:
        bits: 2..8.
        group_size: values per group along ``head_dim`` (per head, per token); None: the whole head.
        symmetric: symmetric integers, or asymmetric with a zero point (default).

    Example:
        >>> KVCacheStage(bits=4, group_size=64).to_dict()
        {'kv_cache': {'bits': 4, 'group_size': 64, 'symmetric': False}}
    """

    kind: ClassVar[str] = "kv_cache"
    name: ClassVar[str] = "kv_cache"
    bits: int
    group_size: int | None = None
    symmetric: bool = False

    def __post_init__(self) -> None:
        _checked(self, "stage 'kv_cache'")
        if self.bits not in KV_CACHE_BITS:
            raise RecipeError(f"stage 'kv_cache': bits must be one of {list(KV_CACHE_BITS)}, got {self.bits}")
        if self.group_size is not None and self.group_size <= 0:
            raise RecipeError(f"stage 'kv_cache': group_size must be positive or null, got {self.group_size}")

    def to_dict(self) -> dict[str, Any]:
        """The stage as recipe YAML writes it.

        Example:
            >>> KVCacheStage(bits=8).to_dict()["kv_cache"]["group_size"] is None
            True
        """
        return {"kv_cache": dataclasses.asdict(self)}


def _stage_label(stage) -> str:
    if isinstance(stage, ActivationStage):
        return f"a{stage.bits}"
    if isinstance(stage, KVCacheStage):
        return f"kv{stage.bits}"
    return stage.name


def check_stages(name: str, stages: tuple, has_overrides: bool = False) -> None:
    """Refuse an impossible order or combination of stages (the rules in this module's docstring).

    Raises:
        RecipeError: naming the recipe, the stages involved and why.

    Example:
        >>> check_stages("x", (ActivationStage(bits=4), SmoothStage()))
        Traceback (most recent call last):
        ...
        quantsweep.methods.registry.RecipeError: recipe 'x': transform 'smooth' comes after stage 'activations'; transforms come first
    """
    where = f"recipe {name!r}"
    if not stages:
        raise RecipeError(f"{where}: 'stages' is empty; list at least one stage")
    seen: dict[str, Any] = {}
    weight = None
    for stage in stages:
        key = stage.name if stage.kind == "transform" else stage.kind
        if key in seen:
            if stage.kind == "weight":
                raise RecipeError(
                    f"{where}: two weight methods ({seen[key].name}, {stage.name}); a recipe has one weight stage"
                )
            raise RecipeError(f"{where}: stage {key!r} appears twice; each stage appears at most once")
        later = [s for s in seen.values() if STAGE_KINDS.index(s.kind) > STAGE_KINDS.index(stage.kind)]
        if later and stage.kind == "transform":
            reason = (
                "the weights are already quantized, and a transform would move them off their grid"
                if later[0].kind == "weight"
                else "transforms come first"
            )
            raise RecipeError(f"{where}: transform {stage.name!r} comes after stage {later[0].name!r}; {reason}")
        if later and stage.kind == "weight":
            raise RecipeError(
                f"{where}: stage {later[0].name!r} comes before the weight method {stage.name!r}; activation and "
                "KV-cache quantizers are attached to the final weights, after the weight stage"
            )
        seen[key] = stage
        if stage.kind == "weight":
            weight = stage
    if "smooth" in seen and "rotate" in seen:
        raise RecipeError(
            f"{where}: transforms 'smooth' and 'rotate' are not combined: smoothing after a rotation brings back "
            "the outlier channels the rotation spread, and a rotation after smoothing spreads its scales"
        )
    spec = get_method(weight.name) if weight is not None else None
    if spec is not None and spec.smooths and ("smooth" in seen or "rotate" in seen):
        transform = "smooth" if "smooth" in seen else "rotate"
        raise RecipeError(
            f"{where}: weight method {weight.name!r} rescales channels itself, so it does not follow transform "
            f"{transform!r} (it would undo or break it); use rtn or gptq after {transform!r}"
        )
    if weight is not None and "activations" in seen and getattr(weight.config, "activation_bits", None) is not None:
        raise RecipeError(
            f"{where}: weight method {weight.name!r} quantizes activations itself (activation_bits: "
            f"{weight.config.activation_bits}); drop the 'activations' stage or its activation_bits"
        )
    if has_overrides:
        if spec is None or not spec.per_module:
            from quantsweep.methods.registry import registered_methods

            able = sorted(n for n, s in registered_methods().items() if s.per_module)
            method = weight.name if weight is not None else "(none)"
            raise RecipeError(
                f"{where}: weight method {method!r} cannot honour per-module overrides; methods that can: {', '.join(able)}"
            )


@dataclass(frozen=True, kw_only=True)
class ComposedRecipe(RecipeConfig):
    """A recipe made of stages (see the module docstring), with optional per-module overrides.

    ``method`` is derived: the stages' names joined by ``+`` (``rotate+gptq+a4+kv4``, with
    ``+overrides`` when there are overrides), so reports group and label it. The
    embedding and head switches belong to the weight stage.

    Attributes:
        stages: the stages, in order (:class:`RotateStage`, :class:`SmoothStage`,
            :class:`WeightStage`, :class:`ActivationStage`, :class:`KVCacheStage`).
        overrides: :class:`~quantsweep.methods.overrides.Override` entries, first match wins.

    Example:
        >>> from quantsweep.methods.rtn import RTNConfig
        >>> recipe = ComposedRecipe(name="r", stages=(RotateStage(), WeightStage(config=RTNConfig(name="r", method="rtn"))))
        >>> recipe.method, recipe.precision()["weight_bits"]
        ('rotate+rtn', 4)
    """

    method: str = ""
    stages: tuple[Any, ...] = ()
    overrides: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if self.quantize_embeddings or self.quantize_lm_head:
            raise RecipeError(
                f"recipe {self.name!r}: quantize_embeddings / quantize_lm_head belong to the weight stage of a composed recipe"
            )
        kinds = (RotateStage, SmoothStage, WeightStage, ActivationStage, KVCacheStage)
        for stage in self.stages:
            if not isinstance(stage, kinds):
                raise RecipeError(f"recipe {self.name!r}: {stage!r} is not a stage")
        if not all(isinstance(o, Override) for o in self.overrides):
            raise RecipeError(f"recipe {self.name!r}: overrides must be Override entries")
        check_stages(self.name, self.stages, bool(self.overrides))
        label = "+".join(_stage_label(s) for s in self.stages) + ("+overrides" if self.overrides else "")
        if self.method and self.method != label:
            raise RecipeError(
                f"recipe {self.name!r}: 'method' of a composed recipe is derived from its stages ({label!r}), got {self.method!r}"
            )
        object.__setattr__(self, "method", label)
        super().__post_init__()

    def stage(self, kind: str):
        """The first stage of ``kind`` (``weight``, ``activations``, ``kv_cache``, ``rotate``, ``smooth``), or None.

        Example:
            >>> ComposedRecipe(name="a8", stages=(ActivationStage(bits=8),)).stage("activations").bits
            8
        """
        return next((s for s in self.stages if s.kind == kind or s.name == kind), None)

    @property
    def weight_config(self) -> RecipeConfig | None:
        """The weight method's config, or None.

        Example:
            >>> ComposedRecipe(name="a8", stages=(ActivationStage(bits=8),)).weight_config is None
            True
        """
        weight = self.stage("weight")
        return weight.config if weight is not None else None

    def needs_calibration(self) -> bool:
        """Whether a stage draws calibration windows (a calibrated weight method, or ``smooth``).

        Example:
            >>> ComposedRecipe(name="s", stages=(SmoothStage(),)).needs_calibration()
            True
        """
        weight = self.weight_config
        return (weight is not None and get_method(weight.method).needs_calibration) or self.stage("smooth") is not None

    def precision(self) -> dict[str, int | None]:
        """``weight_bits``, ``activation_bits``, ``kv_cache_bits`` (None: full precision).

        Example:
            >>> ComposedRecipe(name="kv", stages=(KVCacheStage(bits=4),)).precision()
            {'weight_bits': None, 'activation_bits': None, 'kv_cache_bits': 4}
        """
        out = recipe_precision(self.weight_config) if self.weight_config is not None else dict.fromkeys(PRECISION_KEYS)
        activations, kv = self.stage("activations"), self.stage("kv_cache")
        if activations is not None:
            out["activation_bits"] = activations.bits
        out["kv_cache_bits"] = kv.bits if kv is not None else None
        return out

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe: every stage with all its settings, and the overrides.

        Example:
            >>> ComposedRecipe(name="a8", stages=(ActivationStage(bits=8),)).to_dict()["stages"]
            [{'activations': {'bits': 8, 'symmetric': True, 'clip_ratio': 1.0}}]
        """
        return {
            "name": self.name,
            "method": self.method,
            "description": self.description,
            "stages": [stage.to_dict() for stage in self.stages],
            "overrides": [override.to_dict() for override in self.overrides],
        }


PRECISION_KEYS = ("weight_bits", "activation_bits", "kv_cache_bits")


def recipe_precision(recipe: RecipeConfig) -> dict[str, int | None]:
    """The bits of weights, activations and KV cache a recipe sets (None: left in full precision).

    Example:
        >>> import quantsweep
        >>> recipe_precision(quantsweep.get_recipe("w4a4-smoothquant"))
        {'weight_bits': 4, 'activation_bits': 4, 'kv_cache_bits': None}
        >>> recipe_precision(quantsweep.get_recipe("fp"))["weight_bits"] is None
        True
    """
    if isinstance(recipe, ComposedRecipe):
        return recipe.precision()
    weight = getattr(recipe, "bits", None) or getattr(recipe, "weight_bits", None)
    return {"weight_bits": weight, "activation_bits": getattr(recipe, "activation_bits", None), "kv_cache_bits": None}


def _stage_from_dict(entry: Any, index: int, recipe_name: str, where: str):
    at = f"{where}: stages[{index}]"
    if not isinstance(entry, Mapping):
        raise RecipeError(f"{at}: a stage must be a mapping such as {{weight: rtn, bits: 4}}, got {entry!r}")
    kinds = [k for k in entry if k in STAGE_KINDS]
    if len(kinds) != 1:
        unknown = [k for k in entry if k not in STAGE_KINDS]
        hint = did_you_mean(unknown[0], STAGE_KINDS) if unknown and not kinds else ""
        found = ", ".join(map(repr, kinds)) if kinds else f"none (keys: {', '.join(map(str, entry))}){hint}"
        raise RecipeError(f"{at}: a stage names exactly one of {', '.join(STAGE_KINDS)}; found {found}")
    kind = kinds[0]
    value = entry[kind]
    rest = {k: v for k, v in entry.items() if k != kind}
    if kind in ("activations", "kv_cache"):
        if rest:
            raise RecipeError(
                f"{at}: unknown key {next(iter(rest))!r} beside {kind!r}; write its settings under it ({kind}: {{bits: 4}})"
            )
        cls = ActivationStage if kind == "activations" else KVCacheStage
        return build(cls, value if value is not None else {}, f"{at} ({kind})", error=RecipeError)
    if not isinstance(value, str):
        raise RecipeError(
            f"{at}: {kind!r} must name a {'transform' if kind == 'transform' else 'method'}, got {value!r}"
        )
    if kind == "transform":
        if value not in TRANSFORMS:
            raise RecipeError(
                f"{at}: unknown transform {value!r}{did_you_mean(value, TRANSFORMS)}; transforms: {', '.join(TRANSFORMS)}"
            )
        return build(TRANSFORMS[value], rest, f"{at} (transform {value})", error=RecipeError)
    try:
        spec = get_method(value)
    except RecipeError as error:
        raise RecipeError(f"{at}: {error}") from None
    refuse_unknown(spec.config, rest, f"{at} (weight {value})", exclude=_RECIPE_FIELDS, error=RecipeError)
    config = build(
        spec.config, {**rest, "name": recipe_name, "method": value}, f"{at} (weight {value})", error=RecipeError
    )
    return WeightStage(config=config)


def composed_from_dict(data: Mapping, source: str = "<dict>") -> ComposedRecipe:
    """Build a composed recipe from its mapping (``stages:``, or ``method:`` with ``overrides:``), strictly.

    Raises:
        RecipeError: an unknown key (named, "did you mean", allowed keys), a stage that
            names no kind or two, an unknown method or transform, a wrong type, or an
            order the rules refuse.

    Example:
        >>> recipe = composed_from_dict({"name": "w2-keep-head", "method": "rtn", "bits": 2,
        ...                              "overrides": [{"match": "*.down_proj", "bits": 8}]})
        >>> recipe.method, recipe.overrides[0].to_dict()
        ('rtn+overrides', {'match': ['*.down_proj'], 'bits': 8})
        >>> composed_from_dict({"name": "x", "stages": [{"weight": "rtn", "bitz": 4}]})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        quantsweep.methods.registry.RecipeError: <dict>: stages[0] (weight rtn): unknown key 'bitz' (did you mean 'bits'?); ...
    """
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise RecipeError(f"{source}: missing required key 'name' (a non-empty string)")
    if "stages" in data:
        refuse_unknown(
            ("name", "description", "method", "stages", "overrides"),
            data,
            f"{source} (a composed recipe)",
            error=RecipeError,
            note=" (a method's settings go into its weight stage)",
        )
        entries = data["stages"]
        if not isinstance(entries, list):
            raise RecipeError(f"{source}: 'stages' must be a list of stages, got {type(entries).__name__}")
        stages = tuple(_stage_from_dict(entry, i, name, source) for i, entry in enumerate(entries))
    else:
        spec = get_method(str(data.get("method")))
        single = {k: v for k, v in data.items() if k not in ("overrides", "description")}
        stages = (WeightStage(config=build(spec.config, single, source, error=RecipeError)),)
    weight = next((s for s in stages if s.kind == "weight"), None)
    raw = data.get("overrides") or []
    if not isinstance(raw, list):
        raise RecipeError(f"{source}: 'overrides' must be a list of entries with 'match', got {type(raw).__name__}")
    if raw:
        check_stages(name, stages, has_overrides=True)  # refuse overrides for a method that cannot honour them
    overrides = tuple(
        override_from_dict(entry, weight.config, get_method(weight.name).per_module, f"{source}: overrides[{i}]")
        for i, entry in enumerate(raw)
    )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise RecipeError(f"{source}: 'description' must be str, got {description!r}")
    try:
        return ComposedRecipe(
            name=name,
            description=description,
            method=data.get("method", "") if "stages" in data else "",
            stages=stages,
            overrides=overrides,
        )
    except RecipeError as error:
        raise RecipeError(f"{source}: {error}") from None


def check_composed(model, recipe: ComposedRecipe, *, read_matrix: bool = True) -> None:
    """Everything about ``recipe`` that can be checked on ``model`` before any work.

    The rotation's architecture check and its learned matrix (read from the file: suffix,
    shape, orthogonality; skipped with ``read_matrix=False``), the weight method's group
    sizes (per module, under the overrides), that every override matches a module the
    method quantizes, and the KV cache's group size against every attention's ``head_dim``.
    Works on a model built on the meta device.

    Raises:
        ValueError: naming the module and why.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> recipe = composed_from_dict({"name": "x", "method": "rtn", "overrides": [{"match": "nowhere.*", "skip": True}]})
        >>> check_composed(model, recipe)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        quantsweep.methods.registry.RecipeError: recipe 'x': override 'nowhere.*' matches no module the recipe quantizes ...
    """
    rotate = recipe.stage("rotate")
    if rotate is not None:
        check_rotatable(model, online=rotate.online, hadamard=rotate.matrix is None)
        if rotate.matrix is not None and read_matrix:  # suffix, shape and orthogonality, read from the file now
            load_rotation_matrix(rotate.matrix, input_embeddings(model).weight.shape[1])
    if recipe.weight_config is not None:
        check_group_sizes(model, recipe.weight_config, recipe.overrides)
    kv = recipe.stage("kv_cache")
    if kv is not None:
        check_kv_cache(model, kv.group_size)


def _quantized_linears(model, recipe: ComposedRecipe) -> dict:
    """The Linears whose input an activations stage quantizes: the weight method's targets, less skipped ones."""
    from torch import nn

    config = recipe.weight_config or RecipeConfig(name=recipe.name, method="none")
    targets = weight_targets(model, config)
    plan = module_configs(config, recipe.overrides, targets)
    return {
        name: module for name, module in targets.items() if plan[name] is not None and isinstance(module, nn.Linear)
    }


def apply_composed(model, recipe: ComposedRecipe, calibration=None) -> QuantizationResult:
    """Apply a composed recipe's stages to ``model`` in place, in order.

    Everything that can be checked is checked first (:func:`check_composed`). The result
    carries the weight method's report and packed weights, what each stage did
    (``report["stages"]``), and the rotation's extra parameters (``extra_parameters``).

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> recipe = composed_from_dict({"name": "w4a8", "stages": [{"weight": "rtn", "bits": 4},
        ...                                                         {"activations": {"bits": 8}}]})
        >>> result = apply_composed(model, recipe)
        >>> [stage["stage"] for stage in result.report["stages"]], len(result.packed)
        (['rtn', 'activations'], 28)
    """
    from quantsweep.methods.engine.sequential import require_calibration

    # A rotation is the first stage (transforms come first, one at most): rotate_model reads and
    # checks its matrix before it changes anything, so the file is not read twice here.
    check_composed(model, recipe, read_matrix=False)
    if recipe.needs_calibration():
        calibration = require_calibration(calibration, recipe)
    done: list[dict[str, Any]] = []
    extra_parameters = 0
    weight_result = None
    for stage in recipe.stages:
        if isinstance(stage, RotateStage):
            info = rotate_model(model, seed=stage.seed, online=stage.online, matrix=stage.matrix)
            extra_parameters += int(info.extra_parameters)
            done.append({"stage": "rotate", **dataclasses.asdict(info)})
        elif isinstance(stage, SmoothStage):
            from quantsweep.methods.smoothquant import smooth_model

            reports = smooth_model(
                model,
                calibration,
                recipe,
                alpha=stage.alpha,
                device=stage.device,
                batch_size=stage.calibration_batch_size,
            )
            done.append({"stage": "smooth", "seconds": sum(r.seconds for r in reports)})
        elif isinstance(stage, WeightStage):
            spec = get_method(stage.name)
            options = {"overrides": recipe.overrides} if recipe.overrides else {}
            needs = calibration if spec.needs_calibration else None
            weight_result = spec.apply(model, stage.config, calibration=needs, **options)
            if not isinstance(weight_result, QuantizationResult):
                weight_result = QuantizationResult(method=spec.name)
            done.append({"stage": stage.name, "overrides": len(recipe.overrides)})
        elif isinstance(stage, ActivationStage):
            linears = _quantized_linears(model, recipe)
            for linear in linears.values():
                attach_activation_quant(linear, stage.bits, stage.symmetric, stage.clip_ratio)
            done.append({"stage": "activations", "linears": len(linears), "bits": stage.bits})
        elif isinstance(stage, KVCacheStage):
            attach_kv_cache_quant(model, bits=stage.bits, group_size=stage.group_size, symmetric=stage.symmetric)
            done.append({"stage": "kv_cache", "bits": stage.bits, "group_size": stage.group_size})
        logger.info("%s: stage %s done", recipe.name, done[-1]["stage"])
    report = dict(weight_result.report or {}) if weight_result is not None else {}
    report["stages"] = done
    kernel = weight_result.kernel if weight_result is not None else "none"
    if kernel == "none" and any(isinstance(s, (ActivationStage, KVCacheStage)) for s in recipe.stages):
        kernel = "fake-quant"
    return QuantizationResult(
        method=recipe.method,
        report=report,
        packed=weight_result.packed if weight_result is not None else {},
        kernel=kernel,
        extra_parameters=extra_parameters,
    )
