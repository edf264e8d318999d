"""Rotated W4A4 perplexity: quantsweep's rotation against llm-compressor's SpinQuant (random Hadamard).

Same model, same calibration ids, same evaluation ids, one process, CPU, fp32. For each model:

* ``fp``: the unquantized model.
* ``ours sq``: quantsweep's ``w4a4-smoothquant`` recipe (the study's broken setting).
* ``ours rotate``: :func:`quantsweep.methods.rotation.rotate_model` alone (seed 0, online
  Hadamard on ``down_proj``), unquantized: must equal fp.
* ``ours rotate+gptq``: rotation, then quantsweep's GPTQ (W4, per output channel,
  symmetric, act-order, 1% damping), then 4-bit per-token symmetric dynamic activations
  on every decoder Linear. Two diagnostics: the quantizers attached before GPTQ, and
  act-order off.
* ``peer rotate``: llm-compressor ``SpinQuantModifier(rotations=["R1", "R4"],
  transform_type="random-hadamard")`` alone (R1 = residual stream, R4 = online Hadamard
  on ``down_proj``: the same two rotations as ours), unquantized.
* ``peer rotate+gptq``: the same SpinQuant stage, then ``GPTQModifier`` with the same
  scheme (int4 weights per channel, symmetric; int4 per-token dynamic symmetric input
  activations; ``lm_head`` left out), 1% damping, act-order off (peer default "static"
  groups do not apply to per-channel).
* ``peer gptq``: the peer's GPTQ W4A4 without rotation, for scale.

Models: ``toy`` (trained, hidden 128, 4 layers; calibration 16 x 128 toy-corpus windows,
evaluation 64 x 128 other windows) and ``pangu-outlier`` (random openPangu-Embedded
shape, hidden 64, 2 layers, GQA, q/k/v/o biases, with outlier channels in the RMSNorm
scales and on ``down_proj``'s input: ``tests/helpers/outlier_models.py``; calibration
32 x 64 and evaluation 32 x 64 tokens sampled from the FP model).

llm-compressor lives in its own venv, with this repository installed there without
dependencies (``pip install -e . --no-deps``)::

    /work/venvs/llmc/bin/python benchmarks/rotation_peer.py

Without llm-compressor the peer rows are skipped and the reason recorded. Writes
``benchmarks/results/rotation_peer.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from helpers.outlier_models import perplexity, sample_tokens, sequence_nll, write_outlier_pangu  # noqa: E402

import quantsweep  # noqa: E402
from quantsweep.calibration import load_calibration  # noqa: E402
from quantsweep.methods.activation import attach_activation_quant  # noqa: E402
from quantsweep.methods.gptq import GPTQConfig, apply_gptq  # noqa: E402
from quantsweep.methods.rotation import rotate_model  # noqa: E402
from quantsweep.models.layout import decoder_linears  # noqa: E402
from quantsweep.models.snapshot import WeightSnapshot  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "rotation_peer.json"
logger = logging.getLogger("rotation_peer")


def load_models(workdir: Path):
    """name -> (model, tokenizer, calibration ids, evaluation ids)."""
    toy, tokenizer = quantsweep.load_model("toy")
    toy_cal = load_calibration("toy", tokenizer, n_samples=16, seq_len=128, seed=0).input_ids
    toy_eval = load_calibration("toy", tokenizer, n_samples=64, seq_len=128, seed=7).input_ids
    write_outlier_pangu(workdir / "pangu")
    pangu, pangu_tokenizer = quantsweep.load_model(workdir / "pangu", device="cpu", trust_remote_code=True)
    return {
        "toy": (toy, tokenizer, toy_cal, toy_eval),
        "pangu-outlier": (
            pangu,
            pangu_tokenizer,
            sample_tokens(pangu, 32, 64, seed=0),
            sample_tokens(pangu, 32, 64, seed=1),
        ),
    }


def attach_a4(model) -> None:
    for linear in decoder_linears(model).values():
        attach_activation_quant(linear, bits=4)


def ours(model, calibration, evaluation, seeds) -> dict:
    snapshot = WeightSnapshot(model)
    rows = {"fp": perplexity(sequence_nll(model, evaluation))}
    quantsweep.quantize(model, "w4a4-smoothquant", calibration=calibration)
    rows["ours sq"] = perplexity(sequence_nll(model, evaluation))
    snapshot.restore(model)
    rotate_model(model, seed=0)
    rows["ours rotate"] = perplexity(sequence_nll(model, evaluation))
    snapshot.restore(model)
    # The recipe, then two diagnostics for the gap to the peer: activation quantizers attached
    # before GPTQ (its Hessians see quantized inputs, like the peer's quantization-aware
    # calibration), and act-order off.
    variants = {
        "ours rotate+gptq": (True, False),
        "ours rotate+gptq, quantizers during calibration": (True, True),
        "ours rotate+gptq, no act-order": (False, False),
    }
    for name, (act_order, quantizers_first) in variants.items():
        rows[name] = []
        for seed in seeds:
            rotate_model(model, seed=seed)
            if quantizers_first:
                attach_a4(model)
            config = GPTQConfig(
                name="w4a4-rotate-gptq", method="gptq", bits=4, group_size=None, symmetric=True, act_order=act_order
            )
            apply_gptq(model, config, calibration=calibration)
            if not quantizers_first:
                attach_a4(model)
            rows[name].append(perplexity(sequence_nll(model, evaluation)))
            snapshot.restore(model)
    return rows


def peer_w4a4_scheme():
    return {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "channel"},
            "input_activations": {
                "num_bits": 4,
                "type": "int",
                "symmetric": True,
                "strategy": "token",
                "dynamic": True,
            },
        }
    }


def peer(model, tokenizer, calibration, evaluation, seeds) -> dict:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.transform import SpinQuantModifier

    dataset = Dataset.from_dict(
        {"input_ids": calibration.tolist(), "attention_mask": torch.ones_like(calibration).tolist()}
    )
    common = dict(
        dataset=dataset,
        processor=tokenizer,
        num_calibration_samples=calibration.shape[0],
        max_seq_length=calibration.shape[1],
    )

    def spin():
        return SpinQuantModifier(rotations=["R1", "R4"], transform_type="random-hadamard")

    def gptq():
        return GPTQModifier(config_groups=peer_w4a4_scheme(), ignore=["lm_head"], dampening_frac=0.01)

    import llmcompressor.modifiers.transform.spinquant.base as spinquant_base
    from compressed_tensors.transform.factory.base import TransformFactory

    center, factory_init = spinquant_base.center_embeddings, TransformFactory.__init__

    def run(recipe, seed=None, centering=True):
        """Perplexity after ``oneshot``; ``seed`` seeds the peer's random Hadamard signs."""
        spinquant_base.center_embeddings = center if centering else (lambda embedding: None)
        if seed is not None:
            TransformFactory.__init__ = lambda self, name, scheme, *_, **__: factory_init(self, name, scheme, seed)
        try:
            work = copy.deepcopy(model)
            # oneshot re-reads the config from config.name_or_path: point it at a plain Llama config.
            config_dir = Path(tempfile.mkdtemp())
            work.config.save_pretrained(config_dir)
            work.config.name_or_path = str(config_dir)
            oneshot(model=work, recipe=recipe, **common)
            return perplexity(sequence_nll(work, evaluation))
        finally:
            spinquant_base.center_embeddings, TransformFactory.__init__ = center, factory_init

    # SpinQuant centers the embedding rows (subtracts each row's mean), which keeps the
    # function only before a LayerNorm; the "no centering" rows switch that off to see its share.
    return {
        "peer rotate": run([spin()], seed=seeds[0]),
        "peer rotate, no centering": run([spin()], seed=seeds[0], centering=False),
        "peer gptq": run([gptq()]),
        "peer rotate+gptq": [run([spin(), gptq()], seed=seed) for seed in seeds],
        "peer rotate+gptq, no centering": [run([spin(), gptq()], seed=seed, centering=False) for seed in seeds],
    }


def summary(values):
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "runs": values}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=5, help="rotation seeds 0..N-1 (ours and the peer's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    try:
        import llmcompressor

        peer_version, skipped = llmcompressor.__version__, None
    except ImportError as error:
        peer_version, skipped = None, f"llm-compressor not importable in {sys.executable} ({error})"
    results = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "threads": args.threads, "device": "cpu", "llmcompressor": peer_version},
        "peer_skipped": skipped,
        "models": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir:
        for name, (model, tokenizer, calibration, evaluation) in load_models(Path(workdir)).items():
            seeds = list(range(args.seeds))
            rows = ours(model, calibration, evaluation, seeds)
            if skipped is None:
                rows.update(peer(model, tokenizer, calibration, evaluation, seeds))
            for key, value in list(rows.items()):
                if isinstance(value, list):
                    rows[key] = summary(value)
            if skipped is None:
                rows["ours / peer, mean over seeds"] = (
                    rows["ours rotate+gptq"]["mean"] / rows["peer rotate+gptq"]["mean"]
                )
                rows["ours / peer no centering, mean over seeds"] = (
                    rows["ours rotate+gptq"]["mean"] / rows["peer rotate+gptq, no centering"]["mean"]
                )
            results["models"][name] = rows
            print(name, json.dumps(rows, indent=1))  # noqa: T201 (script output)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
