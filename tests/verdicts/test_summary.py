"""summary.json: worst verdict per recipe and per (recipe, family), and the recipes that failed."""

from quantsweep.verdicts.summary import summarize_records


def test_summary_keeps_verdicts_and_failed_recipes():
    records = [
        {"recipe": "fp", "task": "toy_mc4", "verdict": "baseline", "primary": True, "output_type": "multiple_choice"},
        {"recipe": "w2", "task": "toy_mc4", "verdict": "degraded", "primary": True, "output_type": "multiple_choice"},
        {
            "recipe": "w2",
            "task": "toy_ppl",
            "verdict": "lossless",
            "primary": True,
            "output_type": "loglikelihood_rolling",
        },
        {
            "recipe": "w2",
            "task": "toy_ppl",
            "verdict": "collapsed",
            "primary": False,
            "output_type": "loglikelihood_rolling",
        },
        {"recipe": "bad", "task": "toy_mc4", "verdict": "error", "error": "RuntimeError: boom"},
        {"recipe": "bad", "task": "toy_ppl", "verdict": "error", "error": "RuntimeError: boom"},
    ]
    summary = summarize_records(records)
    assert set(summary["by_recipe"]) == {"w2"}  # the baseline has no verdict to summarize
    assert summary["by_recipe"]["w2"]["verdict"] == "degraded"  # worst primary verdict; non-primary rows ignored
    assert summary["by_family"]["w2/language_modelling"]["verdict"] == "lossless"
    assert summary["failed"] == {"bad": "RuntimeError: boom"}


def test_summary_gives_reasons_and_the_documents_an_inconclusive_cell_needs():
    records = [
        {"recipe": "w4", "task": "a", "verdict": "lossless", "primary": True, "family": "f", "reason": "fine"},
        {
            "recipe": "w4",
            "task": "b",
            "verdict": "inconclusive",
            "primary": True,
            "family": "f",
            "reason": "n = 4 < min_samples = 20; about 2,400 documents would decide",
            "documents_needed": 2400,
        },
        {
            "recipe": "w2",
            "task": "a",
            "verdict": "collapsed",
            "primary": True,
            "family": "f",
            "reason": "retention CI upper 0.08 <= 0.15",
        },
    ]
    summary = summarize_records(records)
    assert summary["reasons"] == {
        "w4/b": {"verdict": "inconclusive", "reason": "n = 4 < min_samples = 20; about 2,400 documents would decide"},
        "w2/a": {"verdict": "collapsed", "reason": "retention CI upper 0.08 <= 0.15"},
    }
    assert summary["documents_needed"] == {"w4/b": "inconclusive: about 2,400 documents would decide"}
