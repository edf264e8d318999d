"""How verdicts are decided.

Every (recipe, task) cell gets exactly one verdict. A verdict never claims more
than the data support: when the numbers could go either way, it says
`inconclusive`.

| verdict        | meaning                                                                 |
|----------------|-------------------------------------------------------------------------|
| `baseline`     | the unquantized reference model itself                                  |
| `lossless`     | the drop from the baseline is shown to be within a tolerance            |
| `degraded`     | significantly worse than the baseline, by more than the tolerance allows |
| `inconclusive` | too few documents, or too much noise, to say which                      |
| `collapsed`    | at or near chance level: the quantized model has stopped working        |
| `non-finite`   | NaN or Inf in the logits, log-likelihoods or the metric                 |
| `error`        | the recipe failed: there is no result to judge, the record holds the error |

## Inputs

Verdicts are computed from per-document results, paired by document: the
quantized model and the baseline must be scored on the same documents in the
same order.

- Accuracy tasks (`judge_accuracy`): one 0/1 correctness value per document.
- Perplexity tasks (`judge_perplexity`): per document, the summed negative
  log-likelihood in nats and the number of tokens it is summed over. Corpus
  cross-entropy is `CE = sum(NLL) / sum(tokens)` nats per token and perplexity
  is `exp(CE)`.
- Any other per-document score (`judge_scores`), such as exact match, with a
  flag saying whether higher is better. Metrics that lm-eval scores on the
  whole corpus (F1, MCC, BLEU log a (reference, prediction) pair per document)
  have no per-document number to pair, so they are `inconclusive`.
- The `perplexity` of a `loglikelihood` task such as LAMBADA: lm-eval logs each
  document's log-likelihood of the continuation and reports `exp(-mean)`. The
  mean log-likelihood is judged as a score (higher is better) with a tolerance
  of `log(1 + perplexity_relative_tolerance)` nats, which is exactly a
  perplexity increase of that relative tolerance; `delta` is in nats per
  document, and there is no chance level (no collapse check).

Chance levels come from the data: multiple choice uses the mean over documents
of `1 / number_of_choices`. Exact-match generation uses 0, or a documented
floor. Perplexity uses `chance_cross_entropy` nats per token when given:
:mod:`quantsweep.verdicts.task` passes the unigram cross-entropy of the scored
tokens (the best a model that ignores context can do), so a model worse than a
frequency table is near-random. Without it, the uniform distribution over a
vocabulary of `V` tokens: cross-entropy `log V` (perplexity `V`), a much lower bar.

## The rules, in order (the first that applies wins)

1. **non-finite.** The cell is `non-finite` if any sample had NaN or Inf in its
   logits or log-likelihoods (`nonfinite_samples > 0`), if any per-document
   value is NaN or Inf, or if the reported metric itself is NaN or Inf. Nothing
   else is computed. This check comes first because lm-eval scores multiple
   choice with `argmax`, and `argmax` over NaN log-likelihoods silently picks
   option 0. A broken model would otherwise look "merely near chance".
2. **baseline.** The reference model's own row (no baseline given, or
   `is_baseline=True`) is `baseline`. Its `delta`, `ci_low`, `ci_high` and
   `p_value` describe its margin above chance (see "Fields" below).
3. **too few documents.** With fewer than `min_samples` documents (default 20),
   the verdict is `inconclusive`. The exact tests below already refuse most
   claims from tiny samples. This floor also guards the approximate intervals
   (Newcombe, bootstrap), which are unreliable with a handful of documents.
4. **collapsed.** The collapse checks apply only when the baseline is above
   chance. Otherwise there is no margin to lose, and the cell is judged against
   the baseline alone. Retention is the share of the baseline's margin above
   chance that is kept:
   `retained = (acc_q - chance) / (acc_base - chance)`. For perplexity,
   `retained = (CE_chance - CE_q) / (CE_chance - CE_base)`, with `CE_chance` the
   unigram cross-entropy or `log V` (see "Inputs"). The cell is `collapsed` when
   either rule holds:
   - *Binomial rule (accuracy only).* The one-sided exact binomial test
     `binomtest(k, n, p=chance, alternative="greater")` is not significant at
     `alpha`, **and** the test had power. Power here means that, at level
     `alpha`, the test would have rejected chance with probability at least
     `collapse_power` (default 0.8) had the model kept exactly the threshold
     share `collapse_retention` of the baseline's margin, that is, true
     accuracy `chance + collapse_retention * (acc_base - chance)`. If no score
     out of `n` could be significant (for example n = 4 at chance 0.5, where
     even 4/4 gives p = 0.0625), the power is 0. "Not significant" then says
     nothing, and the rule does not fire. So a model that truly keeps the
     threshold margin is wrongly called collapsed at most `1 - collapse_power`
     of the time (the power calculation takes the baseline accuracy as
     fixed). The documents needed before this rule can fire grow as the
     margin shrinks. With the defaults: n >= 148 for 4-way multiple choice
     with baseline 0.9, n >= 457 for a 2-way task with baseline 0.9, and
     n >= 473 for 4-way with baseline 0.6. Below that, only the retention
     rule can declare collapse.
   - *Retention rule.* The upper end of the `ci_level` confidence interval of
     `retained` is at most `collapse_retention` (default 0.15). So even the
     most optimistic reading of the data leaves at most 15% of the margin. For
     accuracy, the bound uses exact Clopper-Pearson intervals: the upper limit
     of `acc_q` over the lower limit of `acc_base`, both measured from chance.
     So the bound covers both models' sampling noise at once, at a joint
     level of at least `ci_level`. The rule cannot fire when the baseline's
     lower limit is not above chance. For perplexity and other scores, the
     bound is the upper end of the percentile bootstrap interval of
     `retained`, recomputed from both models in each paired resample.

   Perplexity and generic scores use the retention rule only. No exact test of
   "above chance" exists for a corpus perplexity or a non-binary score.
5. **lossless.** The upper `ci_level` confidence bound of the *drop* is at
   most the tolerance. The tolerance is `accuracy_tolerance` (default 0.01,
   that is, 1 point of accuracy). For perplexity it is
   `perplexity_relative_tolerance` (default 0.01, that is, perplexity up by at
   most 1%). A real drop smaller than the tolerance is still lossless. The
   bound is the end of the two-sided interval, so the equivalence test is
   one-sided at `(1 - ci_level) / 2` = 2.5%, which is conservative.
6. **degraded.** The lower confidence bound of the drop is above 0, **and** the
   paired test rejects "no change" at `alpha`. Both are asked for because, with
   few disagreements, the approximate interval and the exact McNemar test can
   disagree. Take 0/5 against 5/5: the Newcombe interval excludes 0, but
   McNemar gives p = 0.0625.
7. Otherwise the cell is **inconclusive**, and `documents_needed` estimates how
   many documents would tell a drop of the tolerance at 80% power: for accuracy
   from the observed share of discordant documents (Connor 1987, scaled by the
   design effect when the interval is clustered), otherwise from the width of the
   interval measured on `n` documents (normal power formula). It is never less
   than `n + 1`: when the formula says `n` should have been enough, the cell sits
   at a boundary and more documents are still what would decide it.

Rules 3 to 7 are one ladder (`decide`), shared by all three judges. Each rule
writes the verdict's `reason` in words with its numbers, for example
"n = 4 < min_samples = 20", "upper bound of the drop 0.7% <= tolerance 1%",
"retention CI upper 0.08 <= 0.15", or "...; about 2,400 documents would decide".

"Drop" always means worse: lower accuracy or score, higher perplexity.

## The paired comparison

- **Accuracy.**
  - `delta = acc_q - acc_base`.
  - `p_value` is the exact McNemar test: a two-sided binomial test on the
    discordant documents (b right only for the quantized model, c right only
    for the baseline), with `p = 0.5`. It is 1 when there are no discordant
    documents.
  - The interval is Newcombe's (1998) method 10 for paired proportions: Wilson
    limits for each accuracy, combined by "square and add" with the observed
    correlation between the two models' answers. It behaves well near 0 and 1
    and with few disagreements, unlike the Wald interval.
  - When documents come in clusters (``clusters=``, e.g. the subjects of MMLU),
    the interval and `p_value` are instead the cluster-robust paired difference
    (Miller 2024): CR1 standard error of the mean per-document difference, Student
    t with `G - 1` degrees of freedom. Documents of one subject are not
    independent, and the Newcombe interval would be too narrow.
- **Perplexity.**
  - `delta = ppl_q / ppl_base - 1`, the relative change, positive when worse.
  - The `ci_level` interval is a paired percentile bootstrap. Documents are
    resampled with replacement (`bootstrap_resamples` resamples, default 2000,
    seeded by `seed`), and each resample recomputes both corpus perplexities
    from the summed NLL and token counts.
  - `p_value` is the bootstrap p-value of "delta = 0": twice the smaller share
    of resampled deltas on either side of 0, with a +1 correction, capped at 1.
- **Other scores.** `delta = mean_q - mean_base`, with the same paired
  bootstrap. The tolerance is `accuracy_tolerance` in the score's own units,
  unless `tolerance=` is given. With clusters, the interval and `p_value` are
  the cluster-robust paired difference, as for accuracy.

## Fields of a verdict (`Verdict.to_dict()`)

- `verdict`: one of the six judged names above (never `error`).
- `chance`: the chance level in the metric's units. For perplexity this is `V`,
  the chance perplexity.
- `nonfinite_samples`: the larger of the count passed in and the number of
  non-finite per-document values found.
- `delta`, `ci_low`, `ci_high`, `p_value`:
  - For a compared row, these describe quantized minus baseline, as above.
  - For a `baseline` row, they describe the margin over chance instead:
    `delta = score - chance`, with its interval. For accuracy, the interval is
    Clopper-Pearson and `p_value` is the one-sided binomial test against
    chance. For perplexity and other scores, the interval is a bootstrap and
    `p_value` is empty.
  - For a row whose baseline has non-finite per-document values (it cannot be
    paired), all four are empty: the row is judged against chance alone, and the
    margin above chance with its interval is in `reason`; `interval` names that interval.
- `retained`: the point estimate of retention. It is empty when the baseline
  is not above chance.
- `n`: the number of documents.
- `reason`: why, in words with the numbers (see the rules above).
- `interval`: which interval the verdict used: `newcombe`, `cluster-robust (G clusters)`,
  `paired bootstrap`, or `clopper-pearson` (a baseline's margin over chance).
- `documents_needed`: for an `inconclusive` compared cell, the documents that would
  decide it (80% power); otherwise `None`.
- NaN and Inf become `None` (JSON `null`), and every `VerdictConfig` field is
  recorded with each result.

## Summaries

`summarize` reduces the cells to one line per recipe, and one per
(recipe, task family).

- The headline `verdict` is the **worst** verdict present, by severity:
  `non-finite` > `collapsed` > `degraded` > `inconclusive` > `lossless` >
  `baseline`. On this ladder `error` (a failed cell) ranks above all; failed
  recipes are listed apart, with their errors.
- `dominant` is the most frequent verdict, with ties going to the more severe.
- `counts` gives the number of cells for every verdict.
- `worst_tasks` lists the tasks that carry the headline verdict.

Example:
    >>> import numpy as np
    >>> from quantsweep.verdicts.judge import judge_accuracy
    >>> base = np.r_[np.ones(900), np.zeros(100)]
    >>> judge_accuracy(base.copy(), base, chance=0.25).verdict
    'lossless'
    >>> worst(["lossless", "error", "collapsed"]), SEVERITY["non-finite"] > SEVERITY["collapsed"]
    ('error', True)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quantsweep.verdicts.config import VerdictConfig

# ---------------------------------------------------------------- the vocabulary

# What a judge can decide for a cell that has a result (the rows of the table above).
VERDICTS = ("baseline", "lossless", "degraded", "inconclusive", "collapsed", "non-finite")

# A cell whose recipe failed: no result, so no judge ran; the record holds the error.
ERROR = "error"

# THE ladder: every rung a cell's record can carry, from least to most severe.
LADDER = ("baseline", "lossless", "inconclusive", "degraded", "collapsed", "non-finite", ERROR)

assert set(LADDER) == {*VERDICTS, ERROR}, "the ladder holds every verdict, and error, once"

# Higher is worse; picks the headline verdict of a summary and breaks ties.
SEVERITY = {name: rank for rank, name in enumerate(LADDER)}

# The marker each rung shows in the text table (and the HTML report).
VERDICT_MARKERS = {
    "baseline": "base",
    "lossless": "ok",
    "degraded": "DEGRADED",
    "inconclusive": "?",
    "collapsed": "COLLAPSED",
    "non-finite": "NON-FINITE",
    ERROR: "ERROR",
}

# Rungs a summary or a list of reasons passes over: nothing to explain.
UNREMARKABLE = ("baseline", "lossless")


def is_error(record: Mapping[str, Any]) -> bool:
    """Whether a result record is the error record of a failed cell.

    Example:
        >>> is_error({"verdict": "error", "error": "RuntimeError: boom"}), is_error({"verdict": "lossless"})
        (True, False)
    """
    return record.get("verdict") == ERROR


def is_primary_or_error(record: Mapping[str, Any]) -> bool:
    """Whether a record is the one a table shows for its cell: the primary metric, or the cell's error.

    Example:
        >>> is_primary_or_error({"primary": True, "verdict": "lossless"}), is_primary_or_error({"verdict": "error"})
        (True, True)
        >>> is_primary_or_error({"primary": False, "verdict": "lossless"})
        False
    """
    return bool(record.get("primary")) or is_error(record)


def primary_or_error_mask(frame):
    """:func:`is_primary_or_error` over a records table (a pandas DataFrame): a boolean column.

    Example:
        >>> import pandas as pd
        >>> primary_or_error_mask(pd.DataFrame({"primary": [True, False, False],
        ...                                     "verdict": ["lossless", "error", "lossless"]})).tolist()
        [True, True, False]
    """
    return frame["primary"] | (frame["verdict"] == ERROR)


def worst(verdicts: Iterable[str]) -> str | None:
    """The most severe rung among ``verdicts``, by :data:`SEVERITY`; names off the ladder are ignored.

    Returns None when no name is on the ladder.

    Example:
        >>> worst(["lossless", "degraded", "inconclusive"]), worst(["missing"])
        ('degraded', None)
    """
    present = [name for name in verdicts if name in SEVERITY]
    return max(present, key=SEVERITY.__getitem__) if present else None


# ---------------------------------------------------------------- one verdict


def _json_number(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Verdict:
    """The verdict of one (recipe, task) cell and the statistics behind it.

    See the module docstring ("Fields of a verdict") for what each number means.

    Example:
        >>> v = Verdict("lossless", 0.25, 0, 0.0, -0.002, 0.002, 1.0, 1.0, 1000)
        >>> v.to_dict()["verdict"], Verdict("non-finite", 0.25, 3).to_dict()["delta"]
        ('lossless', None)
    """

    verdict: str
    chance: float = math.nan
    nonfinite_samples: int = 0
    delta: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    retained: float = math.nan
    n: int = 0
    reason: str = ""
    interval: str = ""
    documents_needed: int | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}; allowed: {list(VERDICTS)}")

    def to_dict(self) -> dict:
        """JSON-friendly dict of exactly the dataclass fields; NaN and Inf become None.

        Example:
            >>> Verdict("baseline", n=10).to_dict()["p_value"] is None
            True
        """
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("verdict", "reason", "interval"):
                out[field.name] = value
            elif field.name in ("n", "nonfinite_samples"):
                out[field.name] = int(value)
            elif field.name == "documents_needed":
                out[field.name] = None if value is None else int(value)
            else:
                out[field.name] = _json_number(value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> Verdict:
        """Inverse of :meth:`to_dict` (None becomes NaN).

        Example:
            >>> Verdict.from_dict(Verdict("collapsed", 0.25, n=50).to_dict()).verdict
            'collapsed'
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown Verdict key(s) {unknown}; allowed: {names}")
        text_or_count = ("reason", "interval", "documents_needed")
        values = {k: (math.nan if v is None and k not in text_or_count else v) for k, v in data.items()}
        for key in ("reason", "interval"):
            if values.get(key, "") is None:
                values[key] = ""
        return cls(**values)


def verdict_name(value) -> str:
    """The verdict name of a :class:`Verdict`, its ``to_dict()`` or a name; an unknown name is an error.

    Example:
        >>> verdict_name(Verdict("degraded")), verdict_name({"verdict": "lossless"})
        ('degraded', 'lossless')
    """
    if isinstance(value, Verdict):
        name = value.verdict
    elif isinstance(value, Mapping):
        name = value.get("verdict")
    else:
        name = value
    if name not in VERDICTS:
        raise ValueError(f"unknown verdict {name!r}; allowed: {list(VERDICTS)}")
    return name


# ---------------------------------------------------------------- the ladder of a paired comparison


def percent(value: float) -> str:
    """A share as a percentage with 3 significant digits (the unit of accuracy drops and tolerances).

    Example:
        >>> percent(0.007), percent(0.01)
        ('0.7%', '1%')
    """
    return f"{100 * value:.3g}%"


@dataclass(frozen=True)
class Comparison:
    """What the decision ladder needs about one paired comparison (drop = change for the worse).

    Example:
        >>> Comparison(100, -0.01, 0.005, 0.01, 0.8, "drop", "McNemar").quantity
        'drop'
    """

    n: int
    drop_low: float
    drop_high: float
    tolerance: float
    p_value: float
    quantity: str  # "drop", "perplexity increase"
    test: str  # the paired test behind p_value, in words
    show: Callable[[float], str] = percent  # formats a drop in the quantity's units


def decide(
    comparison: Comparison,
    config: VerdictConfig,
    collapse: Callable[[], str | None],
    *,
    noise_floor: float = 0.0,
) -> tuple[str, str]:
    """The verdict ladder (module docstring, rules 3-7), written once: (verdict, reason).

    ``collapse`` is called only when there are enough documents; it returns the reason
    the cell is collapsed, or None. ``noise_floor`` (in the drop's units, >= 0) is the size
    of the A/A control's difference: what evaluating the baseline again at another batch
    size and order changed. It is added to the upper bound before the tolerance test
    (``lossless`` needs ``drop_high + floor <= tolerance``) and the lower bound must exceed
    it for ``degraded`` (``drop_low > floor``): neither verdict may rest on a difference
    the batching alone produces.

    Example:
        >>> from quantsweep.verdicts.config import VerdictConfig
        >>> decide(Comparison(100, -0.01, 0.005, 0.01, 0.8, "drop", "McNemar"), VerdictConfig(), lambda: None)
        ('lossless', 'upper bound of the drop 0.5% <= tolerance 1%')
        >>> decide(Comparison(100, -0.01, 0.005, 0.01, 0.8, "drop", "McNemar"), VerdictConfig(), lambda: None,
        ...        noise_floor=0.006)[0]
        'inconclusive'
        >>> decide(Comparison(4, -0.5, 0.5, 0.01, 1.0, "drop", "McNemar"), VerdictConfig(), lambda: None)[1]
        'n = 4 < min_samples = 20'
    """
    if not noise_floor >= 0.0:
        raise ValueError(f"noise_floor must be a number >= 0, got {noise_floor!r}")
    c, show, floor = comparison, comparison.show, noise_floor
    if c.n < config.min_samples:
        return "inconclusive", f"n = {c.n} < min_samples = {config.min_samples}"
    collapse_reason = collapse()
    if collapse_reason:
        return "collapsed", collapse_reason
    aa = f"A/A difference {show(floor)}"
    plus_aa = f" + {aa}" if floor > 0.0 else ""  # the A/A wording only where there is a floor
    above = aa if floor > 0.0 else "0"
    if c.drop_high + floor <= c.tolerance:
        return "lossless", (
            f"upper bound of the {c.quantity} {show(c.drop_high)}{plus_aa} <= tolerance {show(c.tolerance)}"
        )
    if c.drop_low > floor and c.p_value < config.alpha:
        return "degraded", (
            f"lower bound of the {c.quantity} {show(c.drop_low)} > {above} and {c.test} "
            f"p = {c.p_value:.2g} < alpha = {config.alpha:g}"
        )
    if not (math.isfinite(c.drop_low) and math.isfinite(c.drop_high)):
        return "inconclusive", f"the interval of the {c.quantity} is undefined (a resampled value overflowed)"
    if c.drop_low > floor:
        return "inconclusive", (
            f"lower bound of the {c.quantity} {show(c.drop_low)} > {above} but {c.test} "
            f"p = {c.p_value:.2g} >= alpha = {config.alpha:g}"
        )
    if floor > 0.0:
        return "inconclusive", (
            f"the {c.quantity} is between {show(c.drop_low)} and {show(c.drop_high)}: with the {aa} it is "
            f"neither within the tolerance {show(c.tolerance)} nor above the A/A difference"
        )
    return "inconclusive", (
        f"the {c.quantity} is between {show(c.drop_low)} and {show(c.drop_high)}: "
        f"its upper bound is above the tolerance {show(c.tolerance)} and its lower bound "
        "is not above 0"
    )
