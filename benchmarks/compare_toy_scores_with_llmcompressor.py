"""Compare toy-task scores of quantsweep's 3-bit GPTQ and AWQ with llm-compressor's, in one run.

Both quantize the committed toy Llama (``quantsweep.toy.toy_model_dir()``) with the
same settings (3-bit, asymmetric, group 128, static act-order, damping 0.01, block
128, ``lm_head`` left in FP) and the *same* calibration token ids
(``load_calibration("toy", ...)``). Every model is then scored with
``quantsweep.evaluate`` on ``toy_mc4`` (accuracy) and ``toy_ppl`` (word perplexity),
and ours is judged against llm-compressor's with ``judge_task`` (peer as baseline).

The llm-compressor model is evaluated in memory as ``oneshot`` leaves it: its Linears
carry compressed-tensors quantization (weights already quantize-dequantized by GPTQ,
forward fake-quant still active); the script records how far the weights are from
their own grid to show they are really on it.

llm-compressor 0.14's ``IntermediatesCache`` pins memory, which fails on a CPU-only
torch; the pinning is turned into a no-op (helper reused from
``compare_with_llmcompressor.py``) and the results say so.

Run in the peer venv (llm-compressor pins its own transformers)::

    /work/venv-peer/bin/python benchmarks/compare_toy_scores_with_llmcompressor.py

It prints a table and writes ``benchmarks/results/compare_toy_scores_with_llmcompressor.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "compare_toy_scores_with_llmcompressor.json"
TASKS = {"toy_mc4": "acc", "toy_ppl": "word_perplexity"}
N_SAMPLES, SEQ_LEN, SEED = 32, 64, 0

sys.path.insert(0, str(HERE))
from compare_with_llmcompressor import _patch_pinning_on_cpu_only_hosts, run_peer  # noqa: E402


def peer_gptq_w3(recipe):
    """llm-compressor GPTQModifier matched to quantsweep's ``recipe`` (a GPTQ RecipeConfig)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from llmcompressor.modifiers.gptq import GPTQModifier

    weights = QuantizationArgs(
        num_bits=recipe.bits,
        type="int",
        strategy="group",
        group_size=recipe.group_size,
        symmetric=recipe.symmetric,
        dynamic=False,
        actorder="static" if recipe.act_order else None,
    )
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    return [
        GPTQModifier(
            config_groups={"group_0": scheme},
            ignore=["lm_head"],
            actorder=weights.actorder,
            dampening_frac=recipe.dampening_frac,
            block_size=recipe.block_size,
        )
    ]


def w3_scheme(recipe):
    """compressed-tensors weight scheme matching quantsweep's ``recipe`` (bits, group, symmetry)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(
        num_bits=recipe.bits,
        type="int",
        strategy="group",
        group_size=recipe.group_size,
        symmetric=recipe.symmetric,
        dynamic=False,
    )
    return QuantizationScheme(targets=["Linear"], weights=weights)


def peer_awq_w3(recipe):
    """llm-compressor AWQ (duo scaling, 20-point grid, no clipping: its default) + matched RTN."""
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    return [
        AWQModifier(duo_scaling=True, n_grid=recipe.n_grid),
        QuantizationModifier(config_groups={"group_0": w3_scheme(recipe)}, ignore=["lm_head"]),
    ]


def grid_gap(model) -> tuple[float, int]:
    """Largest |W - fakequant(W)| over the peer's quantized Linears (0: weights on their grid),
    and how many Linears were checked."""
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    gap, checked = 0.0, 0
    for module in model.modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is None or scheme.weights is None or not hasattr(module, "weight_scale"):
            continue
        w = module.weight.data
        q = fake_quantize(w, module.weight_scale, getattr(module, "weight_zero_point", None), scheme.weights)
        gap, checked = max(gap, float((q - w).abs().max())), checked + 1
    return gap, checked


def score(model, tokenizer) -> dict:
    import quantsweep

    result = quantsweep.evaluate(model, tokenizer, tasks=list(TASKS))
    return {task: result.tasks[task] for task in TASKS}


def main() -> int:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    import compressed_tensors
    import llmcompressor
    import transformers

    import quantsweep
    from quantsweep.calibration import load_calibration
    from quantsweep.toy import toy_model_dir
    from quantsweep.verdicts.task import judge_task

    patched = _patch_pinning_on_cpu_only_hosts()
    path = toy_model_dir()
    model, tok = quantsweep.load_model("toy", device="cpu")
    cal = load_calibration("toy", tok, n_samples=N_SAMPLES, seq_len=SEQ_LEN, seed=SEED)
    recipe = quantsweep.get_recipe("w3-gptq")
    vocab = model.config.vocab_size

    rows, tasks, seconds = {}, {}, {}
    tasks["fp"] = score(model, tok)
    for name, recipe_name in (("rtn_w3", "w3-rtn"), ("ours_gptq_w3", "w3-gptq")):
        m, _ = quantsweep.load_model("toy", device="cpu")
        start = time.perf_counter()
        quantsweep.quantize(m, recipe_name, calibration=cal)
        seconds[name] = time.perf_counter() - start
        tasks[name] = score(m, tok)
    awq = dataclasses.replace(quantsweep.get_recipe("w4-awq"), name="w3-awq", bits=3)
    awq_duo = dataclasses.replace(awq, name="w3-awq-duo", duo_scaling=True, clip_search=False)
    for name, recipe_config in (("ours_awq_w3", awq), ("ours_awq_w3_duo_noclip", awq_duo)):
        m, _ = quantsweep.load_model("toy", device="cpu")
        start = time.perf_counter()
        quantsweep.quantize(m, recipe_config, calibration=cal)
        seconds[name] = time.perf_counter() - start
        tasks[name] = score(m, tok)
    gaps = {}
    for name, modifiers in (("peer_gptq_w3", peer_gptq_w3(recipe)), ("peer_awq_w3", peer_awq_w3(awq))):
        start = time.perf_counter()
        peer, _ = run_peer(path, modifiers, cal.input_ids)
        seconds[name] = time.perf_counter() - start
        gaps[name] = grid_gap(peer)
        tasks[name] = score(peer, tok)

    for name, by_task in tasks.items():
        rows[name] = {task: by_task[task].metrics[metric].value for task, metric in TASKS.items()}
        if name in seconds:
            rows[name]["quantize_seconds"] = seconds[name]
    pairs = {
        "gptq": ("ours_gptq_w3", "peer_gptq_w3"),
        "awq (ours: paper + clip)": ("ours_awq_w3", "peer_awq_w3"),
        "awq (like for like: duo, no clip)": ("ours_awq_w3_duo_noclip", "peer_awq_w3"),
    }
    verdicts = {
        label: {
            task: judge_task(tasks[ours][task], tasks[peer][task], metric=metric, vocab_size=vocab)
            for task, metric in TASKS.items()
        }
        for label, (ours, peer) in pairs.items()
    }
    results = {
        "model": "toy (quantsweep.toy.toy_model_dir)",
        "calibration": {
            "source": "toy",
            "n_samples": N_SAMPLES,
            "seq_len": SEQ_LEN,
            "seed": SEED,
            "same_token_ids_for_both": True,
        },
        "settings": {
            "gptq": "3-bit asym, group 128, static act-order, damping 0.01, block 128, lm_head FP (both sides)",
            "awq": "3-bit asym, group 128, 20-point grid, lm_head FP; ours w3-awq = w4-awq recipe with bits=3 "
            "(s=mean|x|^a + clipping search), ours duo = duo scaling, no clipping; peer: AWQModifier "
            "(duo scaling, no clipping) + QuantizationModifier. Toy has 2 KV heads for 4 query heads: "
            "llm-compressor 0.14 skips the v_proj->o_proj pair there, quantsweep folds it per KV head",
        },
        "peer_eval": "in memory as oneshot leaves it (compressed-tensors fake-quant in forward); "
        "max |W - fakequant(W)| over quantized Linears (checked count): "
        + ", ".join(f"{k} {g:.3g} ({n})" for k, (g, n) in gaps.items()),
        "peer_patch": "IntermediatesCache._pin_intermediate made a no-op (CPU-only torch)" if patched else None,
        "device": "cpu",
        "metrics": TASKS,
        "rows": rows,
        "ours_vs_peer": verdicts,
        "versions": {
            "quantsweep": quantsweep.__version__,
            "llmcompressor": llmcompressor.__version__,
            "compressed_tensors": compressed_tensors.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    print(f"{'model':24s} {'toy_mc4 acc':>12s} {'toy_ppl word_ppl':>17s}")
    for name, row in rows.items():
        print(f"{name:24s} {row['toy_mc4']:12.4f} {row['toy_ppl']:17.4f}")
    for label, by_task in verdicts.items():
        for task, v in by_task.items():
            print(
                f"ours vs peer, {label}, {task}: {v['verdict']} (delta {v['delta']:+.4f}, "
                f"CI [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}], p {v['p_value']:.3g})"
            )
    print(results["peer_eval"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
