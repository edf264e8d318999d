"""KV-cache quantization on toy: perplexity against bits and grouping, and cached == uncached scores.

For each KV-cache setting (bits 8, 6, 5, 4, 3, 2; group size along head_dim 32: the whole
head, 16 or 8; asymmetric, plus symmetric per head) on the ``toy`` model, fp32, CPU:

* ``toy_ppl``: the task's word perplexity through :func:`quantsweep.evaluate`, all 80 documents
  (the number the paper-grid table in docs/methods.md shows);
* ``p(KV4>KV8)``: one-sided paired Wilcoxon test (scipy) over the 80 documents' rolling
  log-likelihoods, KV4 worse than KV8;
* ``cached-full``: the largest difference, in nats, between a request's log-likelihood from the
  context-cached evaluator and from a plain forward without a cache (30 four-choice requests
  after a shared 3-shot preamble), at 4 bits.

Run::

    .venv/bin/python benchmarks/kv_cache_toy.py

Writes ``benchmarks/results/kv_cache_toy.json`` and prints the markdown table of
docs/methods.md ("KV-cache quantization").
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "kv_cache_toy.json"
BITS = (8, 6, 5, 4, 3, 2)
GROUPINGS = ((None, False), (16, False), (8, False), (None, True))  # (group_size, symmetric)


def main() -> None:
    import lm_eval
    from lm_eval.api.instance import Instance

    import quantsweep
    from quantsweep.eval.lm import ContextCachedLM
    from quantsweep.methods.kv_cache import attach_kv_cache_quant
    from quantsweep.models.snapshot import WeightSnapshot
    from quantsweep.toy.tasks import mc_docs, ppl_docs

    torch.set_num_threads(1)
    model, tokenizer = quantsweep.load_model("toy", device="cpu", dtype="float32")
    snapshot = WeightSnapshot(model)
    texts = [doc["text"] for doc in ppl_docs()]
    rolling = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)]
    shots = "\n".join(d["query"] + " " + d["choices"][d["gold"]] for d in mc_docs(4)[20:23]) + "\n"
    encoder = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    choices = [
        (None, *encoder._encode_pair(shots + doc["query"], " " + choice + " ."))
        for doc in mc_docs(4)[:30]
        for choice in doc["choices"]
    ][:120]

    def measure(bits, group_size, symmetric):
        snapshot.restore(model)
        if bits is not None:
            attach_kv_cache_quant(model, bits=bits, group_size=group_size, symmetric=symmetric)
        try:
            ppl = quantsweep.evaluate(model, tokenizer, tasks=["toy_ppl"], batch_size=16)
            lm = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=16)
            per_doc = np.array(lm.loglikelihood_rolling(rolling, disable_tqdm=True))
            gap = None
            if bits in (None, 4):
                cached = [score for score, _ in lm._loglikelihood_tokens(choices)]
                full = []
                for _, context, continuation in choices:
                    with torch.no_grad():
                        ids = torch.tensor([context + continuation[:-1]])
                        logits = model(ids, use_cache=False).logits[0, len(context) - 1 :]
                    full.append(float(logits.log_softmax(-1).gather(1, torch.tensor(continuation)[:, None]).sum()))
                gap = float(np.abs(np.array(cached) - np.array(full)).max())
            return ppl.tasks["toy_ppl"].metrics["word_perplexity"].value, per_doc, gap
        finally:
            snapshot.restore(model)

    fp_ppl, _, fp_gap = measure(None, None, False)
    rows = []
    for group_size, symmetric in GROUPINGS:
        row = {"group_size": group_size, "symmetric": symmetric, "fp": fp_ppl, "fp_cached_minus_full": fp_gap}
        per_doc = {}
        for bits in BITS:
            row[f"kv{bits}"], per_doc[bits], gap = measure(bits, group_size, symmetric)
            if gap is not None:
                row["kv4_cached_minus_full"] = gap
        row["p_kv4_worse_than_kv8"] = float(stats.wilcoxon(per_doc[8], per_doc[4], alternative="greater").pvalue)
        rows.append(row)

    header = "| KV setting | " + " | ".join(f"KV{b}" for b in BITS) + " | p(KV4>KV8) | cached-full, KV4 (nats) |"
    lines = [header, "|" + "---|" * (len(BITS) + 3)]
    for row in rows:
        name = f"group {row['group_size'] or 'head (32)'}, {'sym' if row['symmetric'] else 'asym'}"
        values = " | ".join(f"{row[f'kv{b}']:.4f}" for b in BITS)
        lines.append(f"| {name} | {values} | {row['p_kv4_worse_than_kv8']:.2g} | {row['kv4_cached_minus_full']:.1e} |")
    print(f"fp toy_ppl {fp_ppl:.4f}; fp cached-full {fp_gap:.1e} nats")
    print("\n".join(lines))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "rows": rows,
                "host": platform.platform(),
                "torch": torch.__version__,
                "lm_eval": lm_eval.__version__,
                "device": "cpu",
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
