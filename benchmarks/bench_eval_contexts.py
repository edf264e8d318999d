"""Evaluation time on 4-choice tasks, and peak memory of perplexity, against lm-eval's HFLM.

Time (one run, same requests, same batch size, 1 CPU thread by default, CPU seconds of
the process so that other work on a shared machine does not distort the ratios): for each
model, ``N`` four-choice questions with 100-200-token contexts and 3-5-token options
(random token ids), scored by

* ``ours``: :class:`quantsweep.eval.lm.ContextCachedLM` (each context once, its options
  from the expanded KV cache, lm_head only where needed);
* ``lm-eval``: lm-eval's own ``HFLM._loglikelihood_tokens``;
* ``raw``: a raw padded forward (``model(ids)``, full logits) over the same 4N
  sequences, context + option, in batches of the same size; the naive baseline.

Models: ``toy`` (hidden 128, 4 layers, vocab 123); ``toy-fewshot``: the toy model on
questions that all start with the same 300-token preamble (few-shot examples) followed by
40-80 tokens of their own, also timed with the shared-preamble step switched off; and ``pangu1b-2l``: random weights with
openPangu-Embedded-1B's width as assumed here (hidden 1536, intermediate 6144, 12 heads,
6 KV heads, q/k/v/o biases, vocab 153376; no published 1B config is in this
repository), 2 decoder layers.

Memory (each in a fresh subprocess, peak RSS = ``VmHWM`` of ``/proc/self/status``): WikiText-style rolling
log-likelihood at batch 8 of 8 documents that each fill one 512-token window, vocab
150,000, with lm-eval's HFLM ("before") and ours ("after"). The model is a 2-layer
hidden-64 Llama, so the logits dominate.

Run::

    /work/venv/bin/python benchmarks/bench_eval_contexts.py
    /work/venv/bin/python benchmarks/bench_eval_contexts.py --models toy --docs 40

Writes ``benchmarks/results/bench_eval_contexts.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "bench_eval_contexts.json"
PANGU_1B = dict(
    hidden_size=1536,
    intermediate_size=6144,
    num_attention_heads=12,
    num_key_value_heads=6,
    attention_bias=True,
    vocab_size=153376,
    rope_theta=16000000.0,
    rms_norm_eps=1e-5,
)


def _random_llama(num_layers: int, max_positions: int, seed: int = 0, **shape):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        num_hidden_layers=num_layers,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **shape,
    )
    return LlamaForCausalLM(config).eval()


def _model(name: str):
    import quantsweep

    toy, tokenizer = quantsweep.load_model("toy", device="cpu", dtype="float32")
    if name in ("toy", "toy-fewshot"):
        return toy, tokenizer
    if name == "pangu1b-2l":
        return _random_llama(2, 4096, **PANGU_1B), tokenizer
    raise ValueError(f"unknown model {name!r}; allowed: toy, toy-fewshot, pangu1b-2l")


def _requests(vocab: int, docs: int, seed: int = 0, preamble: int = 0, context_tokens=(100, 200)):
    """4 options per question: context 100-200 tokens, options 3-5 tokens (ids 3.. avoid specials).

    ``preamble``: tokens every context starts with (few-shot examples shared by all questions).
    """
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randint(3, vocab, (preamble,), generator=generator).tolist()
    requests = []
    for _ in range(docs):
        low, high = context_tokens
        context = (
            shared
            + torch.randint(
                3, vocab, (int(torch.randint(low, high + 1, (1,), generator=generator)),), generator=generator
            ).tolist()
        )
        for _ in range(4):
            option = torch.randint(
                3, vocab, (int(torch.randint(3, 6, (1,), generator=generator)),), generator=generator
            ).tolist()
            requests.append((None, context, option))
    return requests


def _raw_forward(model, requests, batch_size: int) -> None:
    sequences = [ctx + cont[:-1] for _, ctx, cont in requests]
    sequences.sort(key=len, reverse=True)  # as lm-eval orders them: least padding
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            width = max(map(len, batch))
            ids = torch.tensor([s + [0] * (width - len(s)) for s in batch])
            model(input_ids=ids)


def _timed(fn) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds). With one thread the CPU time is what the
    work costs, whatever else the shared machine runs; the wall time is kept for reference."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def time_model(name: str, docs: int, batch_size: int, repeats: int) -> dict:
    from lm_eval.models.huggingface import HFLM

    from quantsweep.eval import lm as lm_module
    from quantsweep.eval.lm import ContextCachedLM

    model, tokenizer = _model(name)
    # toy-fewshot: a 300-token preamble shared by every question, then 40-80 tokens of its own
    fewshot = {"preamble": 300, "context_tokens": (40, 80)} if name == "toy-fewshot" else {}
    requests = _requests(model.config.vocab_size, docs, **fewshot)
    ours = ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    theirs = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    for warm_up in (
        lambda: _raw_forward(model, requests[:8], batch_size),  # first-call costs out of the timings
        lambda: theirs._loglikelihood_tokens(requests[:8], disable_tqdm=True),
        lambda: ours._loglikelihood_tokens(requests[:8], disable_tqdm=True),
    ):
        warm_up()
    paths = {
        "raw": lambda: _raw_forward(model, requests, batch_size),
        "lm-eval": lambda: theirs._loglikelihood_tokens(requests, disable_tqdm=True),
        "ours": lambda: ours._loglikelihood_tokens(requests, disable_tqdm=True),
    }
    if fewshot:

        def without_preamble():
            saved, lm_module.MIN_SHARED_PREAMBLE = lm_module.MIN_SHARED_PREAMBLE, 10**9
            try:
                ours._loglikelihood_tokens(requests, disable_tqdm=True)
            finally:
                lm_module.MIN_SHARED_PREAMBLE = saved

        paths["ours-no-preamble"] = without_preamble
    runs: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}
    for _ in range(repeats):  # interleaved, best of `repeats`
        for path, fn in paths.items():
            runs[path].append(_timed(fn))
    seconds = {path: min(cpu for cpu, _ in values) for path, values in runs.items()}
    wall_seconds = {path: min(wall for _, wall in values) for path, values in runs.items()}
    ours_ll = ours._loglikelihood_tokens(requests[:40], disable_tqdm=True)
    theirs_ll = theirs._loglikelihood_tokens(requests[:40], disable_tqdm=True)
    tokens_all = sum(len(ctx) + len(cont) - 1 for _, ctx, cont in requests)
    unique = (
        sum(len(ctx) - fewshot.get("preamble", 0) for _, ctx, _ in requests[::4])
        + fewshot.get("preamble", 0)
        + sum(len(cont) for _, _, cont in requests)
    )
    row = {
        "model": name,
        "docs": docs,
        "choices": 4,
        "batch_size": batch_size,
        "repeats": repeats,
        "cpu_seconds": seconds,
        "wall_seconds": wall_seconds,
        "ours_vs_raw": seconds["ours"] / seconds["raw"],
        "lm_eval_vs_raw": seconds["lm-eval"] / seconds["raw"],
        "ours_vs_lm_eval": seconds["ours"] / seconds["lm-eval"],
        "unique_token_ratio": unique / tokens_all,
        "max_abs_diff_nats_first_40": max(abs(a[0] - b[0]) for a, b in zip(ours_ll, theirs_ll)),
        "fallbacks": dict(ours.fallbacks),
    }
    print(
        f"{name:12s} CPU seconds: raw {seconds['raw']:7.2f} s  lm-eval {seconds['lm-eval']:7.2f} s "
        f"({row['lm_eval_vs_raw']:.2f}x raw)  ours {seconds['ours']:7.2f} s ({row['ours_vs_raw']:.2f}x raw, "
        f"{row['ours_vs_lm_eval']:.2f}x lm-eval)  token limit {row['unique_token_ratio']:.2f}x",
        flush=True,
    )
    if fewshot:
        row["ours_no_preamble_vs_raw"] = seconds["ours-no-preamble"] / seconds["raw"]
        print(
            f"{'':12s} without the shared preamble: ours {seconds['ours-no-preamble']:7.2f} s "
            f"({row['ours_no_preamble_vs_raw']:.2f}x raw)",
            flush=True,
        )
    return row


# ---------------------------------------------------------------- memory (child process)

MEMORY = {"vocab": 150_000, "window": 512, "batch_size": 8, "docs": 8, "hidden": 64, "layers": 2}


def _status_bytes(field: str) -> int:
    """A size from /proc/self/status (VmHWM: this process's peak RSS). Unlike getrusage's
    ru_maxrss, VmHWM starts afresh at exec, so the parent's peak does not leak into the child."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(which: str) -> dict:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    import quantsweep
    from quantsweep.eval.lm import ContextCachedLM

    torch.set_num_threads(1)
    _, tokenizer = quantsweep.load_model("toy", device="cpu", dtype="float32")
    model = _random_llama(
        MEMORY["layers"],
        MEMORY["window"],
        vocab_size=MEMORY["vocab"],
        hidden_size=MEMORY["hidden"],
        intermediate_size=4 * MEMORY["hidden"],
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    cls = HFLM if which == "lm-eval" else ContextCachedLM
    lm = cls(pretrained=model, tokenizer=tokenizer, batch_size=MEMORY["batch_size"], max_length=MEMORY["window"])
    # documents are whitespace-separated token ids: both LMs window the same tokens
    lm.tok_encode = lambda text, **kwargs: [int(t) for t in text.split()]
    generator = torch.Generator().manual_seed(0)
    texts = [
        " ".join(map(str, torch.randint(3, MEMORY["vocab"], (MEMORY["window"] - 1,), generator=generator).tolist()))
        for _ in range(MEMORY["docs"])
    ]
    requests = [
        Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=0, metadata=("wt", i, 1))
        for i, t in enumerate(texts)
    ]
    before = _status_bytes("VmHWM")
    start = time.perf_counter()
    values = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM")
    return {
        "which": which,
        "peak_rss_bytes": peak,
        "rss_before_scoring_bytes": before,
        "scoring_peak_above_before_bytes": peak - before,
        "seconds": seconds,
        "loglikelihoods": values,
    }


def memory_pair() -> dict:
    rows = {}
    for which in ("lm-eval", "ours"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", which],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        rows[which] = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"perplexity {which:8s} peak RSS {rows[which]['peak_rss_bytes'] / 2**30:6.2f} GiB "
            f"(+{rows[which]['scoring_peak_above_before_bytes'] / 2**30:.2f} GiB while scoring), "
            f"{rows[which]['seconds']:.1f} s",
            flush=True,
        )
    diff = max(abs(a - b) for a, b in zip(rows["ours"].pop("loglikelihoods"), rows["lm-eval"].pop("loglikelihoods")))
    return {
        "setting": MEMORY,
        "before": rows["lm-eval"],
        "after": rows["ours"],
        "max_abs_diff_nats": diff,
        "logits_bytes_one_batch": MEMORY["batch_size"] * MEMORY["window"] * MEMORY["vocab"] * 4,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="toy,toy-fewshot,pangu1b-2l")
    parser.add_argument("--docs", type=int, default=0, help="questions per model (default: toy 100, pangu1b-2l 8)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=0, help="best of (default: toy 3, pangu1b-2l 1)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="measure memory only and replace that part of an existing results file",
    )
    parser.add_argument("--memory-child", choices=["lm-eval", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return
    torch.set_num_threads(args.threads)
    if args.memory_only:
        result = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}
        result["perplexity_memory"] = memory_pair()
        result["perplexity_memory"]["note"] = "measured in a separate invocation from time_4_choice"
        RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {RESULTS}")
        return
    default_docs = {"toy": 100, "toy-fewshot": 40, "pangu1b-2l": 8}
    default_repeats = {"toy": 3, "toy-fewshot": 3, "pangu1b-2l": 1}
    timings = [
        time_model(
            name, args.docs or default_docs.get(name, 8), args.batch_size, args.repeats or default_repeats.get(name, 1)
        )
        for name in args.models.split(",")
    ]
    result = {
        "machine": f"{platform.machine()} CPU, {args.threads} thread(s), torch {torch.__version__}",
        "device": "cpu",
        "time_4_choice": timings,
    }
    if not args.skip_memory:
        result["perplexity_memory"] = memory_pair()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
