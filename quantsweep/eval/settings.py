"""The evaluation settings: one frozen object from the command line (or a sweep spec) to the evaluator.

Every setting that changes how a model is evaluated is one field of :class:`EvalSettings`,
with its check in ``__post_init__`` (the one place it is validated) and its help text in
the field's metadata, from which the command line's flags are made
(:func:`quantsweep.cli.add_evaluation_flags`). A sweep spec carries one
(:attr:`quantsweep.sweep.spec.SweepSpec.evaluation`), the worker receives it, and
:func:`quantsweep.eval.harness.evaluate` reads it.

Example:
    >>> EvalSettings(limit=100.0, batch_size=8).limit
    100
    >>> EvalSettings(num_fewshot=-3)
    Traceback (most recent call last):
    ...
    quantsweep.eval.settings.SettingError: num_fewshot must be an integer >= 0, got -3
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantsweep._schema import SchemaError

DEFAULT_BATCH_SIZE = 32
DEFAULT_SEED = 1234


class SettingError(SchemaError):
    """A setting has an impossible value. The message names the setting; :meth:`for_flag` names its flag.

    Example:
        >>> SettingError("batch_size", 0, "a positive integer", label="batch size").for_flag()
        '--batch-size must be a positive integer, got 0'
    """

    def __init__(
        self,
        name: str,
        value: Any,
        requirement: str,
        *,
        label: str | None = None,
        flag_requirement: str | None = None,
        qualifier: str = "",
    ):
        self.name, self.value, self.requirement = name, value, requirement
        self.flag_requirement, self.qualifier = flag_requirement or requirement, qualifier
        super().__init__(f"{label or name}{qualifier} must be {requirement}, got {value!r}")

    def for_flag(self) -> str:
        """The message as the command line says it, naming the flag (``--batch-size``).

        Example:
            >>> SettingError("num_fewshot", -3, "an integer >= 0", flag_requirement="0 or more").for_flag()
            '--num-fewshot must be 0 or more, got -3'
        """
        value = f"{self.value:g}" if isinstance(self.value, float) else self.value
        return f"--{self.name.replace('_', '-')}{self.qualifier} must be {self.flag_requirement}, got {value}"


def check_batch_size(value, *, allow_auto: bool) -> int | str:
    """A batch size: a positive integer, or (where ``allow_auto``) ``"auto"``: the evaluator's own search.

    A sweep's cells need a number (they halve it on out-of-memory and record it), so a
    sweep spec allows no ``"auto"``; :func:`quantsweep.evaluate` does.

    Example:
        >>> check_batch_size(8, allow_auto=False), check_batch_size("auto", allow_auto=True)
        (8, 'auto')
    """
    if allow_auto and value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingError("batch_size", value, "a positive integer", label="batch size")
    return value


def control_batch_size(batch_size: int) -> int:
    """The A/A control's batch size: half the baseline's, or 2 when the baseline's is 1.

    Example:
        >>> control_batch_size(32), control_batch_size(1)
        (16, 2)
    """
    return 2 if batch_size <= 1 else batch_size // 2


def setting(default: Any, help: str, *, in_key: bool = False, **cli: Any):
    """A field of :class:`EvalSettings`: its default and help text, how its flag parses (``type``, ``action``),
    and whether it changes results (``in_key``: part of every cell's content key).

    Example:
        >>> setting(None, "a new knob", type=int).metadata["help"]
        'a new knob'
    """
    metadata = {"help": help, "in_key": in_key, **cli}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """How a model is evaluated: the same object for ``quantsweep run``, a sweep spec and :func:`quantsweep.evaluate`.

    Attributes:
        limit: first N documents of each task (a fraction if < 1), or None for all.
        num_fewshot: override every task's few-shot count.
        seed: seeds lm-eval's samplers, numpy and torch.
        batch_size: documents per forward pass (``"auto"`` for :func:`quantsweep.evaluate` only).
        data_dir: folder of local dataset files for suite tasks (offline).
        include_path: extra folders of lm-eval task YAML.
        allow_code_execution: let code tasks run model-written code.
        max_length: the scoring window in tokens (default: the suite's, else the model's positions).
        aa_control: add an A/A control cell per task: the baseline again at
            :func:`control_batch_size` and in reverse batch order.

    Example:
        >>> EvalSettings(include_path="tasks").include_path
        ('tasks',)
    """

    limit: int | float | None = setting(
        None, "evaluate only the first N documents of each task (a fraction if < 1)", in_key=True, type=float
    )
    num_fewshot: int | None = setting(None, "override every task's few-shot count", in_key=True, type=int)
    seed: int = setting(
        DEFAULT_SEED, f"seed of lm-eval's samplers, numpy and torch (default {DEFAULT_SEED})", in_key=True, type=int
    )
    batch_size: int | str = setting(
        DEFAULT_BATCH_SIZE,
        f"documents per forward pass (default {DEFAULT_BATCH_SIZE}; halved on out-of-memory, down to 1)",
        type=int,
    )
    data_dir: str | None = setting(None, "folder of local dataset files for suite tasks (offline)")
    include_path: tuple[str, ...] = setting((), "extra folder of lm-eval task YAML (repeatable)", action="append")
    allow_code_execution: bool = setting(
        False,
        "let code tasks (HumanEval, MBPP) execute model-written code, with a time-out",
        action="store_true",
    )
    max_length: int | None = setting(
        None,
        "scoring window in tokens (default: the suite's, e.g. 2048 for WikiText/C4, else the model's)",
        in_key=True,
        type=int,
    )

    aa_control: bool = setting(
        False,
        "also evaluate the baseline a second time, at another batch size and in reverse batch order, as its own "
        "cell (the A/A control: what batching changes with no quantization at all)",
        action="store_true",
    )

    def __post_init__(self) -> None:
        include = self.include_path
        include = [include] if isinstance(include, (str, Path)) else list(include or ())
        object.__setattr__(self, "include_path", tuple(str(p) for p in include))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))
        object.__setattr__(self, "limit", _checked_limit(self.limit))
        if self.num_fewshot is not None and (
            isinstance(self.num_fewshot, bool) or not isinstance(self.num_fewshot, int) or self.num_fewshot < 0
        ):
            raise SettingError("num_fewshot", self.num_fewshot, "an integer >= 0", flag_requirement="0 or more")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SettingError("seed", self.seed, "an integer")
        check_batch_size(self.batch_size, allow_auto=True)
        if not isinstance(self.aa_control, bool):
            raise SettingError("aa_control", self.aa_control, "true or false")
        if self.max_length is not None and (
            isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2
        ):
            raise SettingError("max_length", self.max_length, "an integer >= 2 (tokens)")

    def replace(self, **changes: Any) -> EvalSettings:
        """These settings with the given fields changed; None values change nothing.

        Example:
            >>> EvalSettings(limit=10).replace(batch_size=4, limit=None).limit
            10
        """
        given = {name: value for name, value in changes.items() if value is not None}
        return dataclasses.replace(self, **given) if given else self

    def key_fields(self) -> dict[str, Any]:
        """The settings that change results (fields made with ``in_key=True``): part of every cell's key.

        Example:
            >>> sorted(EvalSettings().key_fields())
            ['limit', 'max_length', 'num_fewshot', 'seed']
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("in_key")}

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as a record keeps it.

        Example:
            >>> EvalSettings().to_dict()["batch_size"]
            32
        """
        data = dataclasses.asdict(self)
        data["include_path"] = list(self.include_path)
        return data


def _checked_limit(value):
    """None, a positive integer, or a fraction in (0, 1); a whole float above 1 becomes an int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SettingError("limit", value, "positive (documents, or a fraction below 1)")
    if isinstance(value, float) and value >= 1:
        if value != int(value):
            raise SettingError("limit", value, "a whole number of documents", qualifier=" above 1")
        return int(value)
    return value
