"""The four toy lm-eval tasks load offline through lm-eval's TaskManager and build the right docs."""

import collections
from pathlib import Path

import pytest

from quantsweep.toy.tasks import gen_docs, mc_docs, ppl_docs
from quantsweep.toy.world import ATTRIBUTES, Fact, make_world, render_fact

TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"
TOY_TASKS = ("toy_mc4", "toy_mc2", "toy_gen", "toy_ppl")


@pytest.fixture(scope="module")
def loaded_tasks():
    import lm_eval.tasks

    manager = lm_eval.tasks.TaskManager(include_path=str(TASKS_DIR))
    return lm_eval.tasks.get_task_dict(list(TOY_TASKS), manager)


@pytest.mark.parametrize("name,n_choices,template", [("toy_mc4", 4, 0), ("toy_mc2", 2, 1)])
def test_multiple_choice_tasks(loaded_tasks, name, n_choices, template):
    task = loaded_tasks[name]
    assert task.OUTPUT_TYPE == "multiple_choice"
    docs = list(task.test_docs())
    assert len(docs) == 1600  # one doc per fact
    world = make_world()
    facts = {(f.entity, f.attribute): f.value for f in world.facts}
    for doc in docs[:200]:
        choices = task.doc_to_choice(doc)
        assert choices == doc["choices"] and len(set(choices)) == n_choices
        gold = task.doc_to_target(doc)
        assert choices[gold] == facts[(doc["entity"], doc["attribute"])]
        assert set(choices) <= set(ATTRIBUTES[doc["attribute"]][0])
        # what lm-eval will score: context, then " value"
        scored = task.doc_to_text(doc) + task.config.target_delimiter + choices[gold] + " ."
        assert scored == render_fact(Fact(doc["entity"], doc["attribute"], choices[gold]), template)


def test_gold_positions_are_spread_out():
    for n_choices in (2, 4):
        counts = collections.Counter(doc["gold"] for doc in mc_docs(n_choices))
        assert set(counts) == set(range(n_choices))
        assert min(counts.values()) > 0.8 * 1600 / n_choices


def test_generation_task(loaded_tasks):
    task = loaded_tasks["toy_gen"]
    assert task.OUTPUT_TYPE == "generate_until"
    docs = list(task.test_docs())
    assert len(docs) == 200
    assert task.doc_to_target(docs[0]) == docs[0]["answer"] and docs[0]["answer"].startswith(" ")
    until = task.config.generation_kwargs["until"]
    assert "\n" in until and " ." in until
    assert docs == gen_docs()


def test_perplexity_task(loaded_tasks):
    task = loaded_tasks["toy_ppl"]
    assert task.OUTPUT_TYPE == "loglikelihood_rolling"
    docs = list(task.test_docs())
    assert len(docs) == 80
    assert task.doc_to_target(docs[0]) == docs[0]["text"] == ppl_docs(1)[0]["text"]
    metrics = {m["metric"] for m in task.config.metric_list}
    assert metrics == {"word_perplexity", "byte_perplexity", "bits_per_byte"}


def test_docs_are_deterministic():
    assert mc_docs(4) == mc_docs(4)
    assert ppl_docs(3) == ppl_docs(3)
    with pytest.raises(ValueError, match="n_choices"):
        mc_docs(9)


def test_task_metadata_selects_another_world():
    import lm_eval.tasks

    manager = lm_eval.tasks.TaskManager(include_path=str(TASKS_DIR), metadata={"n_entities": 10})
    task = lm_eval.tasks.get_task_dict(["toy_mc4"], manager)["toy_mc4"]
    docs = list(task.test_docs())
    assert len(docs) == 10 * len(ATTRIBUTES)
    assert {doc["entity"] for doc in docs} == set(make_world(n_entities=10).entities)


def test_multiple_choice_docs_are_capped():
    docs = mc_docs(4, n_entities=1000)
    assert len(docs) == 1600
    assert docs == mc_docs(4, n_entities=1000, max_docs=4000)[:1600]
