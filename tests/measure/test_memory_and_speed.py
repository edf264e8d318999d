"""PeakMemory sees an allocation on CPU; measure_speed reports medians, spread and where it ran."""

from __future__ import annotations

import statistics

import pytest
import torch

import quantsweep
from quantsweep.measure.memory import PeakMemory
from quantsweep.measure.speed import measure_speed


def test_peak_rss_sees_a_large_allocation_and_resets():
    with PeakMemory("cpu") as small:
        pass
    with PeakMemory("cpu") as big:
        block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        del block
    assert small.kind == big.kind == "process_rss"
    assert big.peak_bytes - small.peak_bytes >= 60 * 1024 * 1024 if big.reset else big.peak_bytes > 0
    assert big.eval_fields() == {"peak_eval_bytes": big.peak_bytes, "peak_eval_memory_kind": "process_rss"}


def test_speed_record_is_consistent():
    model, tokenizer = quantsweep.load_model("toy", device="cpu")
    record = measure_speed(model, tokenizer, prompt_tokens=32, new_tokens=4, repeats=3, warmup=1)
    for phase in ("prefill", "decode"):
        rates = record[f"{phase}_tokens_per_s_all"]
        assert len(rates) == 3 and all(r > 0 for r in rates)
        assert record[f"{phase}_tokens_per_s"] == statistics.median(rates)
        assert (
            record[f"{phase}_tokens_per_s_min"]
            <= record[f"{phase}_tokens_per_s"]
            <= record[f"{phase}_tokens_per_s_max"]
        )
        spread = (max(rates) - min(rates)) / statistics.median(rates)
        assert record[f"{phase}_relative_spread"] == pytest.approx(spread)
    assert record["device"] == "cpu" and record["threads"] == torch.get_num_threads()
    assert (record["prompt_tokens"], record["new_tokens"], record["batch_size"]) == (32, 4, 1)


def test_bad_speed_settings_are_refused_before_timing():
    model, tokenizer = quantsweep.load_model("toy", device="cpu")
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings 512"):
        measure_speed(model, tokenizer, prompt_tokens=512, new_tokens=128)
    with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
        measure_speed(model, tokenizer, repeats=0)
