"""The scan's table (ranked rows, CSV, aligned text) and its plot (KL per unit, in model order).

Example:
    >>> records = [{"unit": "model.layers.0", "layer": 0, "module": "layer", "kl_mean": 0.01, "kl_p99": 0.1,
    ...             "top1_agreement": 0.99, "quantized_weights": 100},
    ...            {"unit": "model.layers.1", "layer": 1, "module": "layer", "kl_mean": 0.5, "kl_p99": 2.0,
    ...             "top1_agreement": 0.8, "quantized_weights": 100}]
    >>> [(row["rank"], row["unit"]) for row in ranked_rows(records)]
    [(1, 'model.layers.1'), (2, 'model.layers.0')]
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

COLUMNS = ("rank", "unit", "layer", "module", "kl_mean", "kl_p99", "top1_agreement", "quantized_weights", "bits")


def _sort_value(record: dict[str, Any]) -> float:
    value = record.get("kl_mean")
    return math.inf if value is None or not math.isfinite(value) else value  # non-finite: most sensitive


def ranked_rows(records, bits: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per unit, most sensitive (largest mean KL) first, with its ``rank`` and, if given, its ``bits``.

    Example:
        >>> ranked_rows([{"unit": "a", "kl_mean": None}, {"unit": "b", "kl_mean": 0.1}], bits={"a": 4, "b": 2})[0]["bits"]
        4
    """
    ordered = sorted(records, key=lambda r: (-_sort_value(r), r.get("layer", 0), r["unit"]))
    rows = []
    for rank, record in enumerate(ordered, start=1):
        row = {column: record.get(column) for column in COLUMNS}
        row["rank"] = rank
        row["bits"] = (bits or {}).get(record["unit"])
        rows.append(row)
    return rows


def write_csv(rows, path: str | Path) -> Path:
    """Write the rows as CSV (columns :data:`COLUMNS`).

    Example:
        >>> import tempfile
        >>> path = write_csv([{"rank": 1, "unit": "a"}], Path(tempfile.mkdtemp()) / "t.csv")
        >>> path.read_text().splitlines()[0]
        'rank,unit,layer,module,kl_mean,kl_p99,top1_agreement,quantized_weights,bits'
    """
    path = Path(path)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "non-finite"
    return f"{value:.{digits}g}"


def format_table(rows) -> str:
    """The rows as an aligned text table.

    Example:
        >>> print(format_table([{"rank": 1, "unit": "model.layers.1", "kl_mean": 0.5, "kl_p99": 2.0, "top1_agreement": 0.8}]))
        rank  unit            KL mean  KL p99  top-1 same  bits
           1  model.layers.1  0.5      2       0.800       -
    """
    header = ("rank", "unit", "KL mean", "KL p99", "top-1 same", "bits")
    lines = [
        (
            str(row["rank"]),
            str(row["unit"]),
            _number(row.get("kl_mean")),
            _number(row.get("kl_p99")),
            "-" if row.get("top1_agreement") is None else f"{row['top1_agreement']:.3f}",
            "-" if row.get("bits") is None else str(row["bits"]),
        )
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]

    def join(cells):
        first = cells[0].rjust(widths[0])
        return "  ".join([first, *(c.ljust(w) for c, w in zip(cells[1:], widths[1:]))]).rstrip()

    return "\n".join(join(cells) for cells in [header, *lines])


def sensitivity_figure(rows, title: str = "") -> Figure:
    """Mean KL per unit in model order (log scale if it spans decades), units at a higher precision in a second colour.

    Example:
        >>> figure = sensitivity_figure([{"unit": "model.layers.0", "layer": 0, "kl_mean": 0.1, "bits": 4},
        ...                              {"unit": "model.layers.1", "layer": 1, "kl_mean": 0.01, "bits": 2}])
        >>> [label.get_text() for label in figure.axes[0].get_xticklabels()]
        ['0', '1']
    """
    ordered = sorted(rows, key=lambda r: (r.get("layer", 0), r["unit"]))
    values = [_sort_value(r) for r in ordered]
    finite = [v for v in values if math.isfinite(v) and v > 0]
    ceiling = max(finite) * 10 if finite else 1.0
    heights = [ceiling if not math.isfinite(v) else max(v, 1e-12) for v in values]
    lowest = min((r["bits"] for r in ordered if r.get("bits") is not None), default=None)
    colours = ["#d95f02" if lowest is not None and r.get("bits", lowest) > lowest else "#1b9e77" for r in ordered]
    labels = [
        str(r["layer"]) if r.get("module", "layer") == "layer" else f"{r['layer']}.{r['unit'].rsplit('.', 1)[-1]}"
        for r in ordered
    ]
    figure = Figure(figsize=(max(4.0, 0.3 * len(ordered) + 2), 3.2))
    axes = figure.add_subplot()
    axes.bar(range(len(ordered)), heights, color=colours)
    if finite and max(finite) / min(finite) > 100:  # a log scale only where the values span decades
        axes.set_yscale("log")
    axes.set_xticks(range(len(ordered)), labels, rotation=90 if len(ordered) > 12 else 0, fontsize=7)
    axes.set_xlabel("decoder layer" if all(r.get("module", "layer") == "layer" for r in ordered) else "layer.linear")
    axes.set_ylabel("mean KL from fp (nats)")
    if lowest is not None:
        axes.set_title(f"{title}  (orange: kept at higher precision)".strip(), fontsize=9)
    elif title:
        axes.set_title(title, fontsize=9)
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Save ``figure`` as PNG.

    Example:
        >>> import tempfile
        >>> save_figure(Figure(figsize=(1, 1)), Path(tempfile.mkdtemp()) / "f.png").read_bytes()[:4]
        b'\\x89PNG'
    """
    path = Path(path)
    figure.savefig(path, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path
