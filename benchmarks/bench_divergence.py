"""Divergence from the baseline: its error against the exact KL, its cost, its bytes per token.

**Error.** For each model and recipe, the rolling scorer records the baseline's
representation (top-k log-probabilities, the log of the rest of the mass, ``m`` tail
draws; :mod:`quantsweep.eval.divergence`) and compares the recipe with it; the exact KL
is computed here from both models' full logits on the same windows. Models: ``toy``
(vocab 123) with w8/w4/w3-rtn, and a random 2-layer Llama with vocabulary 50,257
(``lm_head`` scaled x40 so its next-token distributions are peaked, as a trained LM's;
the recipe rounds every decoder weight to 15 levels per row). Sizes: (k, m) = (16, 8)
(the default), (16, 0) (top-k + rest only: the lower bound) and (64, 8).

**Cost.** Time of one perplexity evaluation (``quantsweep.evaluate`` on ``toy_ppl``, the
whole lm-eval task, CPU seconds of this process, median of ``--repeats`` interleaved
runs): plain, recording the baseline's representation, comparing a recipe with it.
Models: ``toy`` and ``pangu1b-2l`` (random weights at openPangu-Embedded-1B's width as
assumed in bench_eval_contexts.py: hidden 1536, vocab 153,376, 2 decoder layers) with the
toy tokenizer.

Run::

    .venv/bin/python benchmarks/bench_divergence.py
    .venv/bin/python benchmarks/bench_divergence.py --repeats 1 --docs 20 --skip-large
    .venv/bin/python benchmarks/bench_divergence.py --only costs   # keeps the file's error rows

Writes ``benchmarks/results/bench_divergence.json``; ``errors_run`` and ``costs_run`` there give each
part's command, date and device.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "bench_divergence.json"
SIZES = ((16, 8), (16, 0), (64, 8))


def _llama(vocab, hidden, intermediate, heads, kv_heads, layers=2, seed=0, head_scale=1.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
    return model


def _rounded(model, levels=7):
    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer in out.model.layers:
            for module in layer.modules():
                if isinstance(module, torch.nn.Linear):
                    step = module.weight.abs().amax(dim=1, keepdim=True) / levels
                    module.weight.copy_(torch.round(module.weight / step) * step)
    return out


def _texts(n):
    words = "the cat sat on a mat while dogs ran in the park and birds sang".split()
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, size=int(rng.integers(40, 120)))) for _ in range(n)]


def _error_rows(name, base, recipes, tokenizer, texts):
    from lm_eval.api.instance import Instance

    from quantsweep.eval.divergence import DivergenceProbe, TokenReference, bytes_per_token
    from quantsweep.eval.lm import ContextCachedLM

    requests = [Instance("loglikelihood_rolling", {}, (t,), i, ("ppl", i, 1)) for i, t in enumerate(texts)]
    rows = []
    for recipe_name, recipe in recipes.items():
        lm = ContextCachedLM(pretrained=base, tokenizer=tokenizer, batch_size=4)
        exact = []
        with torch.no_grad():
            for text in texts:
                for ctx, cont in lm._windows(text):
                    ids = torch.tensor([(ctx + cont)[-(lm.max_length + 1) :][:-1]])
                    p = torch.log_softmax(base(input_ids=ids).logits[0, -len(cont) :].double(), -1)
                    q = torch.log_softmax(recipe(input_ids=ids).logits[0, -len(cont) :].double(), -1)
                    exact.append((p.exp() * (p - q)).sum(-1))
        exact = torch.cat(exact).numpy()
        for k, m in SIZES:
            recorder = DivergenceProbe(record=True, k=k, tail_samples=m)
            ContextCachedLM(
                pretrained=base, tokenizer=tokenizer, batch_size=4, divergence=recorder
            ).loglikelihood_rolling(requests, disable_tqdm=True)
            stored = TokenReference.from_bytes(recorder.recorded["ppl"].to_bytes())
            comparer = DivergenceProbe(references={"ppl": stored})
            ContextCachedLM(
                pretrained=recipe, tokenizer=tokenizer, batch_size=4, divergence=comparer
            ).loglikelihood_rolling(requests, disable_tqdm=True)
            s = comparer.summary("ppl")
            rows.append(
                {
                    "model": name,
                    "recipe": recipe_name,
                    "k": k,
                    "tail_samples": m,
                    "bytes_per_token": bytes_per_token(k, m),
                    "positions": s["positions"],
                    "tail_mass_mean": s["tail_mass_mean"],
                    "exact_kl_mean": float(exact.mean()),
                    "kl_mean": s["kl_mean"],
                    "abs_error": abs(s["kl_mean"] - float(exact.mean())),
                    "kl_stderr": s["kl_stderr"],
                    "kl_lower": s["kl_lower"],
                    "exact_kl_p99": float(np.percentile(exact, 99)),
                    "kl_p99": s["kl_p99"],
                    "top1_agreement": s["top1_agreement"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _cost_rows(name, base, recipe, tokenizer, docs, repeats):
    import quantsweep
    from quantsweep.eval.divergence import DivergenceProbe, TokenReference

    def run(model, probe):
        started = time.process_time()
        quantsweep.evaluate(model, tokenizer, ["toy_ppl"], limit=docs, batch_size=8, divergence=probe)
        return time.process_time() - started

    recorder = DivergenceProbe(record=True)
    run(base, recorder)  # warm-up, and the stored representation the comparisons read
    reference = {"toy_ppl": TokenReference.from_bytes(recorder.recorded["toy_ppl"].to_bytes())}
    times = {"plain": [], "record": [], "compare": [], "plain_recipe": []}
    for _ in range(repeats):
        times["plain"].append(run(base, None))
        times["record"].append(run(base, DivergenceProbe(record=True)))
        times["plain_recipe"].append(run(recipe, None))
        times["compare"].append(run(recipe, DivergenceProbe(references=reference)))
    median = {key: statistics.median(values) for key, values in times.items()}
    row = {
        "model": name,
        "docs": docs,
        "positions": recorder.recorded["toy_ppl"].positions(),
        "stored_bytes": len(recorder.recorded["toy_ppl"].to_bytes()),
        **{f"{key}_s": value for key, value in median.items()},
        "record_over_plain": median["record"] / median["plain"],
        "compare_over_plain": median["compare"] / median["plain_recipe"],
        "times": times,
    }
    print(json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=40, help="toy_ppl documents per cost run (default 40)")
    parser.add_argument("--large-docs", type=int, default=4, help="documents per pangu1b-2l cost run (default 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-large", action="store_true", help="leave out the 1B-width cost model")
    parser.add_argument("--only", choices=["errors", "costs"], help="run one part; the other is kept from the file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import quantsweep

    toy, tokenizer = quantsweep.load_model("toy", device="cpu")
    recipes = {name: quantsweep.quantize(copy.deepcopy(toy), name) for name in ("w8-rtn", "w4-rtn", "w3-rtn")}
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
        "errors": previous.get("errors", []),
        "costs": previous.get("costs", []),
    }
    # each part says when, where and how it was measured: --only keeps the other part's rows and run
    run = {
        "command": "benchmarks/bench_divergence.py " + " ".join(sys.argv[1:]),
        "date": results["date"],
        "device": f"CPU ({results['machine']}, {results['cpu_count']} cores, {args.threads} torch thread(s)), fp32",
    }
    for part in ("errors", "costs"):
        if f"{part}_run" in previous:
            results[f"{part}_run"] = previous[f"{part}_run"]

    def save():  # after every part: a run stopped half-way keeps what it measured
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")

    if args.only != "costs":
        large = _llama(50_257, 64, 128, 4, 2, head_scale=40.0)
        results["errors"] = _error_rows("toy", toy, recipes, tokenizer, _texts(12))
        results["errors"] += _error_rows(
            "random-2l-vocab50257", large, {"rounded-15-levels": _rounded(large)}, tokenizer, _texts(6)
        )
        results["errors_run"] = run
        save()
    if args.only != "errors":
        results["costs"] = [_cost_rows("toy", toy, recipes["w4-rtn"], tokenizer, args.docs, args.repeats)]
        results["costs_run"] = run
        save()
        if not args.skip_large:
            wide = _llama(153_376, 1536, 6144, 12, 6)
            results["costs"].append(
                _cost_rows("pangu1b-2l", wide, _rounded(wide), tokenizer, args.large_docs, args.repeats)
            )
            save()
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
