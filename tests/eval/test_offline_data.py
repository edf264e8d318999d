"""The openpangu18 tasks run offline from a --data-dir of small files in the public datasets' formats.

Every file written here uses the public dataset's own column names and one of the
formats it ships in (JSON Lines, JSON, gzipped JSON Lines, parquet, hub-style
parquet shards, CSV). A tiny random Llama with a byte-level tokenizer evaluates each
task with ``limit=3``: the point is that the tasks RUN with no network and that the
per-sample outputs (choice counts, token counts) come from these files, not the scores.
Network access is blocked for the whole module, so any attempt to reach the hub fails.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
from helpers.suite_data import (
    ARC_CHOICES,
    MMLU_SUBJECTS,
    _write_csv,
    _write_jsonl,
    tiny_model_and_tokenizer,
    write_suite_data,
)

import quantsweep
from quantsweep import hub
from quantsweep.eval import offline, suites
from quantsweep.verdicts.chance import chance_level


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Any socket connection attempt fails: the evaluation must not touch the network."""
    original = socket.socket.connect

    def refuse(self, address, *args, **kwargs):
        if self.family == socket.AF_UNIX:
            return original(self, address, *args, **kwargs)
        raise OSError(f"network disabled in this test (attempted {address!r})")

    socket.socket.connect = refuse
    yield
    socket.socket.connect = original


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_suite_data(tmp_path_factory.mktemp("suite_data"))


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.set_num_threads(1)
    return tiny_model_and_tokenizer()


NON_CODE_TASKS = [name for name in suites.expand_tasks(["openpangu18"]) if not suites.suite_entry(name).executes_code]
CODE_TASKS = ["humaneval_offline", "mbpp_offline"]


@pytest.fixture(scope="module")
def offline_result(data_dir, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    configs = offline.local_task_configs(NON_CODE_TASKS, data_dir)
    return quantsweep.evaluate(model, tokenizer, tasks=NON_CODE_TASKS, task_configs=configs, limit=3, batch_size=4)


# ---------------------------------------------------------------- the suite runs offline


def test_all_sixteen_non_code_tasks_run_offline(offline_result):
    assert sorted(offline_result.tasks) == sorted(NON_CODE_TASKS)
    for name, task in offline_result.tasks.items():
        entry = suites.suite_entry(name)
        assert entry.metric in task.metrics, (name, sorted(task.metrics))
        assert task.metrics[entry.metric].n == 3, name
        assert {s.doc_id for s in task.samples} == {0, 1, 2}, name


def test_output_types_cover_perplexity_choice_and_generation(offline_result):
    types = {name: task.output_type for name, task in offline_result.tasks.items()}
    assert types["wikitext"] == types["c4"] == "loglikelihood_rolling"
    assert types["lambada_openai"] == "loglikelihood"
    assert types["gsm8k"] == types["math_all"] == "generate_until"
    for name in (
        "arc_easy",
        "arc_challenge",
        "hellaswag",
        "piqa",
        "winogrande",
        "boolq",
        "openbookqa",
        "social_iqa",
        "mmlu_all",
        "ceval_all",
        "cmmlu_all",
    ):
        assert types[name] == "multiple_choice", name


def test_choice_counts_come_from_the_data(offline_result):
    expected = {
        "arc_easy": ARC_CHOICES[:3],
        "arc_challenge": ARC_CHOICES[:3],
        "hellaswag": [4] * 3,
        "piqa": [2] * 3,
        "winogrande": [2] * 3,
        "boolq": [2] * 3,
        "openbookqa": [4] * 3,
        "social_iqa": [3] * 3,
        "mmlu_all": [4] * 3,
        "ceval_all": [4] * 3,
        "cmmlu_all": [4] * 3,
    }
    for name, counts in expected.items():
        samples = sorted(offline_result.tasks[name].samples, key=lambda s: s.doc_id)
        assert [s.n_choices for s in samples] == counts, name


def test_perplexity_tasks_record_the_suite_window_and_the_unigram_chance(offline_result):
    for task in ("wikitext", "c4"):
        assert offline_result.tasks[task].max_length == 2048  # the suite's window (the model has 4096 positions)
        assert offline_result.tasks[task].unigram_chance_nats > 0
    assert offline_result.tasks["piqa"].unigram_chance_nats is None


def test_subject_columns_become_each_documents_cluster(offline_result):
    mmlu = offline_result.tasks["mmlu_all"].samples
    assert [s.cluster for s in mmlu] == [MMLU_SUBJECTS[s.doc_id % 2] for s in mmlu]
    assert {s.cluster for s in offline_result.tasks["cmmlu_all"].samples} == {"农学"}
    assert all(s.cluster is None for s in offline_result.tasks["arc_easy"].samples)  # no subject: no cluster


def test_perplexity_samples_report_token_counts_of_the_local_text(offline_result, model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    task = offline_result.tasks["c4"]
    first = min(task.samples, key=lambda s: s.doc_id)
    text = "Beginners BBQ class number 0 is taking place in Missoula!"
    assert first.n_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"]) == len(text.encode())
    assert all(s.n_tokens and s.n_tokens > 0 for s in offline_result.tasks["wikitext"].samples)
    assert all(not s.nonfinite for s in task.samples)


def test_local_configs_keep_lm_eval_prompts_and_swap_only_the_data(data_dir):
    configs = offline.local_task_configs(["arc_easy", "c4", "gsm8k"], data_dir)
    arc = configs["arc_easy"]
    assert arc["dataset_path"] == "parquet" and arc["dataset_name"] is None
    assert arc["dataset_kwargs"] == {
        "data_files": {"test": [str(data_dir / "arc_easy" / "test-00000-of-00001.parquet")]}
    }
    assert arc["doc_to_text"] == "Question: {{question}}\nAnswer:"  # lm-eval's prompt, untouched
    assert arc["validation_split"] is None and arc["training_split"] is None and arc["test_split"] == "test"
    assert configs["c4"]["dataset_path"] == "json" and "verification_mode" not in configs["c4"]["dataset_kwargs"]
    gsm = configs["gsm8k"]
    assert gsm["num_fewshot"] == 5 and gsm["fewshot_split"] == "train"
    assert set(gsm["dataset_kwargs"]["data_files"]) == {"test", "train"}


# ---------------------------------------------------------------- missing data, errors


def test_missing_data_errors_up_front_naming_task_files_and_folder(tmp_path):
    (tmp_path / "arc_easy").mkdir()
    start = time.monotonic()
    with pytest.raises(offline.MissingDataError) as info:
        offline.local_task_configs(["arc_easy", "gsm8k"], tmp_path)
    assert time.monotonic() - start < 5.0  # no hub retries, no time-outs
    message = str(info.value)
    assert "arc_easy" in message and "gsm8k" in message
    assert "test{.jsonl,.json" in message and "train{" in message
    assert str(tmp_path / "arc_easy") in message and str(tmp_path / "gsm8k") in message


def test_missing_data_error_reaches_the_caller_before_any_model_work(tmp_path):
    with pytest.raises(ValueError, match="hellaswag"):
        offline.local_task_configs(["openpangu18"], tmp_path)


def test_wrong_columns_are_named(tmp_path):
    _write_jsonl(
        tmp_path / "piqa" / "validation.jsonl", [{"goal": "g", "solution1": "a", "solution2": "b", "label": 0}]
    )
    with pytest.raises(offline.MissingDataError, match="lacks column\\(s\\) sol1, sol2"):
        offline.local_task_configs(["piqa"], tmp_path)


def test_two_formats_for_one_split_is_ambiguous(tmp_path):
    _write_jsonl(tmp_path / "boolq" / "validation.jsonl", [{"question": "q", "passage": "p", "label": 0}])
    _write_csv(tmp_path / "boolq" / "validation.csv", [{"question": "q", "passage": "p", "label": 0}])
    with pytest.raises(offline.MissingDataError, match="several candidate files"):
        offline.local_task_configs(["boolq"], tmp_path)


def test_data_dir_must_exist(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        offline.local_task_configs(["piqa"], tmp_path / "nope")


def test_tasks_outside_suites_are_left_to_lm_eval(tmp_path):
    assert offline.local_task_configs(["toy_mc4"], tmp_path) == {}


# ---------------------------------------------------------------- hub mirror


def test_user_hf_endpoint_is_kept_and_missing_data_falls_back_to_the_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.user.example")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    configs = offline.local_task_configs(["piqa"], tmp_path, hub_endpoint="https://other.example")
    assert os.environ["HF_ENDPOINT"] == "https://mirror.user.example"
    assert configs == {}  # no override: piqa loads from the hub, through the user's mirror
    assert hub.effective_hub_endpoint("https://other.example") == "https://mirror.user.example"


def test_mirror_is_not_used_when_the_hub_is_marked_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://mirror.user.example")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(offline.MissingDataError, match="piqa"):
        offline.local_task_configs(["piqa"], tmp_path)


def test_hub_endpoint_argument_sets_the_mirror_when_the_user_did_not(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", huggingface_hub.constants.ENDPOINT)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", datasets.config.HF_ENDPOINT)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", datasets.config.HUB_DATASETS_URL)
    assert hub.use_hub_mirror("https://hf-mirror.example/") == "https://hf-mirror.example"
    assert os.environ["HF_ENDPOINT"] == "https://hf-mirror.example"
    assert huggingface_hub.constants.ENDPOINT == "https://hf-mirror.example"
    assert datasets.config.HUB_DATASETS_URL.startswith("https://hf-mirror.example/datasets/")
    with pytest.raises(ValueError, match="http"):
        hub.use_hub_mirror("hf-mirror.example")


# ---------------------------------------------------------------- code tasks


def test_code_tasks_refuse_without_the_opt_in(monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(ValueError, match="humaneval_offline, mbpp_offline.*allow-code-execution"):
        offline.check_code_execution(["openpangu18"], allow=False)
    with pytest.raises(ValueError, match="humaneval"):
        offline.check_code_execution(["humaneval"], allow=False)  # lm-eval's own code task too
    assert offline.check_code_execution(["arc_easy", "toy_mc4"], allow=False) == []
    assert "HF_ALLOW_CODE_EVAL" not in os.environ


def test_opt_in_enables_execution_with_a_time_out(monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    monkeypatch.delenv("QUANTSWEEP_CODE_TIMEOUT_S", raising=False)
    assert offline.check_code_execution(["mbpp_offline"], allow=True, timeout_s=2.5) == ["mbpp_offline"]
    assert os.environ["HF_ALLOW_CODE_EVAL"] == "1"
    assert os.environ["QUANTSWEEP_CODE_TIMEOUT_S"] == "2.5"
    with pytest.raises(ValueError, match="timeout_s"):
        offline.check_code_execution(["mbpp_offline"], allow=True, timeout_s=0)


def _code_utils():
    import importlib.util

    path = Path(suites.TASKS_DIR) / "openpangu18" / "utils.py"
    spec = importlib.util.spec_from_file_location("openpangu18_task_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_executor_refuses_without_opt_in_and_kills_programs_that_run_too_long(monkeypatch):
    utils = _code_utils()
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(ValueError, match="not enabled"):
        utils.run_program("print(1)")
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    assert utils.run_program("assert sum([1, 2]) == 3", timeout_s=20.0) is True
    assert utils.run_program("assert 1 == 2", timeout_s=20.0) is False
    start = time.monotonic()
    assert utils.run_program("while True:\n    pass\n", timeout_s=0.5) is False
    assert time.monotonic() - start < 10.0
    doc = {"prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(2, 3) == 5\n", "entry_point": "add"}
    assert utils.humaneval_process_results(doc, ["    return a + b\n"]) == {"pass@1": 1.0}
    assert utils.humaneval_process_results(doc, ["    return a * b\n"]) == {"pass@1": 0.0}
    mbpp = {"test_list": ["assert add(1, 2) == 3"], "test_setup_code": ""}
    assert utils.mbpp_process_results(mbpp, ["def add(a, b):\r\n  return a + b\n[DONE]"]) == {"pass@1": 1.0}


def test_code_tasks_run_offline_with_the_opt_in(data_dir, model_and_tokenizer, monkeypatch):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    model, tokenizer = model_and_tokenizer
    offline.check_code_execution(CODE_TASKS, allow=True, timeout_s=5.0)
    configs = offline.local_task_configs(CODE_TASKS, data_dir)
    result = quantsweep.evaluate(
        model, tokenizer, tasks=CODE_TASKS, task_configs=configs, limit=2, allow_code_execution=True
    )
    for name in CODE_TASKS:
        task = result.tasks[name]
        assert task.output_type == "generate_until"
        assert task.metrics["pass@1"].n == 2
        assert task.metrics["pass@1"].value == 0.0  # random weights never write a passing program


# ---------------------------------------------------------------- chance levels from the data


def test_chance_levels_are_computed_from_the_evaluated_samples(offline_result, model_and_tokenizer):
    model, _ = model_and_tokenizer
    vocab = model.config.vocab_size
    # ARC docs 0-2 have 4, 3 and 5 options: mean(1/4, 1/3, 1/5), not a hard-coded 1/4.
    assert chance_level(offline_result.tasks["arc_easy"]) == pytest.approx((1 / 4 + 1 / 3 + 1 / 5) / 3)
    assert chance_level(offline_result.tasks["piqa"]) == pytest.approx(0.5)
    assert chance_level(offline_result.tasks["social_iqa"]) == pytest.approx(1 / 3)
    assert chance_level(offline_result.tasks["gsm8k"]) == 0.0
    assert chance_level(offline_result.tasks["lambada_openai"]) == 0.0
    assert chance_level(offline_result.tasks["wikitext"], vocab_size=vocab) == float(vocab)
    with pytest.raises(ValueError, match="needs vocab_size"):
        chance_level(offline_result.tasks["c4"])
