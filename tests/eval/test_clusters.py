"""SampleOutcome.cluster: a suite entry's cluster_column, else the doc's subject, else the group's subtask."""

from __future__ import annotations

import pytest

from quantsweep.eval import harness, suites

ENTRY = {
    "task": "mytask",
    "family": "knowledge",
    "metric": "acc",
    "chance": "choices",
    "data": {"dir": "mytask", "splits": {"test": "test"}},
}


def _output(samples_by_task: dict, groups: dict | None = None) -> dict:
    """The parts of lm-eval's ``simple_evaluate`` output that ``_task_results`` reads."""
    return {
        "samples": samples_by_task,
        "group_subtasks": groups or {},
        "configs": {t: {"output_type": "multiple_choice", "metric_list": [{"metric": "acc"}]} for t in samples_by_task},
        "results": {t: {"acc,none": 0.5} for t in samples_by_task},
        "higher_is_better": {},
        "n-samples": {},
    }


def _sample(doc_id: int, doc: dict) -> dict:
    return {"doc_id": doc_id, "doc": doc, "acc": 1.0, "resps": [[(-1.0, False)], [(-2.0, False)]], "filter": "none"}


def test_subject_key_is_the_cluster():
    output = _output({"mmlu_all": [_sample(0, {"subject": "anatomy"}), _sample(1, {"subject": "virology"})]})
    samples = harness._task_results(output, tokenizer=None, generated_nonfinite=0)["mmlu_all"].samples
    assert [s.cluster for s in samples] == ["anatomy", "virology"]


def test_cluster_column_named_by_the_suite_entry_wins():
    entry = suites.suite_from_dict({"name": "s", "tasks": [dict(ENTRY, cluster_column="topic")]}).entry("mytask")
    output = _output({"mytask": [_sample(0, {"topic": "law", "subject": "x"}), _sample(1, {"topic": 7})]})
    samples = harness._task_results(output, None, 0, entry)["mytask"].samples
    assert [s.cluster for s in samples] == ["law", "7"]


def test_missing_cluster_column_is_an_error_naming_it():
    entry = suites.suite_from_dict({"name": "s", "tasks": [dict(ENTRY, cluster_column="topic")]}).entry("mytask")
    with pytest.raises(ValueError, match="cluster_column 'topic' is not a document column; columns: question"):
        harness._task_results(_output({"mytask": [_sample(0, {"question": "q"})]}), None, 0, entry)


def test_subtasks_of_a_group_are_their_documents_cluster():
    output = _output(
        {
            "mmlu_anatomy": [_sample(0, {"question": "q"})],
            "mmlu_virology": [_sample(0, {})],
            "arc_easy": [_sample(0, {})],
        },
        groups={"mmlu": ["mmlu_anatomy", "mmlu_virology"]},
    )
    found = harness._task_results(output, None, 0)
    assert found["mmlu_anatomy"].samples[0].cluster == "mmlu_anatomy"
    assert found["mmlu_virology"].samples[0].cluster == "mmlu_virology"
    assert found["arc_easy"].samples[0].cluster is None


def test_cluster_column_and_max_length_are_validated():
    with pytest.raises(suites.SuiteError, match="cluster_column must be a column name"):
        suites.suite_from_dict({"name": "s", "tasks": [dict(ENTRY, cluster_column="")]})
    with pytest.raises(suites.SuiteError, match="max_length must be an integer >= 2"):
        suites.suite_from_dict({"name": "s", "tasks": [dict(ENTRY, max_length=1)]})
