"""Helpers for the openpangu18 task YAML shipped with quantsweep (loaded by lm-eval's ``!function``).

* MATH: answer extraction and equivalence are lm-eval's own (``hendrycks_math``).
* HumanEval / MBPP: pass@1 scored by running each program in a fresh Python process
  with a time-out, inside quantsweep's sandbox (:mod:`quantsweep.eval.sandbox`: no
  network, an empty environment, resource limits, a private folder with nothing writable
  outside it, and every descendant killed; what the machine cannot give is warned about
  before the first program runs). lm-eval's own versions load the ``code_eval`` metric
  from the Hugging Face hub when imported, which cannot work offline.

Code execution is refused unless ``HF_ALLOW_CODE_EVAL=1`` (the convention of the
hub's ``code_eval`` metric), which ``quantsweep.eval.suites.check_code_execution``
sets only when the user opts in. The time-out in seconds per program comes from
``QUANTSWEEP_CODE_TIMEOUT_S`` (default 10 s), also set there.

Example:
    >>> run_program("assert 1 + 1 == 2", timeout_s=5.0)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os

from lm_eval.tasks.hendrycks_math import utils as _hendrycks_math

from quantsweep.eval.sandbox import default_sandbox

DEFAULT_CODE_TIMEOUT_S = 10.0  # per program; HF's code_eval uses 3 s, generous for slow CPUs


# ---------------------------------------------------------------- MATH


def math_process_docs(dataset):
    """Add the reference ``answer`` (the last ``\\boxed{...}`` of the solution), as lm-eval does."""
    return _hendrycks_math.process_docs(dataset)


def math_process_results(doc, results):
    """Exact match after lm-eval's MATH answer normalisation: ``{"exact_match": 0 or 1}``."""
    return _hendrycks_math.process_results(doc, results)


# ---------------------------------------------------------------- code execution


def code_timeout_s() -> float:
    """The per-program time-out in seconds (``QUANTSWEEP_CODE_TIMEOUT_S``, default 10).

    Example:
        >>> code_timeout_s() > 0
        True
    """
    raw = os.environ.get("QUANTSWEEP_CODE_TIMEOUT_S", "")
    if not raw:
        return DEFAULT_CODE_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"QUANTSWEEP_CODE_TIMEOUT_S must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"QUANTSWEEP_CODE_TIMEOUT_S must be > 0 seconds, got {raw!r}")
    return value


def run_program(program: str, timeout_s: float | None = None) -> bool:
    """Run ``program`` in the sandbox (a fresh ``python -I``); True when it exits with status 0.

    The program and everything it started are killed when it ends or at the time-out.
    Output is discarded.

    Raises:
        ValueError: code execution was not enabled (``HF_ALLOW_CODE_EVAL`` is not ``1``).

    Example:
        >>> run_program("raise SystemExit(1)", timeout_s=5.0)  # doctest: +SKIP
        False
    """
    if os.environ.get("HF_ALLOW_CODE_EVAL") != "1":
        raise ValueError(
            "refusing to execute model-written code: code execution was not enabled "
            "(pass --allow-code-execution / allow_code_execution=True)"
        )
    timeout_s = code_timeout_s() if timeout_s is None else timeout_s
    return default_sandbox().run(program, timeout_s=timeout_s).passed


def humaneval_process_results(doc, results):
    """pass@1 of one greedy HumanEval completion: prompt + completion + tests + ``check(entry_point)``."""
    program = f"{doc['prompt']}{results[0]}\n\n{doc['test']}\ncheck({doc['entry_point']})\n"
    return {"pass@1": 1.0 if run_program(program) else 0.0}


def _mbpp_code(completion: str) -> str:
    # The prompt ends in "[BEGIN]\n" and generation stops at "[DONE]"; keep what lies between.
    return completion.split("[DONE]")[0]


def mbpp_process_results(doc, results):
    """pass@1 of one greedy MBPP completion against the task's three asserts (and its setup code)."""
    setup = doc.get("test_setup_code") or ""
    tests = "\n".join(doc["test_list"])
    program = f"{setup}\n{_mbpp_code(results[0])}\n\n{tests}\n"
    return {"pass@1": 1.0 if run_program(program) else 0.0}


MBPP_FEWSHOT_TASK_IDS = (2, 3, 4)  # the prompt-split examples the MBPP paper and lm-eval use


def mbpp_fewshot_docs(dataset):
    """The three canonical few-shot examples, marked so ``doc_to_target`` shows their code."""
    wanted = dataset.filter(lambda doc: int(doc["task_id"]) in MBPP_FEWSHOT_TASK_IDS)
    if len(wanted) < len(MBPP_FEWSHOT_TASK_IDS):
        raise ValueError(
            f"mbpp few-shot examples need task ids {list(MBPP_FEWSHOT_TASK_IDS)} in the `prompt` split, "
            f"found {sorted(int(t) for t in wanted['task_id'])}"
        )
    wanted = wanted.sort("task_id")
    return wanted.map(lambda doc: {"is_fewshot": True})
