"""Result records as pandas DataFrames: the one place a report reads records from.

``load_records(DIR)`` reads a results folder; every table and plot of a report is
built from :func:`records_frame` of those records. Fields the sweep store adds
(``cell_key``, ``model_fingerprint``, ``status``, cost fields such as ``kernel`` or
``theoretical_bits_per_weight``) are optional: a missing one is an empty column.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "results.jsonl").write_text(json.dumps({"recipe": "fp", "task": "t", "verdict": "baseline"}))
    >>> records_frame(load_records(folder))[["recipe", "task", "verdict"]].values.tolist()
    [['fp', 't', 'baseline']]
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

RESULTS_FILE = "results.jsonl"

# Columns every frame has, in this order (others follow); records lacking one get None.
COLUMNS = (
    "model",
    "model_fingerprint",
    "recipe",
    "method",
    "bits_per_weight",
    "task",
    "family",
    "metric",
    "primary",
    "value",
    "stderr",
    "n",
    "verdict",
    "reason",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "retained",
    "chance",
    "interval",
    "documents_needed",
    "flips_right_to_wrong",
    "flips_wrong_to_right",
    "chance_reference",
    "chance_unigram_nats",
    "chance_uniform_nats",
    "cross_entropy_nats",
    "nonfinite_samples",
    "error",
    "status",
    "kernel",
    "theoretical_bits_per_weight",
    "stored_bytes",
    "peak_eval_bytes",
    "peak_eval_memory_kind",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
    "device",
    "dtype",
    # divergence from the baseline (quantsweep.eval.divergence) and the A/A control
    "divergence_kind",
    "divergence_n",
    "kl_mean",
    "kl_p99",
    "kl_stderr",
    "kl_lower",
    "top1_agreement",
    "prob_delta_mean",
    "divergence_error",
    "control",
    "aa_delta",
    "aa_flips",
    "aa_kl_mean",
    "aa_nonzero",
    "batch_size_used",
    "baseline_batch_size_used",
    "batch_size_mismatch",
)
NUMERIC = (
    "value",
    "stderr",
    "delta",
    "ci_low",
    "ci_high",
    "p_value",
    "retained",
    "chance",
    "bits_per_weight",
    "documents_needed",
    "flips_right_to_wrong",
    "flips_wrong_to_right",
    "chance_unigram_nats",
    "chance_uniform_nats",
    "cross_entropy_nats",
    "theoretical_bits_per_weight",
    "stored_bytes",
    "peak_eval_bytes",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
    "divergence_n",
    "kl_mean",
    "kl_p99",
    "kl_stderr",
    "kl_lower",
    "top1_agreement",
    "prob_delta_mean",
    "aa_delta",
    "aa_flips",
    "aa_kl_mean",
    "batch_size_used",
    "baseline_batch_size_used",
)
_DTYPE_BITS = {"float32": 32, "float64": 64, "bfloat16": 16, "float16": 16}


def load_records(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a results folder (its ``results.jsonl``), in file order.

    Records are read as they are: a report never judges nor rewrites a store. A store
    whose derived files may be stale (a run killed before its rebuild) is refreshed by
    the sweep layer first (:func:`quantsweep.load_results`, ``quantsweep report``).

    Raises:
        FileNotFoundError: the folder or its results file does not exist (the message says
            where it looked).
        ValueError: the file holds no records, or a line is not JSON.

    Example:
        >>> load_records("/nonexistent")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        FileNotFoundError: no results.jsonl in '/nonexistent' ...
    """
    folder = Path(results_dir)
    path = folder / RESULTS_FILE if folder.is_dir() or folder.suffix != ".jsonl" else folder
    if not path.is_file():
        raise FileNotFoundError(
            f"no {RESULTS_FILE} in {str(folder)!r} (looked for {str(path)!r}); run `quantsweep run --out DIR` first"
        )
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not a JSON record: {error}") from None
    if not records:
        raise ValueError(f"{str(path)!r} holds no result records")
    return records


def bits_per_weight(record: dict[str, Any]) -> float | None:
    """Bits per weight of a record's recipe: the recorded theoretical figure, else from its config.

    From the config: ``bits`` plus, with a ``group_size``, one 16-bit scale per group
    (and a 16-bit zero point when asymmetric); the unquantized model counts its dtype's
    bits. None when neither says.

    Example:
        >>> bits_per_weight({"recipe_config": {"method": "rtn", "bits": 4, "group_size": 128, "symmetric": False}})
        4.25
        >>> bits_per_weight({"recipe_config": {"method": "none"}, "dtype": "bfloat16"})
        16.0
        >>> bits_per_weight({"recipe_config": {"stages": [{"transform": "rotate"}, {"weight": "gptq", "bits": 4,
        ...                  "group_size": None}, {"activations": {"bits": 4}}]}})
        4.0
    """
    recorded = record.get("theoretical_bits_per_weight")
    if isinstance(recorded, (int, float)) and math.isfinite(recorded):
        return float(recorded)
    config = record.get("recipe_config") or {}
    if "stages" in config:  # a composed recipe: its weight stage's settings
        config = next((stage for stage in config["stages"] if "weight" in stage), {"method": "none"})
    bits = config.get("bits", config.get("weight_bits"))
    if isinstance(bits, (int, float)) and not isinstance(bits, bool):
        group = config.get("group_size")
        if isinstance(group, int) and group > 0:
            return float(bits) + (16.0 if config.get("symmetric", True) else 32.0) / group
        return float(bits)
    if config.get("method") == "none" and record.get("dtype") in _DTYPE_BITS:
        return float(_DTYPE_BITS[record["dtype"]])
    match = re.match(r"w(\d+)", str(record.get("recipe", "")))
    return float(match.group(1)) if match else None


def _method(record: dict[str, Any]) -> str:
    return (record.get("recipe_config") or {}).get("method") or "unknown"


def _number(value) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    if isinstance(value, str):
        try:
            return float(value)  # "inf", "nan" as the results store writes them
        except ValueError:
            return math.nan
    return float(value) if isinstance(value, (int, float)) else math.nan


def _cell(value):
    # nested mappings and lists (configs, diagnosis) become JSON text, so CSV and Parquet hold them
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per record, with the :data:`COLUMNS` first; nested fields as JSON text.

    Adds ``method`` (from the recipe config) and ``bits_per_weight`` (:func:`bits_per_weight`).

    Example:
        >>> frame = records_frame([{"recipe": "w4", "task": "t", "verdict": "lossless", "value": 0.5,
        ...                         "recipe_config": {"method": "rtn", "bits": 4}}])
        >>> frame.loc[0, "method"], float(frame.loc[0, "bits_per_weight"])
        ('rtn', 4.0)
    """
    if not records:
        raise ValueError("no records to tabulate")
    rows = []
    for record in records:
        row = {key: _cell(value) for key, value in record.items()}
        row["method"] = _method(record)
        row["bits_per_weight"] = bits_per_weight(record)
        rows.append(row)
    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    for column in NUMERIC:
        frame[column] = frame[column].map(_number).astype(float)
    frame["primary"] = frame["primary"].map(lambda v: bool(v) if v is not None and v == v else False)
    others = [c for c in frame.columns if c not in COLUMNS]
    return frame[list(COLUMNS) + others]


def primary_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The primary metric of every (recipe, task) cell, and the error rows of failed cells.

    Example:
        >>> primary_frame([{"recipe": "fp", "task": "t", "primary": True, "verdict": "baseline"},
        ...                {"recipe": "fp", "task": "t", "primary": False, "verdict": "baseline"}]).shape[0]
        1
    """
    frame = records_frame(records)
    return frame[frame["primary"] | (frame["verdict"] == "error")].reset_index(drop=True)
