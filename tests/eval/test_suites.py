"""The openpangu18 suite file and suite YAML validation."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from quantsweep.eval import suites
from quantsweep.verdicts.chance import chance_level, chance_rule

EXPECTED = {
    "language_modelling": {"wikitext", "c4"},
    "commonsense_reasoning": {
        "arc_easy",
        "arc_challenge",
        "hellaswag",
        "piqa",
        "winogrande",
        "boolq",
        "openbookqa",
        "social_iqa",
        "lambada_openai",
    },
    "knowledge": {"mmlu_all", "ceval_all", "cmmlu_all"},
    "math": {"gsm8k", "math_all"},
    "code": {"humaneval_offline", "mbpp_offline"},
}

MINIMAL_ENTRY = {
    "task": "piqa",
    "family": "commonsense_reasoning",
    "metric": "acc",
    "chance": "choices",
    "data": {"dir": "piqa", "splits": {"validation": "validation"}},
}


def _write_suite(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_openpangu18_has_the_eighteen_tasks_in_five_families():
    suite = suites.load_suite("openpangu18")
    assert len(suite.tasks) == 18
    by_family: dict[str, set[str]] = {}
    for entry in suite.tasks:
        by_family.setdefault(entry.family, set()).add(entry.task)
    assert by_family == EXPECTED
    assert Counter(e.family for e in suite.tasks) == {
        "language_modelling": 2,
        "commonsense_reasoning": 9,
        "knowledge": 3,
        "math": 2,
        "code": 2,
    }


def test_every_entry_has_metric_fewshot_chance_version_and_data():
    for entry in suites.load_suite("openpangu18").tasks:
        assert entry.metric and entry.version and entry.data.splits and entry.data.columns, entry.task
        expected_rule = {"language_modelling": "uniform_vocab"}.get(entry.family)
        if entry.family in ("math", "code") or entry.task == "lambada_openai":
            expected_rule = "zero"
        elif entry.family in ("commonsense_reasoning", "knowledge"):
            expected_rule = "choices"
        assert entry.chance == expected_rule, entry.task
        assert entry.executes_code == (entry.family == "code"), entry.task


def test_entries_agree_with_the_lm_eval_task_they_run():
    """Metric, few-shot count and data splits match the resolved lm-eval config (online and offline alike)."""
    for entry in suites.load_suite("openpangu18").tasks:
        config = suites.lm_eval_task_config(entry)
        metrics = [m["metric"] for m in config["metric_list"]]
        assert entry.metric in metrics, (entry.task, metrics)
        from lm_eval.tasks._yaml_loader import load_yaml

        raw = load_yaml(suites.lm_eval_task_yaml(entry), resolve_func=False)
        assert raw.get("num_fewshot", 0) == entry.num_fewshot, entry.task
        eval_split = config.get("test_split") or config.get("validation_split")
        assert eval_split in entry.data.splits, entry.task
        if entry.num_fewshot and config.get("fewshot_split"):
            assert config["fewshot_split"] in entry.data.splits, entry.task
        if entry.metric_filter is not None:
            assert entry.metric_filter in [f["name"] for f in config["filter_list"]], entry.task
        assert bool(config.get("unsafe_code")) == entry.executes_code, entry.task


def test_expand_tasks_and_suite_entry():
    names = suites.expand_tasks(["toy_mc4", "openpangu18", "arc_easy"])
    assert names[0] == "toy_mc4" and len(names) == 19 and names.count("arc_easy") == 1
    assert suites.expand_tasks("openpangu18,toy_ppl")[-1] == "toy_ppl"
    assert suites.suite_entry("gsm8k").num_fewshot == 5
    assert suites.suite_entry("not_a_task") is None
    assert "openpangu18" in suites.list_suites()


def test_suite_yaml_is_not_an_lm_eval_task():
    """The suite file lives under tasks/ but lm-eval's task index must skip it and create no bogus task."""
    from lm_eval.tasks._index import TaskIndex

    index = TaskIndex.build([suites.TASKS_DIR])
    assert "openpangu18" not in index
    sources = {str(entry.yaml_path) for entry in index.values() if entry.yaml_path}
    assert not any("/suites/" in source for source in sources)
    for name in ("mmlu_all", "ceval_all", "cmmlu_all", "math_all", "humaneval_offline", "mbpp_offline", "toy_mc4"):
        assert name in index, name


def test_user_suite_file_loads_and_registers_its_tasks(tmp_path):
    path = _write_suite(tmp_path / "mine.yaml", {"name": "mine", "tasks": [dict(MINIMAL_ENTRY, task="piqa")]})
    suite = suites.load_suite(str(path))
    assert suite.task_names() == ["piqa"] and suite.tasks[0].lm_eval_task == "piqa"
    assert suite.tasks[0].num_fewshot == 0 and suite.tasks[0].version == 1
    assert suites.expand_tasks([str(path)]) == ["piqa"]


def test_unknown_key_is_named_with_the_allowed_keys(tmp_path):
    bad = dict(MINIMAL_ENTRY, num_fewshots=5)
    path = _write_suite(tmp_path / "typo.yaml", {"name": "typo", "tasks": [bad]})
    with pytest.raises(suites.SuiteError) as info:
        suites.load_suite(str(path))
    message = str(info.value)
    assert "'num_fewshots'" in message and "num_fewshot" in message and "allowed keys" in message
    assert str(path.resolve()) in message


def test_unknown_key_at_top_level_and_in_data(tmp_path):
    path = _write_suite(tmp_path / "top.yaml", {"name": "t", "tasks": [MINIMAL_ENTRY], "owner": "me"})
    with pytest.raises(ValueError, match="unknown key 'owner'.*allowed keys: name, description, version, tasks"):
        suites.load_suite(str(path))
    entry = dict(MINIMAL_ENTRY, data={"dir": "piqa", "splits": {"validation": "validation"}, "format": "csv"})
    path = _write_suite(tmp_path / "data.yaml", {"name": "t", "tasks": [entry]})
    with pytest.raises(ValueError, match="tasks\\[0\\] \\('piqa'\\).data: unknown key 'format'"):
        suites.load_suite(str(path))


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"family": "reasoning"}, "unknown family 'reasoning'; allowed: language_modelling"),
        ({"chance": "uniform"}, "unknown chance rule 'uniform'; allowed: choices, zero, uniform_vocab"),
        ({"num_fewshot": -1}, "num_fewshot must be an integer >= 0"),
        ({"chance_floor": 0.5}, "chance_floor only applies to chance: zero"),
        ({"executes_code": "yes"}, "executes_code must be true or false"),
        ({"data": {"dir": "../x", "splits": {"test": "test"}}}, "relative folder"),
        ({"data": {"dir": "x", "splits": {}}}, "data.splits must map"),
    ],
)
def test_bad_values_are_rejected(tmp_path, change, pattern):
    path = _write_suite(tmp_path / "bad.yaml", {"name": "bad", "tasks": [dict(MINIMAL_ENTRY, **change)]})
    with pytest.raises(suites.SuiteError, match=pattern):
        suites.load_suite(str(path))


def test_missing_required_key_duplicate_task_and_malformed_file(tmp_path):
    entry = {k: v for k, v in MINIMAL_ENTRY.items() if k != "metric"}
    with pytest.raises(suites.SuiteError, match="missing required key\\(s\\) metric"):
        suites.load_suite(str(_write_suite(tmp_path / "a.yaml", {"name": "a", "tasks": [entry]})))
    with pytest.raises(suites.SuiteError, match="lists task\\(s\\) piqa more than once"):
        suites.load_suite(str(_write_suite(tmp_path / "b.yaml", {"name": "b", "tasks": [MINIMAL_ENTRY] * 2})))
    broken = tmp_path / "c.yaml"
    broken.write_text("name: c\ntasks: [\n", encoding="utf-8")
    with pytest.raises(suites.SuiteError, match=f"{broken.resolve()}: malformed suite YAML"):
        suites.load_suite(str(broken))


def test_unknown_suite_name_suggests_the_closest():
    with pytest.raises(suites.SuiteError, match="unknown suite 'openpangu17' \\(did you mean openpangu18\\?\\)"):
        suites.load_suite("openpangu17")
    with pytest.raises(suites.SuiteError, match="does not exist"):
        suites.load_suite("nowhere/suite.yaml")


def test_entry_to_dict_round_trips_through_validation():
    entry = suites.suite_entry("mbpp_offline")
    data = entry.to_dict()
    rebuilt = suites.suite_from_dict({"name": "x", "tasks": [data]}).tasks[0]
    assert rebuilt == entry


def test_chance_rule_from_suite_or_output_type():
    assert chance_rule("wikitext") == ("uniform_vocab", 0.0)
    assert chance_rule("mbpp_offline") == ("zero", 0.0)
    assert chance_rule("toy_mc4", "multiple_choice") == ("choices", 0.0)
    assert chance_rule("toy_gen", "generate_until") == ("zero", 0.0)
    with pytest.raises(ValueError, match="no chance rule"):
        chance_rule("toy_x", "something_else")


def test_chance_floor_is_recorded_for_exact_match_tasks(tmp_path):
    entry = dict(MINIMAL_ENTRY, task="yesno_em", chance="zero", chance_floor=0.5, metric="exact_match")
    path = _write_suite(tmp_path / "floor.yaml", {"name": "floor", "tasks": [entry]})
    suites.load_suite(str(path))
    from quantsweep.eval.harness import TaskResult

    result = TaskResult("yesno_em", "generate_until", {}, [], 0, 0)
    assert chance_rule("yesno_em") == ("zero", 0.5)
    assert chance_level(result) == 0.5


def test_multiple_choice_chance_needs_choice_counts():
    from quantsweep.eval.harness import SampleOutcome, TaskResult

    result = TaskResult("piqa", "multiple_choice", {}, [SampleOutcome(0, {}, n_choices=None)], 0, 0)
    with pytest.raises(ValueError, match="n_choices"):
        chance_level(result)
