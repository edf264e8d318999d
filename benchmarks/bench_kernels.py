"""Measured, not theoretical: fp against real low-bit kernels on CPU, ratios from one run.

Variants, each in its own process (so that each peak RSS is its own):

* ``fp32`` and ``bf16``: the random-weight model as is (the fp baselines);
* ``w8-bnb``: LLM.int8() bitsandbytes modules (``quantsweep.apply_recipe``);
* ``w4-bnb-nf4``: bitsandbytes NF4 modules;
* ``w4-gptq``: quantsweep's ``w4-gptq`` export (``gptq_v2``), loaded by GPTQModel's own
  loader with its CPU kernel ``TorchLinear`` (fp16 / bf16 only), in bf16.

The model is a random-weight Llama with openPangu-Embedded-1B's layer shape (hidden
1536, intermediate 6144, 12 query / 6 KV heads, q/k/v/o biases) and only a few layers
and a small vocabulary, so the decoder Linears (what the recipes change) dominate.
For each variant: bytes of the weights (theory and as held in memory), peak process
RSS while timing, prefill tokens/s (512-token prompt, batch 1) and decode tokens/s
(128 greedy tokens), median of ``--repeats`` after one warm-up, and the ratios to fp32
and bf16 measured in the same run. Results: ``benchmarks/results/bench_kernels.json``.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_kernels.py            # all variants
    python benchmarks/bench_kernels.py --layers 2 --repeats 3 --variants fp32,w8-bnb
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "bench_kernels.json"
VARIANTS = ("fp32", "bf16", "w8-bnb", "w4-bnb-nf4", "w4-gptq")
PANGU_1B = {"hidden_size": 1536, "intermediate_size": 6144, "num_attention_heads": 12, "num_key_value_heads": 6}


def build_model(layers: int, vocab: int, seed: int = 0):
    """Random-weight Llama with openPangu-Embedded-1B's layer shape, fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        num_hidden_layers=layers,
        max_position_embeddings=2048,
        attention_bias=True,
        tie_word_embeddings=False,
        **PANGU_1B,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.02)
    return model


def _weights_in_memory(model) -> int:
    from quantsweep.measure.cost import _bnb_extra_bytes, _is_bnb_module

    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for n, b in model.named_buffers() if not n.endswith("inv_freq"))
    total += sum(_bnb_extra_bytes(m) for m in model.modules() if _is_bnb_module(m) and hasattr(m, "in_features"))
    return total


def run_variant(variant: str, args) -> dict:
    """Build one variant in this process, time it, return its record."""
    import quantsweep
    from quantsweep.measure.cost import cost_fields, disk_bytes
    from quantsweep.measure.step import timed
    from quantsweep.recipes import get_recipe

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = build_model(args.layers, args.vocab)
    record = {"variant": variant}
    if variant in ("fp32", "bf16"):
        if variant == "bf16":
            model = model.to(torch.bfloat16)
        result = quantsweep.apply_recipe(model, "fp")
        record.update(cost_fields(model, get_recipe("fp"), result))
    elif variant.endswith("bnb") or "-bnb-" in variant:
        result = quantsweep.apply_recipe(model, variant)
        record.update(cost_fields(model, get_recipe(variant), result))
    elif variant == "export-w4-gptq":  # its own process, so the loader's process starts clean
        from quantsweep.export import export_gptq

        generator = torch.Generator().manual_seed(0)
        calibration = torch.randint(0, args.vocab, (args.calib_samples, args.calib_seq_len), generator=generator)
        result = quantsweep.apply_recipe(model, "w4-gptq", calibration=calibration)
        folder = Path(args.work) / "w4-gptq"
        shutil.rmtree(folder, ignore_errors=True)
        _, tokenizer = quantsweep.load_model("toy", device="cpu")  # GPTQModel.load wants a tokenizer beside the weights
        export_gptq(
            model, result, folder, config=get_recipe("w4-gptq"), tokenizer=tokenizer, checkpoint_format="gptq_v2"
        )
        (folder / "cost.json").write_text(
            json.dumps(cost_fields(model, get_recipe("w4-gptq"), result, export_dir=folder))
        )
        return {"variant": variant, "seconds": time.perf_counter() - started}
    elif variant == "w4-gptq":
        from gptqmodel import BACKEND, GPTQModel

        folder = Path(args.work) / "w4-gptq"
        del model
        loaded = GPTQModel.load(str(folder), device="cpu", dtype=torch.bfloat16, backend=BACKEND.TORCH)
        model = loaded.model
        record.update(json.loads((folder / "cost.json").read_text()))
        record["kernel"] = f"gptqmodel {type(model.model.layers[0].mlp.down_proj).__name__}"
        record["export_bytes_on_disk"] = disk_bytes(folder)
    else:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    record["setup_seconds"] = time.perf_counter() - started
    record["weights_bytes_in_memory"] = _weights_in_memory(model)
    record.update(
        timed(model, None, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=args.repeats, warmup=1)
    )
    record["dtype"] = str(next(p for p in model.parameters() if p.is_floating_point()).dtype)
    return record


def _child(variant: str, args) -> dict:
    command = [sys.executable, __file__, "--child", variant, "--work", args.work]
    for name in (
        "layers",
        "vocab",
        "repeats",
        "prompt_tokens",
        "new_tokens",
        "threads",
        "calib_samples",
        "calib_seq_len",
    ):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        return {"variant": variant, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


TIMED = ("peak_memory_bytes", "prefill_tokens_per_s", "decode_tokens_per_s")


def combine_rounds(rounds: dict[str, list[dict]]) -> list[dict]:
    """One record per variant: medians over rounds, and ratios paired within each round.

    The machine is shared, so its load drifts between rounds; a ratio taken within a
    round (every variant ran back to back) cancels most of that drift, and its median
    over rounds is what the table reports. ``*_rounds`` keep every round's value.
    """
    combined = []
    for _variant, runs in rounds.items():
        good = [r for r in runs if "error" not in r]
        if not good:
            combined.append(runs[0])
            continue
        record = dict(good[0])
        for key in TIMED:
            values = [r[key] for r in good if r.get(key) is not None]
            record[f"{key}_rounds"] = values
            record[key] = statistics.median(values) if values else None
        for base in ("fp32", "bf16"):
            base_runs = rounds.get(base, [])
            for key in TIMED:
                ratios = [
                    r[key] / b[key]
                    for r, b in zip(runs, base_runs)
                    if "error" not in r and "error" not in b and r.get(key) and b.get(key)
                ]
                if ratios:
                    record[f"{key}_vs_{base}"] = statistics.median(ratios)
                    record[f"{key}_vs_{base}_rounds"] = ratios
            if base in rounds and "error" not in rounds[base][0] and record.get("weights_bytes_in_memory"):
                record[f"weights_bytes_in_memory_vs_{base}"] = (
                    record["weights_bytes_in_memory"] / rounds[base][0]["weights_bytes_in_memory"]
                )
        combined.append(record)
    return combined


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--rounds", type=int, default=3, help="every variant once per round; medians and paired ratios over rounds"
    )
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--calib-seq-len", type=int, default=256)
    parser.add_argument("--work", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_variant(args.child, args)))
        return 0
    args.work = args.work or tempfile.mkdtemp(prefix="bench_kernels_")
    variants = args.variants.split(",")
    rounds: dict[str, list[dict]] = {variant: [] for variant in variants}
    if "w4-gptq" in variants:
        export = _child("export-w4-gptq", args)  # once: every round loads the same checkpoint
        if "error" in export:
            rounds["w4-gptq"] = [{**export, "variant": "w4-gptq"}] * args.rounds
            variants.remove("w4-gptq")
    for round_index in range(args.rounds):
        for variant in variants:
            print(f"round {round_index + 1}/{args.rounds}: {variant} ...", file=sys.stderr, flush=True)
            rounds[variant].append(_child(variant, args))
            print(
                json.dumps(
                    {
                        k: rounds[variant][-1].get(k)
                        for k in (
                            "variant",
                            "prefill_tokens_per_s",
                            "decode_tokens_per_s",
                            "peak_memory_bytes",
                            "error",
                        )
                    }
                ),
                file=sys.stderr,
                flush=True,
            )
    records = combine_rounds(rounds)
    import bitsandbytes  # noqa: F401  (versions below)

    versions = {
        "torch": torch.__version__,
        "bitsandbytes": _version("bitsandbytes"),
        "gptqmodel": _version("gptqmodel"),
        "transformers": _version("transformers"),
    }
    payload = {
        "benchmark": "bench_kernels",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
        },
        "model": {
            "shape": "openPangu-Embedded-1B layer shape",
            **PANGU_1B,
            "layers": args.layers,
            "vocab": args.vocab,
            "weights": "random",
        },
        "settings": {
            "prompt_tokens": args.prompt_tokens,
            "new_tokens": args.new_tokens,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "warmup": 1,
            "batch_size": 1,
        },
        "versions": versions,
        "records": records,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print(format_table(records))
    return 0


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def format_table(records: list[dict]) -> str:
    """A markdown table of the records (for the README)."""
    lines = [
        "| variant | kernel | bits/weight (theory) | weights in memory (MB) | peak RSS (MB) | "
        "prefill tok/s (x fp32) | decode tok/s (x fp32) |",
        "|---|---|---|---|---|---|---|",
    ]
    # ratios: medians of per-round ratios, so they need not equal the ratio of the median rates
    for r in records:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['variant']} | {r['kernel']} | {r['theoretical_bits_per_weight']:.2f} | "
            f"{r['weights_bytes_in_memory'] / 1e6:.0f} | {r['peak_memory_bytes'] / 1e6:.0f} | "
            f"{r['prefill_tokens_per_s']:.0f} ({r.get('prefill_tokens_per_s_vs_fp32', float('nan')):.2f}) | "
            f"{r['decode_tokens_per_s']:.1f} ({r.get('decode_tokens_per_s_vs_fp32', float('nan')):.2f}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
