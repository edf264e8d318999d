"""Calibration data under one protocol: N samples of L tokens, drawn deterministically.

Every calibrated method (GPTQ, AWQ, SmoothQuant, GPTAQ, BiLLM, SliM-LLM) takes the
same :class:`CalibrationData`: ``n_samples`` windows of ``seq_len`` token ids cut
at random offsets from one long tokenized text, with a ``torch.Generator`` seeded
by ``seed``. The literature default is 128 x 2048 windows from WikiText-2 or C4.

Sources (``source`` argument of :func:`load_calibration`):

* ``"toy"``: the synthetic corpus of :mod:`quantsweep.toy` (no files, no network).
* a path to a local ``.txt`` file (the whole file is the text) or ``.jsonl`` file
  (one JSON object a line, its ``text`` field is used; documents are joined by a
  blank line).
* ``"wikitext2"``, ``"c4"``, ``"pile"``: loaded with ``datasets.load_dataset`` when
  the Hugging Face Hub is reachable or the dataset is already in the local cache.
  Offline and uncached, a :class:`ValueError` says how to supply a local file
  instead; the reachability probe takes at most a few seconds, it never hangs.

Results record :meth:`CalibrationData.provenance` (source, N, L, seed, and a
fingerprint of the token ids), so every number can be traced to its data.

Example:
    >>> from quantsweep.toy.tokenizer import build_tokenizer
    >>> calibration = load_calibration("toy", build_tokenizer(), n_samples=8, seq_len=64)
    >>> calibration.input_ids.shape
    torch.Size([8, 64])
    >>> again = load_calibration("toy", build_tokenizer(), n_samples=8, seq_len=64)
    >>> again.provenance() == calibration.provenance()  # same source, N, L and seed: same windows
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from quantsweep._text import read_utf8

logger = logging.getLogger(__name__)

# name -> (load_dataset positional args, keyword args, split, text field)
HF_SOURCES: dict[str, tuple[tuple[str, ...], dict[str, Any], str, str]] = {
    "wikitext2": (("wikitext", "wikitext-2-raw-v1"), {}, "train", "text"),
    "c4": (
        ("allenai/c4",),
        {"data_files": {"train": "en/c4-train.00000-of-01024.json.gz"}},
        "train",
        "text",
    ),
    "pile": (("mit-han-lab/pile-val-backup",), {}, "validation", "text"),
}
LOCAL_SUFFIXES = (".txt", ".jsonl")
NAMED_SOURCES = ("toy",) + tuple(HF_SOURCES)

# The probe of the Hub: one TCP connect with this timeout (seconds).
# Cap on the characters taken from a Hugging Face dataset before tokenizing: enough for
# 128 x 2048 tokens many times over, and it keeps tokenizing C4 or the Pile quick.
_HF_MAX_CHARS = 20_000_000


@dataclass(frozen=True, eq=False)
class CalibrationData:
    """Token windows for calibration, with where they came from.

    Attributes:
        input_ids: LongTensor ``[n_samples, seq_len]``.
        source: the source as given (``"toy"``, ``"wikitext2"``, or a file path).
        n_samples: N, the number of windows.
        seq_len: L, tokens per window.
        seed: seed of the window sampling.
        n_source_tokens: length of the tokenized text the windows were cut from.

    Example:
        >>> data = CalibrationData(torch.zeros(2, 4, dtype=torch.long), "toy", 2, 4, 0)
        >>> data.provenance()["n_samples"]
        2
    """

    input_ids: torch.Tensor
    source: str
    n_samples: int
    seq_len: int
    seed: int
    n_source_tokens: int | None = field(default=None)

    def __post_init__(self) -> None:
        ids = self.input_ids
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
            raise TypeError("CalibrationData.input_ids must be a LongTensor of shape [n_samples, seq_len]")
        if tuple(ids.shape) != (self.n_samples, self.seq_len):
            raise ValueError(
                f"CalibrationData.input_ids has shape {tuple(ids.shape)}, expected "
                f"({self.n_samples}, {self.seq_len}) from n_samples and seq_len"
            )

    def fingerprint(self) -> str:
        """A short SHA-256 of the token ids, so two runs can tell they used the same data.

        Example:
            >>> len(CalibrationData(torch.zeros(1, 2, dtype=torch.long), "toy", 1, 2, 0).fingerprint())
            16
        """
        return hashlib.sha256(self.input_ids.cpu().numpy().tobytes()).hexdigest()[:16]

    def provenance(self) -> dict[str, Any]:
        """What results record about the calibration data.

        Example:
            >>> sorted(CalibrationData(torch.zeros(1, 2, dtype=torch.long), "toy", 1, 2, 0).provenance())
            ['fingerprint', 'n_samples', 'n_source_tokens', 'seed', 'seq_len', 'source']
        """
        return {
            "source": self.source,
            "n_samples": self.n_samples,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "n_source_tokens": self.n_source_tokens,
            "fingerprint": self.fingerprint(),
        }


def load_calibration(
    source: str | os.PathLike,
    tokenizer,
    n_samples: int = 128,
    seq_len: int = 2048,
    seed: int = 0,
) -> CalibrationData:
    """Tokenize a source and cut ``n_samples`` random windows of ``seq_len`` tokens from it.

    Window starts are drawn uniformly (with replacement) from every offset where a
    full window fits, using ``torch.Generator().manual_seed(seed)``; the same
    source, tokenizer and seed always give the same windows.

    Args:
        source: ``"toy"``, ``"wikitext2"``, ``"c4"``, ``"pile"``, or a path to a local
            ``.txt`` / ``.jsonl`` file.
        tokenizer: a Hugging Face tokenizer (anything callable as ``tokenizer(text)``
            returning ``{"input_ids": [...]}``).
        n_samples: N, number of windows (literature default 128).
        seq_len: L, tokens per window (literature default 2048).
        seed: seed of the window sampling.

    Raises:
        ValueError: unknown source, missing file, dataset unreachable offline, or a
            text shorter than ``seq_len`` tokens.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from quantsweep.toy.tokenizer import build_tokenizer
        >>> text = Path(tempfile.mkdtemp()) / "bios.txt"
        >>> _ = text.write_text("the pet of ba ko mi is a cat .\\n" * 40)
        >>> calibration = load_calibration(str(text), build_tokenizer(), n_samples=4, seq_len=16, seed=1)
        >>> calibration.input_ids.shape, calibration.n_source_tokens
        (torch.Size([4, 16]), 440)
        >>> load_calibration(str(text), build_tokenizer(), n_samples=4, seq_len=1000)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: calibration source '...bios.txt' has only 440 tokens, fewer than seq_len=1000; ...
    """
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples <= 0:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    label = os.fspath(source)
    if label == "toy":
        ids = _toy_ids(tokenizer, n_samples * seq_len, seed)
    else:
        ids = _tokenize(_read_source(label), tokenizer)
    if ids.numel() < seq_len:
        raise ValueError(
            f"calibration source {label!r} has only {ids.numel()} tokens, fewer than seq_len={seq_len}; "
            "use a longer text or a smaller seq_len"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n_samples,), generator=generator)
    windows = torch.stack([ids[start : start + seq_len] for start in starts.tolist()])
    logger.info("calibration: %d x %d tokens from %s (seed %d)", n_samples, seq_len, label, seed)
    return CalibrationData(
        input_ids=windows,
        source=label,
        n_samples=n_samples,
        seq_len=seq_len,
        seed=seed,
        n_source_tokens=int(ids.numel()),
    )


def _tokenize(text: str, tokenizer) -> torch.Tensor:
    # The whole source is tokenized once and cut into windows afterwards, so its length
    # exceeding the model's context is expected: silence transformers' warning about it.
    try:
        encoded = tokenizer(text, add_special_tokens=False, verbose=False)
    except TypeError:  # a plain callable without transformers' keyword
        encoded = tokenizer(text, add_special_tokens=False)
    ids = encoded["input_ids"] if not hasattr(encoded, "input_ids") else encoded.input_ids
    return torch.as_tensor(ids, dtype=torch.long).flatten()


def require_calibration_source(recipes: list[str], source: str | None, where: str = "") -> None:
    """Refuse calibrated recipes without a calibration source, or with an unknown one, before loading.

    Example:
        >>> require_calibration_source(["w4-gptq"], "toy")  # accepted: returns None
        >>> require_calibration_source(["w4-gptq"], None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: recipes w4-gptq need calibration data; pass --calib-source ...
    """
    if not source:
        raise ValueError(
            f"{where}recipes {', '.join(recipes)} need calibration data; pass --calib-source "
            "(or calibration.source in a sweep spec): a .txt/.jsonl file, or wikitext2/c4/pile when "
            "the hub is reachable"
        )
    check_calibration_source(source)


def check_calibration_source(source: str) -> None:
    """Refuse an unknown calibration source or a missing file, before any model loads.

    Example:
        >>> check_calibration_source("toy")  # accepted: returns None
        >>> check_calibration_source("wiki.parquet")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: unknown calibration source 'wiki.parquet'; use one of toy, wikitext2, c4, pile ...
    """
    if source == "toy" or source in HF_SOURCES:
        return
    _local_text(source)  # parsed whole now: a bad line is named before any model loads


def _local_text(source: str) -> str:
    """The text of a local calibration file, checked (exists, parses, holds text); else a ValueError."""
    path = Path(source)
    if path.suffix not in LOCAL_SUFFIXES:
        raise ValueError(
            f"unknown calibration source {source!r}; use one of {', '.join(NAMED_SOURCES)} "
            f"or a path to a local {' / '.join(LOCAL_SUFFIXES)} file"
        )
    if not path.is_file():
        raise ValueError(f"calibration file {source!r} does not exist")
    text = _read_local(path)
    if not text.strip():
        raise ValueError(f"calibration file {source!r} holds no text")
    return text


def _read_source(source: str) -> str:
    return _hf_text(source) if source in HF_SOURCES else _local_text(source)  # a local file is parsed once


# The toy corpus is generated, so we draw texts until the windows barely overlap.
_TOY_MAX_TEXTS = 1 << 16


def _toy_ids(tokenizer, wanted_tokens: int, seed: int) -> torch.Tensor:
    # Imported lazily: the toy package pulls in its own generator and tokenizer.
    from quantsweep.toy import calibration_texts

    n_texts = 16
    while True:
        ids = _tokenize("\n\n".join(calibration_texts(n_texts, seed=abs(seed))), tokenizer)
        if ids.numel() >= wanted_tokens or n_texts >= _TOY_MAX_TEXTS:
            return ids
        n_texts *= 2


def _read_local(path: Path) -> str:
    """A local file's calibration text; a problem is named by file and line (``ValueError``)."""
    text = read_utf8(path)
    if path.suffix == ".txt":
        return text
    texts = []
    for number, line in enumerate(text.split("\n"), start=1):  # "\n" only: line numbers as an editor counts them
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f"{path}:{number}: each JSONL line needs a string 'text' field")
        texts.append(record["text"])
    return "\n\n".join(texts)


def _offline_hint(source: str, reason: str) -> str:
    return (
        f"calibration source {source!r} could not be loaded: {reason}. Offline, save the text to a "
        "local .txt file (or .jsonl with a 'text' field per line) and pass its path instead "
        "(e.g. --calib-source ./wikitext2-train.txt), or use --calib-source toy"
    )


def _hf_text(source: str) -> str:
    try:
        import datasets
    except ImportError:
        raise ValueError(_offline_hint(source, "the 'datasets' package is not installed")) from None
    args, kwargs, split, text_field = HF_SOURCES[source]
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    from quantsweep.hub import hub_reachable

    if not hub_reachable():
        # Only the local cache can answer; tell datasets and the hub client so they
        # fail fast instead of retrying the network.
        datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
        logger.info("Hugging Face Hub unreachable; trying the local datasets cache for %s", source)
    try:
        dataset = datasets.load_dataset(*args, split=split, **kwargs)
    except Exception as error:  # noqa: BLE001 - datasets raises many types when offline or missing
        raise ValueError(_offline_hint(source, f"{type(error).__name__}: {error}")) from error
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
    pieces, total = [], 0
    for text in dataset[text_field]:
        pieces.append(text)
        total += len(text)
        if total >= _HF_MAX_CHARS:
            break
    return "\n\n".join(pieces)
