"""Load -> calibrate -> quantize, written once: for sweeps, ``export`` and ``measure``.

:class:`PreparedModel` loads a model once, keeps its full-precision weights, draws its
calibration windows once (only if a recipe needs them), and quantizes it recipe after
recipe, restoring the full-precision weights before each. :func:`prepare` is the
one-recipe form (``export``).

Example:
    >>> from quantsweep.sweep.spec import model_from_dict
    >>> prepared = PreparedModel(model_from_dict({"path": "toy", "device": "cpu"}))
    >>> prepared.quantize("w8-rtn").kernel
    'fake-quant'
    >>> prepared.restore()
"""

from __future__ import annotations

import logging
from typing import Any

from quantsweep.sweep.spec import ModelSpec, model_from_dict

logger = logging.getLogger(__name__)


def needs_calibration(recipe) -> bool:
    """Whether a recipe's method draws calibration windows.

    Example:
        >>> needs_calibration("w4-gptq"), needs_calibration("w4-rtn")
        (True, False)
    """
    from quantsweep.recipes import needs_calibration as recipe_needs_calibration

    return recipe_needs_calibration(recipe)


class PreparedModel:
    """One model, loaded once, quantized recipe after recipe from its full-precision weights.

    Args:
        spec: the model: path, device, dtype, trust_remote_code and calibration.
        device: where to load it (default the spec's own; a cluster worker passes its own).

    Attributes:
        model, tokenizer: None until :meth:`load`.

    Example:
        >>> from quantsweep.sweep.spec import model_from_dict
        >>> prepared = PreparedModel(model_from_dict({"path": "toy", "device": "cpu"}))
        >>> prepared.check(["w4-gptq"])
        >>> prepared.load()[0] is prepared.model
        True
    """

    def __init__(self, spec: ModelSpec, *, device: str | None = None):
        self.spec = spec
        self.device = device or spec.device
        self.model = self.tokenizer = None
        self._snapshot = None
        self._calibration = None

    def check(self, recipes) -> None:
        """Refuse, before anything loads, calibrated recipes without a calibration source.

        Example:
            >>> from quantsweep.sweep.spec import model_from_dict
            >>> PreparedModel(model_from_dict({"path": "/ckpt/m"})).check(["w4-gptq"])  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ValueError: ...
        """
        from quantsweep.calibration import require_calibration_source
        from quantsweep.recipes import get_recipe

        needing = [get_recipe(r).name for r in recipes if needs_calibration(r)]
        if needing:
            require_calibration_source(needing, self.spec.calibration.source)

    def load(self) -> tuple[Any, Any]:
        """Load the model and tokenizer (once) and snapshot the full-precision weights.

        Example:
            >>> from quantsweep.sweep.spec import model_from_dict
            >>> model, tokenizer = PreparedModel(model_from_dict({"path": "toy", "device": "cpu"})).load()
        """
        if self.model is None:
            from quantsweep.models import loading
            from quantsweep.models.snapshot import WeightSnapshot

            spec = self.spec
            self.model, self.tokenizer = loading.load_model(
                spec.path, device=self.device, dtype=spec.dtype, trust_remote_code=spec.trust_remote_code
            )
            self._snapshot = WeightSnapshot(self.model)
        return self.model, self.tokenizer

    def calibration(self):
        """The calibration windows of the spec (drawn once).

        Example:
            >>> from quantsweep.sweep.spec import model_from_dict
            >>> prepared = PreparedModel(model_from_dict({"path": "toy", "device": "cpu"}))
            >>> tuple(prepared.calibration().input_ids.shape)
            (32, 64)
        """
        if self._calibration is None:
            from quantsweep.calibration import load_calibration

            _, tokenizer = self.load()
            spec = self.spec.calibration
            self._calibration = load_calibration(
                spec.source, tokenizer, n_samples=spec.samples, seq_len=spec.seq_len, seed=spec.seed
            )
        return self._calibration

    def quantize(self, recipe):
        """Restore the full-precision weights, calibrate if the recipe needs it, and apply it.

        Returns:
            The method's :class:`~quantsweep.methods.result.QuantizationResult`.

        Example:
            >>> from quantsweep.sweep.spec import model_from_dict
            >>> PreparedModel(model_from_dict({"path": "toy", "device": "cpu"})).quantize("fp").kernel
            'none'
        """
        from quantsweep.recipes import apply_recipe

        self.load()
        self.restore()
        calibration = self.calibration() if needs_calibration(recipe) else None
        return apply_recipe(self.model, recipe, calibration=calibration)

    def restore(self) -> None:
        """Put the full-precision weights back (nothing if the model was never loaded).

        Example:
            >>> from quantsweep.sweep.spec import model_from_dict
            >>> PreparedModel(model_from_dict({"path": "toy"})).restore()
        """
        if self._snapshot is not None:
            self._snapshot.restore(self.model)


def prepare(model, recipe, calibration=None, **model_options):
    """Load ``model``, calibrate (if the recipe needs it) and quantize it with ``recipe``.

    Args:
        model: a :class:`~quantsweep.sweep.spec.ModelSpec`, or ``toy`` / a checkpoint path.
        recipe: a recipe name, YAML path or config.
        calibration: a mapping of calibration settings (source, samples, seq_len, seed);
            left-out keys take the model's defaults, as in a sweep spec.
        model_options: ``device``, ``dtype``, ``trust_remote_code`` for a path.

    Returns:
        ``(model, tokenizer, QuantizationResult)``.

    Example:
        >>> model, tokenizer, result = prepare("toy", "w4-rtn", device="cpu")
        >>> result.kernel
        'fake-quant'
    """
    if not isinstance(model, ModelSpec):
        data = {"path": str(model), **model_options}
        if calibration:
            data["calibration"] = dict(calibration)
        model = model_from_dict(data)
    prepared = PreparedModel(model)
    prepared.check([recipe])
    result = prepared.quantize(recipe)
    return prepared.model, prepared.tokenizer, result
