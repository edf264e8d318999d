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
:mod:`quantsweep.eval.judge` passes the unigram cross-entropy of the scored
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

Rules 3 to 7 are one ladder (`_decide`), shared by all three judges. Each rule
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

- `verdict`: one of the six names above.
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
  `baseline`.
- `dominant` is the most frequent verdict, with ties going to the more severe.
- `counts` gives the number of cells for every verdict.
- `worst_tasks` lists the tasks that carry the headline verdict.

Example:
    >>> import numpy as np
    >>> base = np.r_[np.ones(900), np.zeros(100)]
    >>> judge_accuracy(base.copy(), base, chance=0.25).verdict
    'lossless'
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from quantsweep.eval import chance as _chance
from quantsweep.eval import stats

logger = logging.getLogger(__name__)

VERDICTS = ("baseline", "lossless", "degraded", "inconclusive", "collapsed", "non-finite")

# Higher is worse; used to pick the headline verdict of a summary and to break ties.
SEVERITY = {"baseline": 0, "lossless": 1, "inconclusive": 2, "degraded": 3, "collapsed": 4, "non-finite": 5}


@dataclass(frozen=True, kw_only=True)
class VerdictConfig:
    """Thresholds and settings of the verdict rules (recorded with every result).

    Attributes:
        alpha: significance level of the chance test and the paired tests.
        ci_level: two-sided confidence level of every interval.
        accuracy_tolerance: largest accuracy drop (absolute, 0.01 = 1 point) still called lossless;
            also the default tolerance of ``judge_scores`` in the score's own units.
        perplexity_relative_tolerance: largest relative perplexity increase (0.01 = 1%) still lossless.
        collapse_retention: a model keeping at most this share of the baseline's margin above
            chance is collapsed.
        collapse_power: power the chance test must have (against a model at exactly the
            retention threshold) before "not above chance" may count as collapse.
        min_samples: fewer documents than this give ``inconclusive`` (never lossless, degraded
            or collapsed).
        bootstrap_resamples: resamples of the paired bootstrap.
        seed: seed of the bootstrap's random generator.

    Example:
        >>> VerdictConfig(alpha=0.01).to_dict()["alpha"]
        0.01
    """

    alpha: float = 0.05
    ci_level: float = 0.95
    accuracy_tolerance: float = 0.01
    perplexity_relative_tolerance: float = 0.01
    collapse_retention: float = 0.15
    collapse_power: float = 0.8
    min_samples: int = 20
    bootstrap_resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("alpha", "ci_level", "collapse_power"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < value < 1.0:
                raise ValueError(f"VerdictConfig.{name} must be a number in (0, 1), got {value!r}")
        for name in ("accuracy_tolerance", "perplexity_relative_tolerance", "collapse_retention"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"VerdictConfig.{name} must be a number in [0, 1), got {value!r}")
        for name, smallest in (("min_samples", 1), ("bootstrap_resamples", 100), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
                raise ValueError(f"VerdictConfig.{name} must be an integer >= {smallest}, got {value!r}")

    def to_dict(self) -> dict:
        """All fields as a JSON-friendly dict.

        Example:
            >>> sorted(VerdictConfig().to_dict())[:2]
            ['accuracy_tolerance', 'alpha']
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> VerdictConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are an error.

        Example:
            >>> VerdictConfig.from_dict({"seed": 3}).seed
            3
        """
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"unknown VerdictConfig key(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**data)


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


def _config(config: VerdictConfig | None) -> VerdictConfig:
    if config is None:
        return VerdictConfig()
    if not isinstance(config, VerdictConfig):
        raise TypeError(f"config must be a VerdictConfig, got {type(config).__name__}")
    return config


def _nonfinite_count(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"nonfinite_samples must be a non-negative integer, got {value!r}")
    return int(value)


def _metric_is_nonfinite(metric_value) -> bool:
    return metric_value is not None and not math.isfinite(float(metric_value))


def _per_document(name: str, values) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a 1-D sequence of numbers, one per document: {error}") from None
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array with one value per document, got shape {array.shape}")
    return array


def _check_paired(name_q: str, q: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if q.shape != b.shape:
        raise ValueError(
            f"{name_q} and {name_b} must be paired by document (same documents, same order); "
            f"got {q.size} and {b.size} documents"
        )


def _check_binary(name: str, array: np.ndarray) -> None:
    finite = array[np.isfinite(array)]
    bad = finite[(finite != 0.0) & (finite != 1.0)]
    if bad.size:
        raise ValueError(f"{name} must hold per-document correctness 0 or 1, found {bad[:3].tolist()}")


def _is_baseline_row(baseline, is_baseline: bool) -> bool:
    return baseline is None or bool(is_baseline)


def _nonfinite_verdict(chance: float, nonfinite: int, n: int, metric_value=None) -> Verdict:
    if nonfinite > 0:
        reason = f"{nonfinite} of {n} documents had NaN or Inf log-likelihoods, logits or scores"
    else:
        reason = f"the reported metric is {metric_value}"
    return Verdict("non-finite", chance=chance, nonfinite_samples=nonfinite, n=n, reason=reason)


def percent(value: float) -> str:
    """A share as a percentage with 3 significant digits (the unit of accuracy drops and tolerances).

    Example:
        >>> percent(0.007), percent(0.01)
        ('0.7%', '1%')
    """
    return f"{100 * value:.3g}%"


def _plain(value: float) -> str:
    return f"{value:.3g}"


@dataclass(frozen=True)
class _Comparison:
    """What the shared decision ladder needs about one paired comparison (drop = change for the worse)."""

    n: int
    drop_low: float
    drop_high: float
    tolerance: float
    p_value: float
    quantity: str  # "drop", "perplexity increase"
    test: str  # the paired test behind p_value, in words
    show: object = percent  # formats a drop in the quantity's units


def _decide(comparison: _Comparison, config: VerdictConfig, collapse) -> tuple[str, str]:
    """The verdict ladder (module docstring, rules 3-7), written once: (verdict, reason).

    ``collapse`` is called only when there are enough documents; it returns the reason
    the cell is collapsed, or None.
    """
    c, show = comparison, comparison.show
    if c.n < config.min_samples:
        return "inconclusive", f"n = {c.n} < min_samples = {config.min_samples}"
    collapse_reason = collapse()
    if collapse_reason:
        return "collapsed", collapse_reason
    if c.drop_high <= c.tolerance:
        return "lossless", f"upper bound of the {c.quantity} {show(c.drop_high)} <= tolerance {show(c.tolerance)}"
    if c.drop_low > 0.0 and c.p_value < config.alpha:
        return "degraded", (
            f"lower bound of the {c.quantity} {show(c.drop_low)} > 0 and {c.test} "
            f"p = {c.p_value:.2g} < alpha = {config.alpha:g}"
        )
    if not (math.isfinite(c.drop_low) and math.isfinite(c.drop_high)):
        return "inconclusive", f"the interval of the {c.quantity} is undefined (a resampled value overflowed)"
    if c.drop_low > 0.0:
        return "inconclusive", (
            f"lower bound of the {c.quantity} {show(c.drop_low)} > 0 but {c.test} "
            f"p = {c.p_value:.2g} >= alpha = {config.alpha:g}"
        )
    return "inconclusive", (
        f"the {c.quantity} is between {show(c.drop_low)} and {show(c.drop_high)}: "
        f"its upper bound is above the tolerance {show(c.tolerance)} and its lower bound "
        "is not above 0"
    )


def _accuracy_collapsed(k: int, n: int, chance: float, k_base: int, config: VerdictConfig) -> str | None:
    """Binomial rule (with power) or confident retention rule; see the module docstring, rule 4.

    Returns the reason in words when the cell is collapsed, else None.
    """
    margin = k_base / n - chance
    if not margin > 0:
        return None
    threshold_accuracy = chance + config.collapse_retention * margin
    p_chance = stats.binomial_test_above_chance(k, n, chance)
    power = stats.binomial_power(n, chance, threshold_accuracy, config.alpha)
    binomial_rule = p_chance > config.alpha and power >= config.collapse_power
    # Upper bound of retention: most optimistic quantized accuracy over the most pessimistic
    # baseline margin, so both models' sampling noise is covered at once.
    _, high_q = stats.clopper_pearson_interval(k, n, config.ci_level)
    low_b, _ = stats.clopper_pearson_interval(k_base, n, config.ci_level)
    retained_high = (high_q - chance) / (low_b - chance) if low_b > chance else math.inf
    retention_rule = retained_high <= config.collapse_retention
    logger.debug(
        "collapse check: p_chance=%.3g power=%.3g (vs acc %.4f) retained_high=%.3f -> binomial=%s retention=%s",
        p_chance,
        power,
        threshold_accuracy,
        retained_high,
        binomial_rule,
        retention_rule,
    )
    if retention_rule:
        return f"retention CI upper {retained_high:.2f} <= {config.collapse_retention:g}"
    if binomial_rule:
        return (
            f"not above chance {chance:.3g}: binomial p = {p_chance:.2g} > alpha = {config.alpha:g}, "
            f"with power {power:.2f} >= {config.collapse_power:g}"
        )
    return None


def judge_accuracy(
    quantized,
    baseline,
    chance: float,
    nonfinite_samples: int = 0,
    config: VerdictConfig | None = None,
    *,
    is_baseline: bool = False,
    metric_value: float | None = None,
    clusters=None,
) -> Verdict:
    """Verdict for an accuracy task from per-document correctness, paired with the baseline.

    Args:
        quantized: per-document 0/1 correctness of the model being judged (NaN marks a
            non-finite document).
        baseline: the baseline's per-document 0/1 correctness on the same documents, in
            the same order; None when ``quantized`` is the baseline itself.
        chance: chance accuracy in [0, 1), e.g. from ``multiple_choice_chance``.
        nonfinite_samples: samples whose logits or log-likelihoods held NaN/Inf.
        config: thresholds; defaults to ``VerdictConfig()``.
        is_baseline: mark this row as the baseline even though ``baseline`` is given.
        metric_value: the aggregate metric as reported (e.g. by lm-eval); NaN/Inf makes
            the cell non-finite.
        clusters: one cluster label per document (e.g. its subject), or None. With two or
            more clusters the interval and p-value of the paired difference are
            cluster-robust (:func:`~quantsweep.eval.stats.cluster_robust_paired_difference`)
            instead of Newcombe's and McNemar's, and ``interval`` says so.

    Example:
        >>> base = np.r_[np.ones(900), np.zeros(100)]
        >>> worse = base.copy(); worse[:200] = 0
        >>> judge_accuracy(worse, base, chance=0.25).verdict
        'degraded'
    """
    config = _config(config)
    chance = float(chance)
    if not 0.0 <= chance < 1.0:
        raise ValueError(f"chance accuracy must be in [0, 1), got {chance}")
    q = _per_document("quantized", quantized)
    _check_binary("quantized", q)
    n = int(q.size)
    nonfinite = max(_nonfinite_count(nonfinite_samples), int(np.sum(~np.isfinite(q))))
    if nonfinite > 0 or _metric_is_nonfinite(metric_value):
        return _nonfinite_verdict(chance, nonfinite, n, metric_value)
    k = int(q.sum())
    accuracy = k / n

    if _is_baseline_row(baseline, is_baseline):
        low, high = stats.clopper_pearson_interval(k, n, config.ci_level)
        return Verdict(
            "baseline",
            chance=chance,
            nonfinite_samples=0,
            delta=accuracy - chance,
            ci_low=low - chance,
            ci_high=high - chance,
            p_value=stats.binomial_test_above_chance(k, n, chance),
            retained=1.0 if accuracy > chance else math.nan,
            n=n,
            reason=f"the reference model: accuracy {accuracy:.3g} against chance {chance:.3g}",
            interval="clopper-pearson",
        )

    b = _per_document("baseline", baseline)
    _check_paired("quantized", q, "baseline", b)
    _check_binary("baseline", b)
    if not np.isfinite(b).all():
        logger.warning("baseline has non-finite per-document values; the comparison is inconclusive")
        return Verdict("inconclusive", chance=chance, n=n, reason=_BASELINE_NONFINITE)

    counts = stats.paired_counts(q, b)
    baseline_accuracy = float(b.mean())
    delta = accuracy - baseline_accuracy
    labels = _cluster_labels(clusters, n)
    if labels is not None:
        clustered = stats.cluster_robust_paired_difference(q, b, labels, config.ci_level)
        ci_low, ci_high, p_value = clustered.ci_low, clustered.ci_high, clustered.p_value
        interval, test = f"cluster-robust ({clustered.n_clusters} clusters)", "cluster-robust t test"
    else:
        ci_low, ci_high = stats.newcombe_paired_interval(counts, config.ci_level)
        p_value = stats.mcnemar_exact(counts.only_quantized, counts.only_baseline)
        interval, test = "newcombe", "McNemar"
        if clusters is not None:
            interval = "newcombe (one cluster only)"
    retained = _chance.accuracy_retention(accuracy, baseline_accuracy, chance)
    comparison = _Comparison(n, -ci_high, -ci_low, config.accuracy_tolerance, p_value, "drop", test)
    verdict, reason = _decide(comparison, config, lambda: _accuracy_collapsed(k, n, chance, int(b.sum()), config))
    needed = None
    if verdict == "inconclusive":
        discordance = (counts.only_quantized + counts.only_baseline) / n
        needed = stats.documents_needed_paired_proportions(
            discordance, config.accuracy_tolerance, config.alpha, _DECIDING_POWER
        )
        if labels is not None and not math.isnan(ci_low):
            # the clustered interval is wider than the independent one: scale by the design effect
            plain_low, plain_high = stats.newcombe_paired_interval(counts, config.ci_level)
            if plain_high > plain_low:
                needed *= ((ci_high - ci_low) / (plain_high - plain_low)) ** 2
    return _with_documents_needed(
        Verdict(verdict, chance, 0, delta, ci_low, ci_high, p_value, retained, n, reason, interval), needed
    )


def _cluster_labels(clusters, n: int) -> list | None:
    """The documents' cluster labels when there are at least two clusters, else None."""
    if clusters is None:
        return None
    labels = list(clusters)
    if len(labels) != n:
        raise ValueError(f"clusters must hold one label per document: {len(labels)} labels for {n} documents")
    return labels if len(set(labels)) >= 2 else None


_BASELINE_NONFINITE = "the baseline has non-finite per-document values, so there is nothing sound to pair with"

# Power at which "documents needed" is computed for an inconclusive cell.
_DECIDING_POWER = 0.8


def _with_documents_needed(verdict: Verdict, needed: float | None) -> Verdict:
    """Add the documents an inconclusive cell would need (80% power) to its fields and its reason."""
    if needed is None or not math.isfinite(needed):
        return verdict
    needed = max(int(math.ceil(needed)), verdict.n + 1)
    reason = f"{verdict.reason}; about {needed:,} documents would decide"
    return dataclasses.replace(verdict, documents_needed=needed, reason=reason)


def _retention_samples(margin_q: np.ndarray, margin_b: np.ndarray) -> np.ndarray:
    """Resampled retention; +inf where the resampled baseline margin is not positive (undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(margin_b > 0, margin_q / np.where(margin_b > 0, margin_b, 1.0), np.inf)


def _upper_bound(samples: np.ndarray, level: float) -> float:
    return stats.percentile_interval(samples, level)[1]


def _perplexity_arrays(name: str, nll, tokens) -> tuple[np.ndarray, np.ndarray]:
    nll_array = _per_document(f"{name}_nll", nll)
    token_array = _per_document(f"{name}_tokens", tokens)
    _check_paired(f"{name}_nll", nll_array, f"{name}_tokens", token_array)
    if not np.isfinite(token_array).all() or (token_array < 0).any() or not token_array.sum() > 0:
        raise ValueError(f"{name}_tokens must be finite, non-negative counts with a positive total")
    finite = nll_array[np.isfinite(nll_array)]
    if (finite < 0).any():
        raise ValueError(
            f"{name}_nll must be negative log-likelihoods in nats (>= 0); found {finite[finite < 0][:3].tolist()}. "
            "lm-eval reports log-likelihoods: negate them."
        )
    return nll_array, token_array


def judge_perplexity(
    quantized_nll,
    quantized_tokens,
    baseline_nll,
    baseline_tokens,
    vocab_size: int,
    nonfinite_samples: int = 0,
    config: VerdictConfig | None = None,
    *,
    is_baseline: bool = False,
    metric_value: float | None = None,
    chance_cross_entropy: float | None = None,
) -> Verdict:
    """Verdict for a perplexity task from per-document summed NLL and token counts.

    The corpus perplexity ``exp(sum NLL / sum tokens)`` is recomputed in every paired
    bootstrap resample; ``delta`` is the relative change ``ppl_q / ppl_base - 1``.
    Collapse uses the retention rule only (module docstring, rule 4).

    Args:
        quantized_nll, baseline_nll: per-document summed negative log-likelihood, nats
            (``baseline_nll`` None for the baseline row).
        quantized_tokens, baseline_tokens: per-document token counts the NLL is summed over.
        vocab_size: vocabulary size V; chance cross-entropy is log V nats per token.
        nonfinite_samples: documents whose log-likelihoods held NaN/Inf.
        config: thresholds; defaults to ``VerdictConfig()``.
        is_baseline: mark this row as the baseline even though a baseline is given.
        metric_value: the perplexity as reported; NaN/Inf makes the cell non-finite.
        chance_cross_entropy: chance level per counted unit when the counts are not tokens
            (e.g. words: ``log V * total_tokens / total_words``); default ``log V``.

    Example:
        >>> nll, tokens = np.full(50, 200.0), np.full(50, 100)
        >>> judge_perplexity(nll, tokens, nll.copy(), tokens, vocab_size=1000).verdict
        'lossless'
    """
    config = _config(config)
    chance_ce = (
        _chance.chance_cross_entropy(vocab_size) if chance_cross_entropy is None else float(chance_cross_entropy)
    )
    if not (math.isfinite(chance_ce) and chance_ce > 0):
        raise ValueError(f"chance_cross_entropy must be a positive number of nats, got {chance_cross_entropy}")
    # Chance perplexity V exactly for token counts (exp(log V) would round).
    chance_ppl = float(vocab_size) if chance_cross_entropy is None else math.exp(chance_ce)
    q_nll, q_tok = _perplexity_arrays("quantized", quantized_nll, quantized_tokens)
    n = int(q_nll.size)
    nonfinite = max(_nonfinite_count(nonfinite_samples), int(np.sum(~np.isfinite(q_nll))))
    if nonfinite > 0 or _metric_is_nonfinite(metric_value):
        return _nonfinite_verdict(chance_ppl, nonfinite, n, metric_value)
    ce_q = float(q_nll.sum() / q_tok.sum())

    def corpus_ce(nll: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return nll.sum(axis=-1) / tokens.sum(axis=-1)

    if _is_baseline_row(baseline_nll, is_baseline):
        samples = stats.bootstrap_distribution(
            lambda nll, tok: np.exp(np.minimum(corpus_ce(nll, tok), 709.0)),
            [q_nll, q_tok],
            config.bootstrap_resamples,
            config.seed,
        )
        low, high = stats.percentile_interval(samples, config.ci_level)
        ppl = _chance.perplexity(q_nll, q_tok)
        return Verdict(
            "baseline",
            chance_ppl,
            0,
            ppl - chance_ppl,
            low - chance_ppl,
            high - chance_ppl,
            math.nan,
            1.0 if ce_q < chance_ce else math.nan,
            n,
            f"the reference model: {ce_q:.3g} nats per token against chance {chance_ce:.3g}",
            "paired bootstrap",
        )

    if baseline_tokens is None:
        raise ValueError("baseline_tokens is required when baseline_nll is given")
    b_nll, b_tok = _perplexity_arrays("baseline", baseline_nll, baseline_tokens)
    _check_paired("quantized_nll", q_nll, "baseline_nll", b_nll)
    if not np.isfinite(b_nll).all():
        logger.warning("baseline has non-finite per-document NLL; the comparison is inconclusive")
        return Verdict("inconclusive", chance=chance_ppl, n=n, reason=_BASELINE_NONFINITE)
    ce_b = float(b_nll.sum() / b_tok.sum())

    def statistic(qn, qt, bn, bt):
        ce_qs, ce_bs = corpus_ce(qn, qt), corpus_ce(bn, bt)
        with np.errstate(over="ignore"):
            relative_change = np.expm1(ce_qs - ce_bs)
        retained = _retention_samples(chance_ce - ce_qs, chance_ce - ce_bs)
        return np.stack([relative_change, retained], axis=-1)

    samples = stats.bootstrap_distribution(
        statistic, [q_nll, q_tok, b_nll, b_tok], config.bootstrap_resamples, config.seed
    )
    with np.errstate(over="ignore"):
        delta = float(np.expm1(ce_q - ce_b))
    ci_low, ci_high = stats.percentile_interval(samples[:, 0], config.ci_level)
    p_value = stats.bootstrap_p_value(samples[:, 0])
    baseline_margin = chance_ce - ce_b
    retained = (chance_ce - ce_q) / baseline_margin if baseline_margin > 0 else math.nan

    comparison = _Comparison(
        n, ci_low, ci_high, config.perplexity_relative_tolerance, p_value, "perplexity increase", "bootstrap"
    )
    verdict, reason = _decide(comparison, config, lambda: _retention_collapse(baseline_margin, samples[:, 1], config))
    needed = None
    if verdict == "inconclusive" and math.isfinite(ci_low) and math.isfinite(ci_high):
        needed = stats.documents_needed_from_interval(
            n, ci_low, ci_high, config.perplexity_relative_tolerance, config.ci_level, config.alpha, _DECIDING_POWER
        )
    return _with_documents_needed(
        Verdict(verdict, chance_ppl, 0, delta, ci_low, ci_high, p_value, retained, n, reason, "paired bootstrap"),
        needed,
    )


def _retention_collapse(baseline_margin: float, retained_samples: np.ndarray, config: VerdictConfig) -> str | None:
    """Retention rule from bootstrap samples of retention: the reason when collapsed, else None."""
    if not baseline_margin > 0:
        return None
    upper = _upper_bound(retained_samples, config.ci_level)
    if upper <= config.collapse_retention:
        return f"retention CI upper {upper:.2f} <= {config.collapse_retention:g}"
    return None


def judge_scores(
    quantized_scores,
    baseline_scores,
    higher_is_better: bool = True,
    chance: float | None = None,
    nonfinite_samples: int = 0,
    config: VerdictConfig | None = None,
    *,
    is_baseline: bool = False,
    metric_value: float | None = None,
    tolerance: float | None = None,
    show=None,
    clusters=None,
) -> Verdict:
    """Verdict for any per-document score (exact match, F1, ...) by paired bootstrap of the mean.

    Args:
        quantized_scores: per-document scores of the model being judged.
        baseline_scores: the baseline's scores on the same documents; None for the baseline row.
        higher_is_better: direction of the metric; a "drop" is a change for the worse.
        chance: chance level in the score's units (e.g. 0 for exact match); None skips the
            collapse check.
        nonfinite_samples: samples whose logits or log-likelihoods held NaN/Inf.
        config: thresholds; defaults to ``VerdictConfig()``.
        is_baseline: mark this row as the baseline even though a baseline is given.
        metric_value: the aggregate metric as reported; NaN/Inf makes the cell non-finite.
        tolerance: largest drop still lossless, in the score's units; default
            ``config.accuracy_tolerance``.
        show: formats a drop in the score's units for the verdict's ``reason``
            (default: 3 significant digits).
        clusters: one cluster label per document, or None; with two or more clusters the
            interval and p-value of the difference are cluster-robust, as in :func:`judge_accuracy`.

    Example:
        >>> s = np.r_[np.full(60, 0.8), np.full(40, 0.2)]
        >>> judge_scores(s, s.copy(), chance=0.0).verdict
        'lossless'
    """
    config = _config(config)
    tolerance = config.accuracy_tolerance if tolerance is None else float(tolerance)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a non-negative number, got {tolerance}")
    if chance is not None and not math.isfinite(float(chance)):
        raise ValueError(f"chance must be a finite number or None, got {chance}")
    chance_value = math.nan if chance is None else float(chance)
    sign = 1.0 if higher_is_better else -1.0
    q = _per_document("quantized_scores", quantized_scores)
    n = int(q.size)
    nonfinite = max(_nonfinite_count(nonfinite_samples), int(np.sum(~np.isfinite(q))))
    if nonfinite > 0 or _metric_is_nonfinite(metric_value):
        return _nonfinite_verdict(chance_value, nonfinite, n, metric_value)
    mean_q = float(q.mean())

    if _is_baseline_row(baseline_scores, is_baseline):
        if chance is None:
            return Verdict("baseline", n=n, reason="the reference model (no chance level for this metric)")
        result = stats.paired_bootstrap(
            lambda x: x.mean(axis=-1) - chance_value,
            q,
            resamples=config.bootstrap_resamples,
            seed=config.seed,
            level=config.ci_level,
        )
        above = sign * (mean_q - chance_value) > 0
        return Verdict(
            "baseline",
            chance_value,
            0,
            result.estimate,
            result.ci_low,
            result.ci_high,
            math.nan,
            1.0 if above else math.nan,
            n,
            f"the reference model: mean score {mean_q:.3g} against chance {chance_value:.3g}",
            "paired bootstrap",
        )

    b = _per_document("baseline_scores", baseline_scores)
    _check_paired("quantized_scores", q, "baseline_scores", b)
    if not np.isfinite(b).all():
        logger.warning("baseline has non-finite per-document scores; the comparison is inconclusive")
        return Verdict("inconclusive", chance=chance_value, n=n, reason=_BASELINE_NONFINITE)
    mean_b = float(b.mean())

    def statistic(qs, bs):
        mq, mb = qs.mean(axis=-1), bs.mean(axis=-1)
        if chance is None:
            retained = np.full_like(mq, np.inf)
        else:
            retained = _retention_samples(sign * (mq - chance_value), sign * (mb - chance_value))
        return np.stack([mq - mb, retained], axis=-1)

    samples = stats.bootstrap_distribution(statistic, [q, b], config.bootstrap_resamples, config.seed)
    delta = mean_q - mean_b
    ci_low, ci_high = stats.percentile_interval(samples[:, 0], config.ci_level)
    p_value = stats.bootstrap_p_value(samples[:, 0])
    interval, test = "paired bootstrap", "bootstrap"
    labels = _cluster_labels(clusters, n)
    if labels is not None:
        clustered = stats.cluster_robust_paired_difference(q, b, labels, config.ci_level)
        ci_low, ci_high, p_value = clustered.ci_low, clustered.ci_high, clustered.p_value
        interval, test = f"cluster-robust ({clustered.n_clusters} clusters)", "cluster-robust t test"
    baseline_margin = sign * (mean_b - chance_value) if chance is not None else math.nan
    retained = sign * (mean_q - chance_value) / baseline_margin if baseline_margin > 0 else math.nan
    # Drop = change for the worse: -delta when higher is better, +delta otherwise.
    drop_high = -ci_low if higher_is_better else ci_high
    drop_low = -ci_high if higher_is_better else ci_low

    comparison = _Comparison(n, drop_low, drop_high, tolerance, p_value, "drop", test, show or _plain)
    verdict, reason = _decide(comparison, config, lambda: _retention_collapse(baseline_margin, samples[:, 1], config))
    needed = None
    if verdict == "inconclusive" and tolerance > 0 and math.isfinite(ci_low) and math.isfinite(ci_high):
        needed = stats.documents_needed_from_interval(
            n, ci_low, ci_high, tolerance, config.ci_level, config.alpha, _DECIDING_POWER
        )
    return _with_documents_needed(
        Verdict(verdict, chance_value, 0, delta, ci_low, ci_high, p_value, retained, n, reason, interval), needed
    )


def _verdict_name(value) -> str:
    if isinstance(value, Verdict):
        name = value.verdict
    elif isinstance(value, Mapping):
        name = value.get("verdict")
    else:
        name = value
    if name not in VERDICTS:
        raise ValueError(f"unknown verdict {name!r}; allowed: {list(VERDICTS)}")
    return name


def summarize_verdicts(cells: Iterable[tuple[str, object]]) -> dict:
    """Summary of (task, verdict) pairs: worst and dominant verdict, counts, worst tasks.

    Example:
        >>> summarize_verdicts([("a", "lossless"), ("b", "degraded"), ("c", "lossless")])["verdict"]
        'degraded'
    """
    cells = [(task, _verdict_name(v)) for task, v in cells]
    if not cells:
        raise ValueError("cannot summarize an empty list of verdicts")
    counts = Counter(name for _, name in cells)
    worst = max(counts, key=SEVERITY.__getitem__)
    dominant = max(counts, key=lambda name: (counts[name], SEVERITY[name]))
    return {
        "verdict": worst,
        "dominant": dominant,
        "counts": {name: counts.get(name, 0) for name in VERDICTS},
        "n_tasks": len(cells),
        "worst_tasks": sorted({task for task, name in cells if name == worst}),
    }


def summarize(verdicts: Iterable[tuple[str, str, str, object]]) -> dict:
    """Per-recipe and per-(recipe, family) summaries of verdict cells.

    Args:
        verdicts: rows ``(recipe, task, family, verdict)`` where verdict is a
            :class:`Verdict`, its ``to_dict()``, or a verdict name.

    Returns:
        ``{"by_recipe": {recipe: summary}, "by_family": {(recipe, family): summary}}``; each
        summary holds ``verdict`` (the worst, by :data:`SEVERITY`), ``dominant``,
        ``counts`` (every verdict name), ``n_tasks`` and ``worst_tasks``.

    Example:
        >>> rows = [("w4", "arc", "reasoning", "lossless"), ("w4", "gsm8k", "math", "collapsed")]
        >>> s = summarize(rows)
        >>> s["by_recipe"]["w4"]["verdict"], s["by_family"][("w4", "math")]["worst_tasks"]
        ('collapsed', ['gsm8k'])
    """
    by_recipe: dict[str, list] = {}
    by_family: dict[tuple[str, str], list] = {}
    for row in verdicts:
        if len(row) != 4:
            raise ValueError(f"each row must be (recipe, task, family, verdict), got {row!r}")
        recipe, task, family, verdict = row
        by_recipe.setdefault(recipe, []).append((task, verdict))
        by_family.setdefault((recipe, family), []).append((task, verdict))
    return {
        "by_recipe": {key: summarize_verdicts(cells) for key, cells in by_recipe.items()},
        "by_family": {key: summarize_verdicts(cells) for key, cells in by_family.items()},
    }
