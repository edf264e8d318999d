"""The units a sensitivity scan quantizes one at a time: decoder layers, or single Linears.

A unit is named by its module path (``model.layers.3`` or ``model.layers.3.mlp.down_proj``).
Its *parameters* are every parameter under that path: for a layer, its Linears and also
the norm scales a method folds into them (AWQ, SmoothQuant), so that a layer quantized
alone computes what it computes inside the fully quantized model.

Example:
    >>> import quantsweep
    >>> model, _ = quantsweep.load_model("toy")
    >>> [unit.name for unit in scan_units(model, "layer")]
    ['model.layers.0', 'model.layers.1', 'model.layers.2', 'model.layers.3']
    >>> len(scan_units(model, "linear"))
    28
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from quantsweep.models.layout import decoder_layer_prefix, decoder_layers, decoder_linears

GRANULARITIES = ("layer", "linear")


@dataclass(frozen=True)
class Unit:
    """One unit of a scan.

    Attributes:
        name: its module path, e.g. ``model.layers.3``.
        layer: the index of the decoder layer it lies in.
        linears: the full names of the Linears it holds (what a recipe quantizes in it).

    Example:
        >>> Unit("model.layers.0.mlp.up_proj", 0, ("model.layers.0.mlp.up_proj",)).kind
        'mlp.up_proj'
    """

    name: str
    layer: int
    linears: tuple[str, ...]

    @property
    def kind(self) -> str:
        """``layer`` for a whole layer, else the Linear's name inside its layer (``mlp.up_proj``).

        Example:
            >>> Unit("model.layers.2", 2, ()).kind
            'layer'
        """
        head, _, _ = self.name.rpartition(f".{self.layer}")
        rest = self.name[len(head) + len(f".{self.layer}") :]
        return rest.lstrip(".") or "layer"

    def parameter_names(self, model: nn.Module) -> list[str]:
        """Full names of every parameter under this unit.

        Example:
            >>> import quantsweep
            >>> model, _ = quantsweep.load_model("toy")
            >>> Unit("model.layers.0.mlp.up_proj", 0, ()).parameter_names(model)
            ['model.layers.0.mlp.up_proj.weight']
        """
        return [name for name, _ in model.named_parameters() if name.startswith(self.name + ".")]


def check_granularity(granularity: str) -> str:
    """``granularity`` if it is ``layer`` or ``linear``, else a ValueError naming both.

    Example:
        >>> check_granularity("block")
        Traceback (most recent call last):
        ValueError: granularity must be one of layer, linear; got 'block'
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}; got {granularity!r}")
    return granularity


def scan_units(model: nn.Module, granularity: str = "layer") -> list[Unit]:
    """The units of ``model`` in model order: one per decoder layer, or one per Linear of each layer.

    Example:
        >>> import quantsweep
        >>> model, _ = quantsweep.load_model("toy")
        >>> scan_units(model, "linear")[0].name
        'model.layers.0.self_attn.q_proj'
    """
    check_granularity(granularity)
    prefix = decoder_layer_prefix(model)
    linears = list(decoder_linears(model))
    units = []
    for index in range(len(decoder_layers(model))):
        inside = tuple(name for name in linears if name.startswith(f"{prefix}.{index}."))
        if granularity == "layer":
            units.append(Unit(f"{prefix}.{index}", index, inside))
        else:
            units.extend(Unit(name, index, (name,)) for name in inside)
    return units
