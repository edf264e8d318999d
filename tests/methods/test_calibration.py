"""Calibration data: sources, deterministic sampling, provenance, and clear errors."""

from __future__ import annotations

import json
import time

import pytest
import torch

from quantsweep.calibration import CalibrationData, load_calibration


class CharTokenizer:
    """One token per character (its code point mod 1000); enough to test windowing."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) % 1000 for c in text]}


TEXT = "".join(f"sentence {i} about the number {i * 7}. " for i in range(200))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_windows_come_from_the_text_and_are_deterministic(text_file):
    ids = torch.tensor(CharTokenizer()(TEXT)["input_ids"])
    a = load_calibration(text_file, CharTokenizer(), n_samples=6, seq_len=50, seed=3)
    b = load_calibration(str(text_file), CharTokenizer(), n_samples=6, seq_len=50, seed=3)
    c = load_calibration(text_file, CharTokenizer(), n_samples=6, seq_len=50, seed=4)
    assert a.input_ids.shape == (6, 50) and a.input_ids.dtype == torch.long
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids)
    # Each window is a contiguous slice of the tokenized text.
    for window in a.input_ids:
        starts = [s for s in range(len(ids) - 49) if torch.equal(ids[s : s + 50], window)]
        assert starts, "window is not a slice of the source"
    assert a.n_source_tokens == len(ids)


def test_window_starts_are_uniform(text_file):
    # Starts should be uniform over all valid offsets: chi-square against scipy.
    from scipy import stats

    ids = torch.arange(1000) % 1000
    tokenizer = lambda text, add_special_tokens=True: {"input_ids": ids.tolist()}  # noqa: E731
    data = load_calibration(text_file, tokenizer, n_samples=4000, seq_len=1, seed=0)
    counts = torch.bincount(data.input_ids.flatten() // 100, minlength=10).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


def test_jsonl_uses_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": "abcdefghij" * 3, "id": i}) for i in range(4)) + "\n")
    data = load_calibration(path, CharTokenizer(), n_samples=2, seq_len=20, seed=0)
    assert data.input_ids.shape == (2, 20)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(ValueError, match="'text' field"):
        load_calibration(bad, CharTokenizer(), n_samples=1, seq_len=1)


def test_provenance_records_protocol(text_file):
    data = load_calibration(text_file, CharTokenizer(), n_samples=3, seq_len=40, seed=7)
    prov = data.provenance()
    assert prov["source"] == str(text_file)
    assert (prov["n_samples"], prov["seq_len"], prov["seed"]) == (3, 40, 7)
    again = load_calibration(text_file, CharTokenizer(), n_samples=3, seq_len=40, seed=7)
    assert again.provenance()["fingerprint"] == prov["fingerprint"]
    json.dumps(prov)  # results store it as JSON


def test_too_short_text_and_bad_arguments(text_file, tmp_path):
    with pytest.raises(ValueError, match="fewer than seq_len=100000"):
        load_calibration(text_file, CharTokenizer(), n_samples=1, seq_len=100_000)
    with pytest.raises(ValueError, match="n_samples"):
        load_calibration(text_file, CharTokenizer(), n_samples=0, seq_len=10)
    with pytest.raises(ValueError, match="does not exist"):
        load_calibration(tmp_path / "missing.txt", CharTokenizer())
    with pytest.raises(ValueError, match="unknown calibration source 'wikitext'.*wikitext2"):
        load_calibration("wikitext", CharTokenizer())
    with pytest.raises(ValueError, match="shape"):
        CalibrationData(torch.zeros(2, 3, dtype=torch.long), "x", 2, 4, 0)


@pytest.mark.parametrize("source", ["wikitext2", "c4", "pile"])
def test_hub_dataset_offline_gives_clear_error_fast(source, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    start = time.monotonic()
    with pytest.raises(ValueError, match=rf"'{source}' could not be loaded.*local \.txt"):
        load_calibration(source, CharTokenizer(), n_samples=1, seq_len=8)
    assert time.monotonic() - start < 30


def test_toy_source():
    toy = pytest.importorskip("quantsweep.toy")
    if not hasattr(toy, "calibration_texts"):
        pytest.skip("quantsweep.toy.calibration_texts not available yet")
    data = load_calibration("toy", CharTokenizer(), n_samples=4, seq_len=64, seed=0)
    again = load_calibration("toy", CharTokenizer(), n_samples=4, seq_len=64, seed=0)
    assert data.input_ids.shape == (4, 64)
    assert torch.equal(data.input_ids, again.input_ids)
    assert data.n_source_tokens >= 4 * 64  # enough text that windows need not overlap
    assert data.provenance()["source"] == "toy"


def test_a_local_file_is_read_and_parsed_once_per_load(tmp_path, monkeypatch):
    import quantsweep.calibration as calibration

    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": "abcdefghij" * 3}) for _ in range(4)) + "\n")
    reads = []
    real = calibration.read_utf8
    monkeypatch.setattr(calibration, "read_utf8", lambda p: reads.append(p) or real(p))
    data = load_calibration(path, CharTokenizer(), n_samples=2, seq_len=20, seed=0)
    assert data.input_ids.shape == (2, 20)
    assert reads == [path]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff")
    with pytest.raises(ValueError, match=r"bad\.txt:2: not UTF-8 text"):
        load_calibration(bad, CharTokenizer(), n_samples=1, seq_len=1)
