"""matplotlib figures of a sweep: the verdict map and retained margin against bits per weight.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), not
pyplot, so making a report never changes the caller's backend or open figures.
:func:`png_bytes` renders one to PNG for embedding or saving.

Example:
    >>> from quantsweep.report.frames import primary_frame
    >>> def record(recipe, bits, value, verdict, reason=None):  # a primary accuracy record, as a sweep stores it
    ...     return {"model": "toy", "recipe": recipe, "recipe_config": {"method": "rtn" if bits else "none", "bits": bits},
    ...             "task": "toy_mc4", "family": "knowledge", "metric": "acc", "primary": True, "value": value,
    ...             "verdict": verdict, "reason": reason, "retained": None if bits is None else value / 0.91}
    >>> records = [record("fp", None, 0.91, "baseline"), record("w4-rtn", 4, 0.90, "lossless"),
    ...            record("w1-rtn", 1, 0.26, "collapsed", "accuracy 0.260 is at chance (0.250)")]
    >>> cells = primary_frame(records)
    >>> figure = verdict_heatmap(cells, ["fp", "w4-rtn", "w1-rtn"], ["toy_mc4"])
    >>> [label.get_text() for label in figure.axes[0].get_yticklabels()]
    ['fp', 'w4-rtn', 'w1-rtn']
    >>> png_bytes(figure)[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import io

import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

# One colour per verdict, shared by the HTML map and the figures (colour-blind-safe ordering:
# green for fine, yellow unclear, orange worse, red broken, purple NaN, black failed).
VERDICT_COLOURS = {
    "baseline": "#c6dbef",
    "lossless": "#1a9850",
    "inconclusive": "#fee08b",
    "degraded": "#f46d43",
    "collapsed": "#a50026",
    "non-finite": "#762a83",
    "error": "#000000",
    "missing": "#ffffff",
}
ORDER = tuple(VERDICT_COLOURS)
METHOD_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def png_bytes(figure: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes.

    Example:
        >>> png_bytes(Figure(figsize=(1, 1)))[:4]
        b'\\x89PNG'
    """
    buffer = io.BytesIO()
    # no "Software" metadata: matplotlib's default names its web address inside the PNG
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def verdict_heatmap(cells: pd.DataFrame, recipes: list[str], tasks: list[str]) -> Figure:
    """Recipes (rows) × tasks (columns), each cell coloured by verdict and labelled with its value.

    Args:
        cells: one row per (recipe, task) with ``verdict`` and ``value`` columns (a primary frame).
        recipes, tasks: row and column order; a pair with no row is drawn as "missing".

    Example:
        >>> cells = pd.DataFrame([{"recipe": "fp", "task": "t", "verdict": "baseline", "value": 0.9}])
        >>> verdict_heatmap(cells, ["fp"], ["t"]).axes[0].get_title()
        'verdict map'
    """
    lookup = {(r.recipe, r.task): r for r in cells.itertuples()}
    codes, labels = [], []
    for recipe in recipes:
        row_codes, row_labels = [], []
        for task in tasks:
            cell = lookup.get((recipe, task))
            verdict = "missing" if cell is None else (cell.verdict if cell.verdict in VERDICT_COLOURS else "missing")
            row_codes.append(ORDER.index(verdict))
            value = None if cell is None else cell.value
            row_labels.append(
                "FAILED" if verdict == "error" else "-" if value is None or value != value else f"{value:.3g}"
            )
        codes.append(row_codes)
        labels.append(row_labels)
    figure = Figure(figsize=(1.2 + 1.1 * len(tasks), 0.9 + 0.45 * len(recipes)))
    axes = figure.subplots()
    axes.imshow(
        codes, cmap=ListedColormap([VERDICT_COLOURS[v] for v in ORDER]), vmin=-0.5, vmax=len(ORDER) - 0.5, aspect="auto"
    )
    dark = {"lossless", "degraded", "collapsed", "non-finite", "error"}
    for i, row in enumerate(labels):
        for j, text in enumerate(row):
            axes.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if ORDER[codes[i][j]] in dark else "black",
            )
    axes.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
    axes.set_yticks(range(len(recipes)), recipes, fontsize=8)
    axes.set_title("verdict map")
    return figure


def retention_vs_bits(cells: pd.DataFrame, family: str) -> Figure:
    """Mean retained margin above chance against bits per weight, one marker per method.

    Args:
        cells: primary cells of one family's tasks with ``method``, ``recipe``,
            ``bits_per_weight`` and ``retained`` (baseline rows are left out by the caller or here).
        family: the task family, for the title.

    Example:
        >>> cells = pd.DataFrame([{"recipe": "w4", "method": "rtn", "bits_per_weight": 4.25, "retained": 0.9,
        ...                        "verdict": "lossless"}])
        >>> retention_vs_bits(cells, "reasoning").axes[0].get_xlabel()
        'bits per weight'
    """
    compared = cells[(cells["verdict"] != "baseline") & cells["retained"].notna() & cells["bits_per_weight"].notna()]
    per_recipe = (
        compared.groupby(["method", "recipe"], sort=False)
        .agg(bits=("bits_per_weight", "first"), retained=("retained", "mean"))
        .reset_index()
    )
    figure = Figure(figsize=(4.6, 3.2))
    axes = figure.subplots()
    for index, (method, group) in enumerate(per_recipe.groupby("method", sort=False)):
        group = group.sort_values("bits")
        axes.plot(
            group["bits"],
            group["retained"],
            marker=METHOD_MARKERS[index % len(METHOD_MARKERS)],
            linestyle="-",
            label=method,
        )
        for row in group.itertuples():
            axes.annotate(row.recipe, (row.bits, row.retained), textcoords="offset points", xytext=(3, 3), fontsize=7)
    _finish_retention_axes(
        axes, "retained margin above chance", f"{family}: retained margin vs bits", "method", per_recipe.empty
    )
    return figure


def retention_by_model(cells: pd.DataFrame, family: str) -> Figure:
    """The study's contrast: mean retained margin against bits per weight, one line per model (view).

    At each bits per weight the line shows the mean retained margin over the recipes
    of that width (RTN, GPTQ, AWQ ... at 4 bits, say), so two models' lines part where
    one of them stops keeping its margin (4-bit was fine for 7B and hurt 1B).

    Args:
        cells: primary cells of one family with ``view`` (the model's title), ``bits_per_weight``,
            ``retained`` and ``verdict``; baseline rows are left out here.
        family: the task family, for the title.

    Example:
        >>> cells = pd.DataFrame([{"view": m, "bits_per_weight": b, "retained": r, "verdict": "lossless"}
        ...                       for m, b, r in (("1b", 4, 0.6), ("1b", 8, 1.0), ("7b", 4, 0.95), ("7b", 8, 1.0))])
        >>> [line.get_label() for line in retention_by_model(cells, "math").axes[0].get_lines()][:2]
        ['1b', '7b']
    """
    compared = cells[(cells["verdict"] != "baseline") & cells["retained"].notna() & cells["bits_per_weight"].notna()]
    per_width = (
        compared.groupby(["view", "bits_per_weight"], sort=False)["retained"]
        .mean()
        .reset_index()
        .sort_values("bits_per_weight", kind="stable")
    )
    figure = Figure(figsize=(4.6, 3.2))
    axes = figure.subplots()
    for index, view in enumerate(dict.fromkeys(compared["view"])):
        line = per_width[per_width["view"] == view]
        axes.plot(
            line["bits_per_weight"],
            line["retained"],
            marker=METHOD_MARKERS[index % len(METHOD_MARKERS)],
            linestyle="-",
            label=str(view),
        )
    _finish_retention_axes(
        axes, "mean retained margin above chance", f"{family}: models side by side", "model", per_width.empty
    )
    return figure


def _finish_retention_axes(axes, ylabel: str, title: str, legend_title: str, empty: bool) -> None:
    """The reference lines (full margin, chance), labels and legend every retention-vs-bits figure shares."""
    axes.axhline(1.0, color="#888888", linewidth=0.8, linestyle=":")
    axes.axhline(0.0, color="#a50026", linewidth=0.8, linestyle=":")
    axes.set_xlabel("bits per weight")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if not empty:
        axes.legend(fontsize=7, title=legend_title, title_fontsize=7)
    else:
        axes.text(0.5, 0.5, "no compared cells with a retention", transform=axes.transAxes, ha="center")
