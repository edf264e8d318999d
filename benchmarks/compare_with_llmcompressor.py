"""Compare quantsweep's GPTQ, AWQ and SmoothQuant with llm-compressor on the same layers and data.

Both implementations quantize the *same* tiny random Llama (saved to a directory,
because llm-compressor re-reads its config from a path) with the *same* calibration
token ids. Then every decoder layer of each quantized model is fed the *full-precision*
model's inputs to that layer, and for every Linear we measure the relative
reconstruction error

    ||Y - Y_hat||_F / ||Y||_F,   Y = the FP Linear's output, Y_hat = the quantized one's

on the calibration tokens (Y_hat includes AWQ / SmoothQuant scaling folded into the
weights and, for W8A8 / W4A4, the per-token activation quantization, since both sides
run their own forward). Feeding FP layer inputs isolates each layer from the errors of
the layers before it. Also reported: the decoder-layer output error on the same inputs,
the end-to-end logit error on held-out tokens, and wall time of each quantization (same
machine, same process, CPU; llm-compressor's time includes its graph tracing).

The model mimics openPangu-Embedded's layout: q/k/v/o with biases, no MLP bias, and a
few outlier channels in the RMSNorm weights (as in trained LLMs), so that AWQ and
SmoothQuant have something to do.

A second pass repeats the AWQ rows with grouped-query attention (2 KV heads for 4 query
heads): quantsweep then folds ``v_proj -> o_proj`` scales per KV head, while llm-compressor
0.14 skips that pair (shape mismatch); the results go under ``gqa_kv_heads_2``.

On a CPU-only torch, llm-compressor 0.14's AWQ fails in ``Tensor.pin_memory`` ("Cannot
access accelerator device when none is available"); this script then turns that pinning
(a transfer optimisation only) into a no-op and records so in the results.

Run it in the peer venv (llm-compressor pins its own transformers)::

    /work/venv-peer/bin/python benchmarks/compare_with_llmcompressor.py

It prints a table and writes ``benchmarks/results/compare_with_llmcompressor.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "compare_with_llmcompressor.json"


@dataclasses.dataclass(frozen=True)
class Setup:
    """Shape of the tiny model and of the calibration data."""

    hidden: int = 256
    intermediate: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 4
    vocab: int = 128
    outlier_channels: int = 4
    outlier_scale: float = 20.0
    n_samples: int = 16
    seq_len: int = 64
    seed: int = 0


def build_model_dir(path: Path, setup: Setup) -> None:
    """Save a random Llama (attention biases, outlier norm channels) and a word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(
        hidden_size=setup.hidden,
        intermediate_size=setup.intermediate,
        num_hidden_layers=setup.layers,
        num_attention_heads=setup.heads,
        num_key_value_heads=setup.kv_heads,
        vocab_size=setup.vocab,
        attention_bias=True,
        max_position_embeddings=max(128, setup.seq_len),
        tie_word_embeddings=False,
    )
    torch.manual_seed(setup.seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
                parameter[: setup.outlier_channels] *= setup.outlier_scale
            elif name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    model.save_pretrained(path)
    # llm-compressor insists on a processor when given a dataset; token ids are pre-made.
    vocab = {f"t{i}": i for i in range(setup.vocab)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0", pad_token="t1", eos_token="t2").save_pretrained(
        path
    )


def token_ids(setup: Setup, n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, setup.vocab, (n, setup.seq_len), generator=generator)


def load(path: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def capture_fp_layer_inputs(model, ids: torch.Tensor) -> list[tuple[torch.Tensor, dict]]:
    """Hidden states and keyword arguments entering each decoder layer of the FP model."""
    captured: list[tuple[torch.Tensor, dict]] = []
    handles = []
    for layer in model.model.layers:

        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            captured.append((hidden.detach().clone(), rest))

        handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _layer_outputs(layer, hidden, kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, a, out, n=name: outputs.__setitem__(n, out.detach()))
        for name, module in layer.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]
    try:
        with torch.no_grad():
            out = layer(hidden, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return (out[0] if isinstance(out, (tuple, list)) else out), outputs


def rescaled_outputs(fp_model) -> set[str]:
    """Linears whose *output* AWQ may legitimately rescale (v_proj, up_proj: the Linear
    sources of AWQ's scaling pairs). Their output is ``Y / s`` by design, so comparing it
    with the FP ``Y`` measures the scaling, not the quantization; their quantization error
    is still counted, through the outputs of o_proj and down_proj that read them."""
    from quantsweep.methods.mappings import mappings_for

    return {
        pair.source_name
        for layer in mappings_for(fp_model, "awq")
        for pair in layer
        if isinstance(pair.source, torch.nn.Linear)
    }


def reconstruction_errors(fp_model, q_model, captured) -> dict:
    """Relative errors per Linear and per layer, each quantized layer fed the FP layer inputs.

    ``mean_linear_rel_error`` averages the Linears whose outputs are in the FP frame for
    every method (all but :func:`rescaled_outputs`); ``linears`` lists all of them.
    """
    linears, layers = {}, {}
    for index, (hidden, kwargs) in enumerate(captured):
        fp_out, fp_lin = _layer_outputs(fp_model.model.layers[index], hidden, kwargs)
        q_out, q_lin = _layer_outputs(q_model.model.layers[index], hidden, kwargs)
        for name, y in fp_lin.items():
            linears[f"model.layers.{index}.{name}"] = float((q_lin[name] - y).norm() / y.norm())
        layers[f"model.layers.{index}"] = float((q_out - fp_out).norm() / fp_out.norm())
    excluded = rescaled_outputs(fp_model)
    return {
        "mean_linear_rel_error": statistics.fmean(v for k, v in linears.items() if k not in excluded),
        "mean_layer_rel_error": statistics.fmean(layers.values()),
        "linears": linears,
        "linears_excluded_from_mean": sorted(excluded),
        "layers": layers,
    }


def logit_error(fp_model, q_model, ids) -> float:
    with torch.no_grad():
        reference = fp_model(input_ids=ids).logits
        quantized = q_model(input_ids=ids).logits
    return float((quantized - reference).norm() / reference.norm())


def run_ours(path: Path, recipe, ids: torch.Tensor):
    import quantsweep

    model = load(path)
    start = time.perf_counter()
    quantsweep.quantize(model, recipe, calibration=ids)
    return model, time.perf_counter() - start


def _patch_pinning_on_cpu_only_hosts() -> bool:
    """llm-compressor 0.14's AWQ pins cached activations (``Tensor.pin_memory``), which
    raises "Cannot access accelerator device when none is available" on a CPU-only torch.
    Pinning only speeds up host-to-device copies, so on such hosts it is made a no-op.
    Returns whether the patch was applied (recorded in the results)."""
    if torch.accelerator.is_available():
        return False
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache._pin_intermediate = classmethod(lambda cls, intermediate: None)
    return True


def run_peer(path: Path, recipe: list, ids: torch.Tensor):
    from datasets import Dataset
    from llmcompressor import oneshot

    model = load(path)
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    start = time.perf_counter()
    oneshot(
        model=model,
        dataset=dataset,
        recipe=recipe,
        num_calibration_samples=ids.shape[0],
        max_seq_length=ids.shape[1],
        shuffle_calibration_samples=False,
    )
    return model, time.perf_counter() - start


def comparisons() -> dict:
    """Each entry: (quantsweep recipe, llm-compressor recipe factory, what is matched)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    import quantsweep

    def w4a16_asym():
        return QuantizationModifier(targets=["Linear"], scheme="W4A16_ASYM", ignore=["lm_head"])

    def w4a4_channel_token():
        scheme = QuantizationScheme(
            targets=["Linear"],
            weights=QuantizationArgs(num_bits=4, type="int", strategy="channel", symmetric=True, dynamic=False),
            input_activations=QuantizationArgs(num_bits=4, type="int", strategy="token", symmetric=True, dynamic=True),
        )
        return QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])

    awq = quantsweep.get_recipe("w4-awq")
    return {
        "gptq w4 g128 asym act-order": (
            quantsweep.get_recipe("w4-gptq"),
            lambda: [GPTQModifier(targets="Linear", scheme="W4A16_ASYM", ignore=["lm_head"])],
            "both: 4-bit asym, group 128, static act-order, damp 0.01, block 128",
        ),
        "awq w4 g128 (ours: paper + clip)": (
            awq,
            lambda: [AWQModifier(duo_scaling=True, n_grid=20), w4a16_asym()],
            "ours: s=mean|x|^a + clipping search (recipe w4-awq); peer: duo scaling, no clipping (its default)",
        ),
        "awq w4 g128 (ours: duo, no clip)": (
            dataclasses.replace(awq, name="w4-awq-duo", duo_scaling=True, clip_search=False),
            lambda: [AWQModifier(duo_scaling=True, n_grid=20), w4a16_asym()],
            "like for like: duo scaling, 20-point grid, no clipping",
        ),
        "smoothquant w8a8": (
            quantsweep.get_recipe("w8a8-smoothquant"),
            lambda: [
                SmoothQuantModifier(smoothing_strength=0.5),
                QuantizationModifier(targets=["Linear"], scheme="W8A8", ignore=["lm_head"]),
            ],
            "both: alpha 0.5, int8 per-channel symmetric weights, int8 per-token dynamic activations",
        ),
        "smoothquant w4a4": (
            quantsweep.get_recipe("w4a4-smoothquant"),
            lambda: [SmoothQuantModifier(smoothing_strength=0.5), w4a4_channel_token()],
            "both: alpha 0.5, int4 per-channel symmetric weights, int4 per-token dynamic activations",
        ),
    }


def compare(setup: Setup, only: list[str] | None = None, workdir: Path | None = None) -> dict:
    """Run every comparison and return the results as plain data.

    Example:
        >>> results = compare(Setup(hidden=128, intermediate=256), only=["smoothquant w8a8"])  # doctest: +SKIP
    """
    import compressed_tensors
    import llmcompressor
    import transformers

    import quantsweep

    patched = _patch_pinning_on_cpu_only_hosts()
    with tempfile.TemporaryDirectory(prefix="qs-peer-") as tmp:
        path = Path(workdir or tmp) / "tiny-llama"
        build_model_dir(path, setup)
        calibration = token_ids(setup, setup.n_samples, setup.seed)
        held_out = token_ids(setup, 8, setup.seed + 1)
        fp_model = load(path)
        captured = capture_fp_layer_inputs(fp_model, calibration)
        rows = {}
        rtn, _ = run_ours(path, "w4-rtn", calibration)
        rows["reference: rtn w4 g128 asym (ours)"] = {"ours": reconstruction_errors(fp_model, rtn, captured)}
        for label, (ours_recipe, peer_recipe, matched) in comparisons().items():
            if only and label not in only:
                continue
            ours_model, ours_seconds = run_ours(path, ours_recipe, calibration)
            peer_model, peer_seconds = run_peer(path, peer_recipe(), calibration)
            ours = reconstruction_errors(fp_model, ours_model, captured)
            peer = reconstruction_errors(fp_model, peer_model, captured)
            ours["logit_rel_error_held_out"] = logit_error(fp_model, ours_model, held_out)
            peer["logit_rel_error_held_out"] = logit_error(fp_model, peer_model, held_out)
            ours["seconds"], peer["seconds"] = ours_seconds, peer_seconds
            rows[label] = {
                "matched": matched,
                "ours": ours,
                "peer": peer,
                "ratio_linear": ours["mean_linear_rel_error"] / peer["mean_linear_rel_error"],
                "ratio_layer": ours["mean_layer_rel_error"] / peer["mean_layer_rel_error"],
            }
    return {
        "setup": dataclasses.asdict(setup),
        "versions": {
            "quantsweep": quantsweep.__version__,
            "llmcompressor": llmcompressor.__version__,
            "compressed_tensors": compressed_tensors.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "device": "cpu",
        "peer_patch": "IntermediatesCache._pin_intermediate made a no-op (CPU-only torch)" if patched else None,
        "metric": "relative Frobenius error ||Y - Y_hat|| / ||Y|| of each Linear's output (mean over q/k/o/gate/down, "
        "whose outputs stay in the FP frame under AWQ) and of each decoder layer's output; every quantized "
        "layer is fed the FP model's layer inputs; calibration tokens",
        "rows": rows,
    }


def format_table(results: dict) -> str:
    lines = [
        f"{'comparison':38s} {'linear err ours':>15s} {'peer':>8s} {'ratio':>6s} "
        f"{'layer err ours':>14s} {'peer':>8s} {'ratio':>6s} {'logits ours':>11s} {'peer':>8s} {'s ours':>7s} {'s peer':>7s}"
    ]
    for label, row in results["rows"].items():
        ours, peer = row["ours"], row.get("peer")
        if peer is None:
            lines.append(
                f"{label:38s} {ours['mean_linear_rel_error']:15.4f} {'':>8s} {'':>6s} {ours['mean_layer_rel_error']:14.4f}"
            )
            continue
        lines.append(
            f"{label:38s} {ours['mean_linear_rel_error']:15.4f} {peer['mean_linear_rel_error']:8.4f} {row['ratio_linear']:6.3f} "
            f"{ours['mean_layer_rel_error']:14.4f} {peer['mean_layer_rel_error']:8.4f} {row['ratio_layer']:6.3f} "
            f"{ours['logit_rel_error_held_out']:11.4f} {peer['logit_rel_error_held_out']:8.4f} "
            f"{ours['seconds']:7.2f} {peer['seconds']:7.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="comparison labels to run (default: all)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    try:
        import llmcompressor  # noqa: F401
    except ImportError as error:
        print(f"llm-compressor is not installed here ({error}); run with /work/venv-peer/bin/python", file=sys.stderr)
        return 2
    results = compare(Setup(), only=args.only)
    print(format_table(results))
    # Grouped-query attention (2 KV heads for 4 query heads): quantsweep scales v_proj -> o_proj
    # with one scale per KV channel repeated per query head; llm-compressor skips that pair.
    gqa = compare(Setup(kv_heads=2), only=args.only or [k for k in comparisons() if k.startswith("awq")])
    print("\nGQA (kv_heads=2):\n" + format_table(gqa))
    results["gqa_kv_heads_2"] = {"setup": gqa["setup"], "rows": gqa["rows"]}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
