"""The embedded ``toy`` model: a tiny openPangu-Embedded-shaped LM trained by this repo.

Everything about it is made here: a synthetic world of entities and facts
(:mod:`quantsweep.toy.world`), a word-level tokenizer (:mod:`quantsweep.toy.tokenizer`),
the training script (:mod:`quantsweep.toy.train`) and the data of the demo lm-eval
tasks ``toy_mc4``, ``toy_mc2``, ``toy_gen`` and ``toy_ppl`` (:mod:`quantsweep.toy.tasks`).
The trained weights are committed under ``quantsweep/assets/toy``.

Example:
    >>> from transformers import AutoModelForCausalLM
    >>> model = AutoModelForCausalLM.from_pretrained(toy_model_dir())  # a plain Llama checkpoint
    >>> model.config.model_type, model.config.num_hidden_layers
    ('llama', 4)
"""

from __future__ import annotations

from pathlib import Path

TOY_MODEL_ID = "toy"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
CALIBRATION_BIOS_PER_SAMPLE = 3  # about 115 tokens a sample
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "toy"


def toy_model_dir() -> Path:
    """The folder of the committed toy checkpoint (config, weights, tokenizer).

    Raises FileNotFoundError naming the missing files, with the command that rebuilds them.

    Example:
        >>> (toy_model_dir() / "config.json").is_file()
        True
    """
    directory = ASSETS_DIR
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"toy model files missing from {directory}: {', '.join(missing)}. "
            f"Rebuild them with: python -m quantsweep.toy.train --out {directory}"
        )
    return directory


def calibration_texts(n_samples: int, seed: int = 0) -> list[str]:
    """``n_samples`` texts from the toy model's training distribution, deterministic in ``seed``.

    Each text is a few entity bios (one fact a line), drawn from a stream that
    neither training (default seed) nor the ``toy_ppl`` task uses.

    Example:
        >>> calibration_texts(2) == calibration_texts(2)
        True
        >>> len(calibration_texts(3, seed=1))
        3
    """
    from quantsweep.toy.tasks import CALIBRATION_STREAM_SEED, bio_texts

    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 0:
        raise ValueError(f"n_samples must be a non-negative int, got {n_samples!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return bio_texts(n_samples, CALIBRATION_BIOS_PER_SAMPLE, CALIBRATION_STREAM_SEED + 7919 * seed)


__all__ = ["TOY_MODEL_ID", "calibration_texts", "toy_model_dir"]
