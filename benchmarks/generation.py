"""Generation: decode steps and slots spent against tokens kept, lm-eval's HFLM against quantsweep.

One invocation measures, side by side on the same model and the same requests:

1. **GSM8K-style 5-shot** (lm-eval's own ``gsm8k`` task: its prompts, its stop strings, 256
   new tokens at most) on ``--docs`` (32 and 256) synthetic grade-school problems written in GSM8K's public
   format, at batch size ``--batch-size``, with lm-eval's ``HFLM.generate_until`` and with
   quantsweep's ``ContextCachedLM.generate_until`` (:mod:`quantsweep.eval.generation`).
   For each: model calls (forward passes), decode steps (forwards that decode one token per
   row), decode slots spent (rows summed over all forwards; each yields one token), tokens kept
   (per document, the tokens up to and including the one that completed a stop string or EOS,
   or the 256-token limit; counted on each side's generated token ids by the same rule, so
   identical strings give the same number), wall and CPU time. Every generated string is
   compared. The script fails if one differs in fp32, or if all are identical and the two
   counts of kept tokens are not; in bf16/fp16 a row's logits can depend on its batch, so the
   two schedulers may answer differently, and the number of identical strings is reported.
   Also the fewest decode steps any scheduler could take at this batch size: the longest
   answer's, or the tokens over the batch size, whichever is more. At 32 documents one long
   answer bounds the steps; at 256 (GSM8K has 1,319) the sum does.

   The model: a random 2-layer Llama (hidden 64, openPangu-like q/k/v/o biases) over a
   byte-level vocabulary, its ``lm_head`` given a bias of ``--eos-bias`` on the EOS token so
   that greedy answers end after a spread of lengths, as a real model's do (the issue measured
   1,944 kept of 8,192 slots on a 135M Llama, GSM8K 5-shot, 32 documents at batch 16). A
   random model never writes "Question:"; here answers end on EOS, which lm-eval also adds to
   ``until``. The scheduling is the same either way.

2. **Time per suite family** through ``quantsweep.evaluate`` (the default path), on the toy
   model and on a random 2-layer openPangu-Embedded-shaped model over the toy vocabulary
   (hidden 256, the 7B config's head and MLP ratios): multiple choice (``toy_mc4`` +
   ``toy_mc2``), perplexity (``toy_ppl``) and generation (``toy_gen`` as shipped, 4 new
   tokens, and with GSM8K's budget of 256), ``--limit`` documents each; generation also
   through lm-eval's ``simple_evaluate`` with ``HFLM``. The trained toy answers and stops;
   the random model mostly runs to the limit, so there the two take about the same steps.

The GSM8K-style model runs on ``--device`` (cpu, cuda, npu:0) in ``--dtype`` (float32,
bfloat16, float16); the family timing (part 2) always runs on CPU in fp32 and is left out with
``--skip-families``. Run::

    /work/main/.venv/bin/python benchmarks/generation.py
    python benchmarks/generation.py --device cuda --dtype bfloat16 --skip-families --out benchmarks/results/generation_cuda_bf16.json

Writes the JSON file ``--out`` (by default ``benchmarks/results/generation.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "generation.json"
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "coins"]


def _gsm8k_rows(n: int, offset: int) -> list[dict]:
    """Grade-school problems in GSM8K's public format (question, answer with a ``#### n`` line)."""
    rows = []
    for i in range(offset, offset + n):
        name, item = NAMES[i % len(NAMES)], ITEMS[i % len(ITEMS)]
        a, b, c = 3 + i % 17, 2 + (5 * i) % 11, 1 + (3 * i) % 4
        extra = " She gives half of them to a friend and keeps the rest." * (i % 3)
        question = (
            f"{name} has {a} {item}. {name} buys {b} more {item} every day for {c} days.{extra} "
            f"How many {item} does {name} have now?"
        )
        total = a + b * c
        answer = f"{name} buys {b} * {c} = <<{b}*{c}={b * c}>>{b * c} {item}.\n"
        answer += f"{name} has {a} + {b * c} = <<{a}+{b * c}={total}>>{total} {item}.\n#### {total}"
        rows.append({"question": question, "answer": answer})
    return rows


def _byte_model(eos_bias: float, seed: int = 0):
    """A random 2-layer Llama over bytes (+ EOS), EOS logit raised by ``eos_bias`` through an lm_head bias."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    vocab["<eos>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=True,
        max_position_embeddings=8192,
        initializer_range=0.2,
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab["<eos>"],
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).eval()
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[vocab["<eos>"]] = eos_bias
    model.lm_head = head
    return model, tokenizer


class _ForwardCounter:
    """Counts forward passes of a model and the rows they carry (a forward hook, for both LMs alike)."""

    def __init__(self, model):
        self.calls = self.decode_steps = self.slots = 0
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        self.slots += ids.shape[0]
        self.decode_steps += int(ids.shape[1] == 1)

    def close(self):
        self._handle.remove()


def _record_hflm_outputs(lm) -> list:
    """Wraps ``lm._model_generate`` to keep what each of its calls returned (counted after the timing)."""
    calls = []
    generate = lm._model_generate

    def recording(context, max_length, stop, **kwargs):
        out = generate(context=context, max_length=max_length, stop=stop, **kwargs)
        calls.append((out, context.shape[1], max_length - context.shape[1], tuple(s for s in stop if s)))
        return out

    lm._model_generate = recording
    return calls


def _hflm_kept(calls, decode, eos_ids) -> list[int]:
    """Per row HFLM generated, the tokens it kept, counted on its generated ids by quantsweep's rule.

    The tokens up to and including the first EOS, or the one whose decoded prefix first holds a
    stop string, or the token limit: what ``GenerationStats.tokens`` counts for quantsweep.
    (Re-tokenizing HFLM's strings does not count them: the byte-level tokenizer decodes an
    invalid UTF-8 run as U+FFFD, which re-encodes as three bytes.)
    """
    from quantsweep.eval.generation import stopped

    kept = []
    for out, width, budget, stops in calls:
        for row in out[:, width:].tolist():
            n = len(row)
            for i, token in enumerate(row):
                if token in eos_ids or i + 1 >= budget or (stops and stopped(row[: i + 1], stops, decode, i + 1)):
                    n = i + 1
                    break
            kept.append(n)
    return kept


def _timed(run):
    wall, cpu = time.perf_counter(), time.process_time()
    out = run()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _gsm8k_requests(docs: int, data_dir: Path):
    from lm_eval.tasks import get_task_dict

    from quantsweep.eval import offline
    from quantsweep.eval.tasks import manager_for

    for split, rows in (("test", _gsm8k_rows(docs, 0)), ("train", _gsm8k_rows(64, 10_000))):
        path = data_dir / "gsm8k" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    configs = offline.local_task_configs(["gsm8k"], data_dir)
    (task,) = get_task_dict([configs["gsm8k"]], manager_for([])).values()
    task.set_fewshot_seed(seed=1234)  # as simple_evaluate seeds it: the same five examples every run
    task.build_all_requests(limit=docs, rank=0, world_size=1)
    return list(task.instances)


def gsm8k_case(args, docs: int) -> dict:
    from lm_eval.models.huggingface import HFLM

    from quantsweep.eval.lm import ContextCachedLM

    model, tokenizer = _byte_model(args.eos_bias)
    model = model.to(device=args.device, dtype=getattr(torch, args.dtype))
    with tempfile.TemporaryDirectory() as tmp:
        requests = _gsm8k_requests(docs, Path(tmp))
    prompt_tokens = [len(tokenizer(r.args[0])["input_ids"]) for r in requests]
    rows = {}
    strings = {}
    for name, make in (
        ("lm-eval HFLM", lambda: HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)),
        ("quantsweep", lambda: ContextCachedLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)),
    ):
        lm = make()
        if name == "lm-eval HFLM":
            hf_calls = _record_hflm_outputs(lm)
        counter = _ForwardCounter(model)
        out, wall, cpu = _timed(lambda lm=lm: lm.generate_until(copy.deepcopy(requests), disable_tqdm=True))
        counter.close()
        strings[name] = out
        rows[name] = {
            "model_calls": counter.calls,
            "decode_steps": counter.decode_steps,
            "slots": counter.slots,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
        }
        if name == "quantsweep":
            stats = lm.generation_stats
            assert not lm.fallbacks, lm.fallbacks
            assert (stats.model_calls, stats.slots) == (counter.calls, counter.slots), (stats, counter.__dict__)
            rows[name]["tokens_kept"], longest = stats.tokens, stats.longest
        else:
            eos = model.generation_config.eos_token_id
            hf_kept = _hflm_kept(hf_calls, lm.tok_decode, {eos} if isinstance(eos, int) else set(eos or ()))
            assert len(hf_kept) == len(requests), (len(hf_kept), len(requests))
            rows[name]["tokens_kept"] = sum(hf_kept)
    same = sum(a == b for a, b in zip(strings["lm-eval HFLM"], strings["quantsweep"], strict=True))
    if same != len(requests) and args.dtype == "float32":
        raise SystemExit(f"generated strings differ: {len(requests) - same} of {len(requests)}")
    # in bf16 a row's logits can depend on what else is in its batch (padding, batch size), so the
    # two schedulers may pick another token at a near tie: the count is reported, not required
    hf, qs = rows["lm-eval HFLM"], rows["quantsweep"]
    if same == len(requests) and hf["tokens_kept"] != qs["tokens_kept"]:
        raise SystemExit(
            f"identical strings, yet tokens kept differ: HFLM {hf['tokens_kept']}, quantsweep {qs['tokens_kept']}"
        )
    for row in rows.values():
        row["kept_per_slot"] = round(row["tokens_kept"] / row["slots"], 3)
    kept = qs["tokens_kept"]
    return {
        "docs": len(requests),
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "eos_bias": args.eos_bias,
        "prompt_tokens_mean": round(sum(prompt_tokens) / len(prompt_tokens)),
        "identical_strings": same,
        "longest_answer_tokens": longest,
        # no scheduler at this batch size needs fewer decode steps: every row but its first token
        # (from the prefill) takes a step, and the longest answer takes longest - 1 steps alone
        "decode_step_lower_bound": max(-(-(kept - len(requests)) // args.batch_size), longest - 1),
        "rows": rows,
        "ratios": {
            "decode_steps": round(qs["decode_steps"] / hf["decode_steps"], 3),
            "model_calls": round(qs["model_calls"] / hf["model_calls"], 3),
            "slots": round(qs["slots"] / hf["slots"], 3),
            "wall": round(qs["wall_s"] / hf["wall_s"], 3),
            "cpu": round(qs["cpu_s"] / hf["cpu_s"], 3),
        },
    }


def _pangu_shaped(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = json.loads((ROOT.parent / "shared" / "reference" / "openpangu-embedded-7b.config.json").read_text())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=256 * shape["intermediate_size"] // shape["hidden_size"],
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=8 * shape["num_key_value_heads"] // shape["num_attention_heads"],
        attention_bias=True,
        max_position_embeddings=512,
        rope_theta=shape.get("rope_theta", 10000.0),
        rms_norm_eps=shape.get("rms_norm_eps", 1e-5),
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


def families_case(args) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    import quantsweep
    from quantsweep.eval.harness import _without_environment_report
    from quantsweep.eval.tasks import manager_for, task_config

    toy, tokenizer = quantsweep.load_model("toy", device="cpu", dtype="float32")
    long_gen = task_config("toy_gen")  # the same task with GSM8K's token budget (256)
    long_gen["generation_kwargs"] = {**long_gen["generation_kwargs"], "max_gen_toks": 256}
    families = {
        "multiple choice (toy_mc4, toy_mc2)": (["toy_mc4", "toy_mc2"], None),
        "perplexity (toy_ppl)": (["toy_ppl"], None),
        "generation (toy_gen, 4 new tokens)": (["toy_gen"], None),
        "generation (toy_gen, up to 256 new tokens)": (["toy_gen"], {"toy_gen": long_gen}),
    }
    out = {}
    for model_name, model in (("toy", toy), ("pangu-shaped-2l", _pangu_shaped(tokenizer))):
        times = {}
        for family, (tasks, configs) in families.items():
            _, wall, cpu = _timed(
                lambda tasks=tasks, configs=configs, model=model: quantsweep.evaluate(
                    model, tokenizer, tasks=tasks, limit=args.limit, batch_size=args.batch_size, task_configs=configs
                )
            )
            times[family] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
            if not family.startswith("generation"):
                continue
            with _without_environment_report():  # as quantsweep.evaluate does: no `pip list` per call
                _, wall, cpu = _timed(
                    lambda configs=configs, model=model: lm_eval.simple_evaluate(
                        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size),
                        tasks=[configs["toy_gen"] if configs else "toy_gen"],
                        limit=args.limit,
                        task_manager=manager_for(["toy_gen"]),
                        verbosity="ERROR",
                        bootstrap_iters=1000,
                        random_seed=1234,
                        numpy_random_seed=1234,
                        torch_random_seed=1234,
                        fewshot_random_seed=1234,
                    )
                )
            times[family + ", lm-eval HFLM"] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}
        out[model_name] = times
    return out


def _device_name(args) -> str:
    if args.device.startswith("cuda"):
        where = f"{torch.cuda.get_device_name(args.device)} (torch {torch.__version__})"
    else:
        where = f"{args.device} ({platform.machine()}, torch {torch.__version__}, {args.threads} thread(s))"
    families = "" if args.skip_families else "; the family timing on cpu, fp32"
    return f"{where}, {args.dtype}{families}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--docs", default="32,256", help="GSM8K-style documents, comma-separated: one case per number")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eos-bias", type=float, default=1.0, help="EOS logit bias of the GSM8K-style model")
    parser.add_argument("--limit", type=int, default=100, help="documents per toy task in the family timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-families", action="store_true")
    parser.add_argument("--device", default="cpu", help="where the GSM8K-style model runs (cpu, cuda, npu:0)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", default=str(RESULTS), help="the JSON file written")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "command": "benchmarks/generation.py " + " ".join(sys.argv[1:]),
        "device": _device_name(args),
        "date": time.strftime("%Y-%m-%d"),
        "gsm8k_style": [],
    }
    for docs in [int(n) for n in args.docs.split(",")]:
        result["gsm8k_style"].append(gsm8k_case(args, docs))
        print(json.dumps(result["gsm8k_style"][-1], indent=1), flush=True)
    if not args.skip_families:
        result["families"] = families_case(args)
        print(json.dumps(result["families"], indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
