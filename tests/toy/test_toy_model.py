"""The committed toy checkpoint: loads, knows its facts, and forgets them when binarized.

Evaluated with lm-eval itself, on the model in memory, on the first 200 toy_mc4 docs.
"""

import logging
from pathlib import Path

import pytest
import torch
from scipy.stats import binomtest

from quantsweep.toy import REQUIRED_FILES, TOY_MODEL_ID, calibration_texts, toy_model_dir

TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"
LIMIT = 200  # docs of toy_mc4; 50 entities x 4 attributes


def _load():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = toy_model_dir()
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(
        directory
    )


def _mc4_accuracy(model, tokenizer) -> float:
    import lm_eval
    import lm_eval.tasks
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=64)
    result = lm_eval.simple_evaluate(
        model=lm,
        tasks=["toy_mc4"],
        task_manager=lm_eval.tasks.TaskManager(include_path=str(TASKS_DIR)),
        limit=LIMIT,
        verbosity="ERROR",
    )
    return result["results"]["toy_mc4"]["acc,none"]


def test_committed_files_and_sizes():
    directory = toy_model_dir()
    assert TOY_MODEL_ID == "toy"
    for name in REQUIRED_FILES + ("PROVENANCE.md", "train_config.json"):
        assert (directory / name).is_file(), name
    for path in directory.iterdir():
        assert path.stat().st_size < 5 * 2**20, path  # every committed file under 5 MiB


def test_committed_weights_match_provenance():
    import hashlib

    directory = toy_model_dir()
    digest = hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()
    assert digest in (directory / "PROVENANCE.md").read_text()


@pytest.fixture(scope="module")
def fp_and_binary_accuracy():
    import quantsweep

    model, tokenizer = _load()
    fp = _mc4_accuracy(model, tokenizer)
    quantsweep.quantize(model, "w1-rtn")
    return fp, _mc4_accuracy(model, tokenizer)


def test_fp_model_knows_the_facts_and_binary_weights_forget_most_of_them(fp_and_binary_accuracy):
    fp, binary = fp_and_binary_accuracy
    assert fp >= 0.80
    assert binary <= 0.40
    # binary keeps at most a fifth of the fp model's accuracy above chance (1/4)
    assert (binary - 0.25) <= 0.2 * (fp - 0.25)


def test_binary_weights_are_near_chance(fp_and_binary_accuracy):
    _, binary = fp_and_binary_accuracy
    assert binary <= 0.35
    # near chance: not significantly above 1/4 at the 0.1 % level
    assert binomtest(round(binary * LIMIT), LIMIT, 0.25, alternative="greater").pvalue > 1e-3


def test_calibration_texts_are_deterministic_and_in_vocabulary():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(toy_model_dir())
    texts = calibration_texts(8, seed=0)
    assert texts == calibration_texts(8, seed=0)
    assert texts != calibration_texts(8, seed=1)
    assert calibration_texts(8, seed=0)[:3] == calibration_texts(3, seed=0)
    for text in texts:
        assert tok.unk_token_id not in tok.encode(text)
    with pytest.raises(ValueError, match="n_samples"):
        calibration_texts(-1)


def test_missing_assets_raise_a_clear_error(tmp_path, monkeypatch):
    import quantsweep.toy

    monkeypatch.setattr(quantsweep.toy, "ASSETS_DIR", tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors.*python -m quantsweep.toy.train"):
        toy_model_dir()
