"""The thresholds of the verdict rules: one frozen dataclass, recorded with every result.

Built from a mapping (a sweep file's ``verdict:`` section, a stored result's
``verdict_config``) through :func:`quantsweep._schema.build`, so an unknown
threshold is named with "did you mean" like every other setting.

Example:
    >>> VerdictConfig.from_dict({"alpha": 0.01}).alpha
    0.01
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from quantsweep._schema import build


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
    def from_dict(cls, data: Mapping, where: str = "VerdictConfig") -> VerdictConfig:
        """Build a config from :meth:`to_dict` output (or any part of it), strictly.

        Goes through :func:`quantsweep._schema.build`: an unknown key is named, with
        "did you mean" and the allowed keys; ``where`` says where the mapping came from.

        Raises:
            quantsweep._schema.SchemaError: (a ValueError) an unknown key, a value of the
                wrong type or out of range.

        Example:
            >>> VerdictConfig.from_dict({"seed": 3}).seed
            3
            >>> VerdictConfig.from_dict({"alpah": 0.05})
            Traceback (most recent call last):
            ...
            quantsweep._schema.SchemaError: VerdictConfig: unknown key 'alpah' (did you mean 'alpha'?); allowed keys: alpha, ci_level, accuracy_tolerance, perplexity_relative_tolerance, collapse_retention, collapse_power, min_samples, bootstrap_resamples, seed
        """
        return build(cls, data, where)
