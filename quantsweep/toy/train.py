"""Train the embedded ``toy`` model: openPangu-Embedded's architecture, scaled down.

The checkpoint is a plain transformers Llama checkpoint (no remote code) with the
openPangu-Embedded choices: bias on q/k/v/o, none in the MLP, grouped-query
attention, RMSNorm, SwiGLU, RoPE and an untied output head.

Training is bit-reproducible on one machine: fixed seeds, a data order drawn from
:class:`random.Random`, and one CPU thread (multi-threaded reductions may sum in a
different order from run to run).

Usage::

    python -m quantsweep.toy.train --out quantsweep/assets/toy   # the committed assets

Example:
    >>> import tempfile
    >>> from quantsweep.toy import REQUIRED_FILES
    >>> tiny = TrainConfig(steps=2, batch_size=2, seq_len=16, hidden_size=32, intermediate_size=64, num_layers=1)
    >>> out = train(tiny, tempfile.mkdtemp(), progress=False)
    >>> all((out / name).is_file() for name in REQUIRED_FILES)
    True
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from quantsweep.toy.tokenizer import MAX_LENGTH, build_tokenizer
from quantsweep.toy.world import DEFAULT_N_ENTITIES, DEFAULT_WORLD_SEED, bios_stream, make_world

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that decides the trained weights.

    Attributes:
        steps: optimizer steps.
        seed: seeds the weight init and the data order.
        batch_size: sequences per step.
        seq_len: tokens per sequence.
        lr: peak AdamW learning rate, after ``warmup_steps`` linear warm-up, then cosine to 10 %.
        weight_decay: AdamW decoupled weight decay.
        n_entities: entities in the synthetic world (4 facts each).
        world_seed: seed of the world (which entity has which facts).
        hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads: model shape.

    Example:
        >>> TrainConfig(steps=10).batch_size
        16
    """

    steps: int = 6000
    seed: int = 0
    batch_size: int = 16
    seq_len: int = 96
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    n_entities: int = DEFAULT_N_ENTITIES
    world_seed: int = DEFAULT_WORLD_SEED
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.seq_len > MAX_LENGTH:
            raise ValueError(f"seq_len must be <= {MAX_LENGTH}, got {self.seq_len}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must divide by num_heads ({self.num_heads}), "
                f"and num_heads by num_kv_heads ({self.num_kv_heads})"
            )


def model_config(config: TrainConfig, vocab_size: int):
    """The ``LlamaConfig`` of the toy model: openPangu-Embedded's layout, scaled down.

    Example:
        >>> model_config(TrainConfig(), 123).attention_bias
        True
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.hidden_size // config.num_heads,
        hidden_act="silu",
        max_position_embeddings=MAX_LENGTH,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        attention_bias=True,  # openPangu-Embedded: q/k/v/o carry a bias
        mlp_bias=False,
        tie_word_embeddings=False,
        initializer_range=0.02,
        bos_token_id=1,
        pad_token_id=0,
        eos_token_id=2,
    )


def batches(config: TrainConfig, tokenizer):
    """Deterministic training batches, ``[batch_size, seq_len]`` token ids.

    Each sequence starts at a line boundary, with BOS half of the time (lm-eval puts
    BOS before rolling windows but not before multiple-choice contexts), and packs
    entity bios until it is full.

    Example:
        >>> tok = build_tokenizer()
        >>> next(batches(TrainConfig(batch_size=2, seq_len=8), tok)).shape
        torch.Size([2, 8])
    """
    world = make_world(config.n_entities, config.world_seed)
    stream = bios_stream(world, seed=config.seed)
    rng = random.Random(config.seed + 1)
    while True:
        rows = []
        for _ in range(config.batch_size):
            ids = [tokenizer.bos_token_id] if rng.random() < 0.5 else []
            while len(ids) < config.seq_len:
                ids.extend(tokenizer.encode(next(stream), add_special_tokens=False))
            rows.append(ids[: config.seq_len])
        yield torch.tensor(rows, dtype=torch.long)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak.

    Example:
        >>> learning_rate(0, TrainConfig(lr=1.0, warmup_steps=10))
        0.1
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train(config: TrainConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Train the toy model and write config, weights, tokenizer and provenance to ``out_dir``.

    Returns the output directory. Runs on one CPU thread so that two runs with the
    same config give bit-identical weights.

    Example:
        >>> import tempfile
        >>> tiny = TrainConfig(steps=2, batch_size=2, seq_len=16, hidden_size=32, intermediate_size=64, num_layers=1)
        >>> first = train(tiny, tempfile.mkdtemp(), progress=False)
        >>> second = train(tiny, tempfile.mkdtemp(), progress=False)
        >>> (first / WEIGHTS_FILE).read_bytes() == (second / WEIGHTS_FILE).read_bytes()  # bit-identical
        True
    """
    from transformers import LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(model_config(config, len(tokenizer))).float()
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
            betas=(0.9, 0.95),
        )
        data = batches(config, tokenizer)
        bar = tqdm(range(config.steps), desc="train toy", unit="step", disable=not progress)
        smoothed = None
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)
            input_ids = next(data)
            loss = model(input_ids=input_ids, labels=input_ids).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
            bar.set_postfix(loss=f"{smoothed:.3f}")
            if (step + 1) % 100 == 0 or step + 1 == config.steps:
                logger.info("step %d/%d loss %.4f (smoothed %.4f)", step + 1, config.steps, loss.item(), smoothed)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "train_config.json").write_text(json.dumps(asdict(config), indent=2, sort_keys=True) + "\n")
    _write_provenance(out_dir, config, smoothed)
    return out_dir


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_provenance(out_dir: Path, config: TrainConfig, final_loss: float | None) -> None:
    import tokenizers
    import transformers

    defaults = TrainConfig()
    flags = [
        f"--{name.replace('_', '-')} {value}"
        for name, value in asdict(config).items()
        if value != getattr(defaults, name)
    ]
    command = " ".join(["python -m quantsweep.toy.train --out DIR", *flags])
    lines = [
        "# Provenance of the toy model",
        "",
        "Written by `quantsweep.toy.train`; every file in this folder is its output.",
        "",
        f"- command: `{command}`",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
        f"python {sys.version.split()[0]}",
        f"- sha256 of {WEIGHTS_FILE}: `{_sha256(out_dir / WEIGHTS_FILE)}`",
        f"- final smoothed training loss (nats/token): {final_loss:.4f}"
        if final_loss is not None
        else "- no steps run",
        "- training config: see train_config.json",
        "",
        "Bit-identical weights are expected from the same command with the same torch build on one CPU thread;",
        "another torch version or CPU may differ in the last bits.",
        "",
    ]
    (out_dir / "PROVENANCE.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``python -m quantsweep.toy.train --out DIR``.

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> main(["--out", out, "--steps", "2", "--batch-size", "2", "--seq-len", "16"])
        0
        >>> "--steps 2" in (Path(out) / "PROVENANCE.md").read_text()
        True
    """
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description="Train the embedded toy model (CPU, one thread, deterministic).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--n-entities", type=int, default=defaults.n_entities)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = TrainConfig(
            steps=args.steps,
            seed=args.seed,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            lr=args.lr,
            weight_decay=args.weight_decay,
            n_entities=args.n_entities,
        )
    except ValueError as error:
        parser.error(str(error))
    out = train(config, args.out)
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
