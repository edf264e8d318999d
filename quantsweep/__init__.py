"""quantsweep: how far can a causal LM be quantized before it breaks, and how do we know?

The public API is a few verbs and the recipe registry::

    import quantsweep
    model, tokenizer = quantsweep.load_model("toy")          # or a local HF directory
    quantsweep.quantize(model, "w4-rtn")                      # in place
    result = quantsweep.evaluate(model, tokenizer, tasks=["toy_mc4"], limit=100)
    frame = quantsweep.sweep("recipes/sweeps/toy.yaml", out="toy-sweep")   # resumable, DataFrame
    quantsweep.report("toy-sweep")                            # one self-contained HTML file
    quantsweep.sensitivity("toy", "w2-rtn", out="toy-sens", budget=2.5)  # layers ranked by KL; a mixed recipe

Names are imported lazily so that ``import quantsweep`` stays light and never
touches torch_npu or an accelerator.
"""

from __future__ import annotations

import importlib

from quantsweep._version import __version__

_EXPORTS = {
    "load_model": "quantsweep.models.loading",
    "quantize": "quantsweep.recipes",
    "apply_recipe": "quantsweep.recipes",
    "QuantizationResult": "quantsweep.methods.result",
    "get_recipe": "quantsweep.recipes",
    "list_recipes": "quantsweep.recipes",
    "list_methods": "quantsweep.methods.catalog",
    "expand_recipes": "quantsweep.recipes",
    "register_method": "quantsweep.methods.registry",
    "RecipeConfig": "quantsweep.methods.registry",
    "evaluate": "quantsweep.eval.harness",
    "EvalResult": "quantsweep.eval.harness",
    "resolve_device": "quantsweep.device",
    "WeightSnapshot": "quantsweep.models.snapshot",
    "report": "quantsweep.report",  # the subpackage itself: a callable module, quantsweep.report(DIR)
    "sweep": "quantsweep.sweep",  # likewise: quantsweep.sweep(spec, out=...) -> DataFrame
    "load_results": "quantsweep.sweep.api",
    "judge": "quantsweep.sweep.api",
    "export": "quantsweep.export",  # likewise: quantsweep.export(model, recipe, out) -> folder
    "sensitivity": "quantsweep.sensitivity",  # likewise: quantsweep.sensitivity(model, recipe, out=...) -> result
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        value = module if _EXPORTS[name] == f"{__name__}.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'quantsweep' has no attribute {name!r}")


def __dir__():
    return __all__
