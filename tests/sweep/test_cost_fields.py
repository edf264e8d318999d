"""Every cell records what its recipe costs: kernel, theoretical bits, bytes, peak memory; speed when asked."""

import pytest
from helpers.sweeps import toy_spec

from quantsweep.sweep.api import run_sweep


def test_cells_carry_cost_fields_and_fake_quant_is_labelled(tmp_path):
    pytest.importorskip("bitsandbytes")
    result = run_sweep(
        toy_spec(recipes=["w8-bnb", "w4-rtn"], tasks=["toy_mc4"], limit=30, measure=True), tmp_path, progress=False
    )
    rows = {r["recipe"]: r for r in result.records if r["primary"]}
    assert {r: rows[r]["kernel"] for r in rows} == {"fp": "none", "w8-bnb": "bitsandbytes", "w4-rtn": "fake-quant"}
    for row in rows.values():
        assert row["peak_eval_bytes"] > 0 and row["peak_eval_memory_kind"] == "process_rss"
        assert row["theoretical_bits_per_weight"] > 0 and row["stored_bytes"] > 0
    assert rows["fp"]["theoretical_bits_per_weight"] == 32.0
    assert rows["w8-bnb"]["stored_bytes"] < rows["fp"]["stored_bytes"]  # real int8 modules in memory
    assert rows["w4-rtn"]["stored_bytes"] == rows["fp"]["stored_bytes"]  # fake-quant floats: the fp model's
    for name in ("fp", "w8-bnb"):
        assert rows[name]["speed_measured"] and rows[name]["prefill_tokens_per_s"] > 0
        assert rows[name]["decode_tokens_per_s"] > 0 and rows[name]["speed_device"] == "cpu"
    assert rows["w4-rtn"]["speed_measured"] is False and rows["w4-rtn"].get("prefill_tokens_per_s") is None
    assert "fp model's" in rows["w4-rtn"]["speed_note"]
