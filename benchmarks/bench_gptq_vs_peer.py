"""Time quantsweep's GPTQ against llm-compressor's on the same layer, in the same run.

For each weight shape, both implementations quantize the *same* weight with the
*same* Hessian (from the same inputs) to 4 bits, asymmetric, group size 128, 1%
damping, lazy blocks of 128 columns, on the CPU, in this one process:

* ``ours``  : :func:`quantsweep.methods.engine.obs.gptq_quantize`
* ``peer``  : ``llmcompressor.modifiers.gptq.gptq_quantize.quantize_weight`` with
  min-max group qparams from ``compressed_tensors`` (its observer's job).

Two pairings: without act-order (ours: dynamic group scales; peer: static observer
scales), and with act-order (ours: ``act_order=True`` with static groups; peer:
``actorder="weight"``, also static, contiguous groups). Timing covers the
quantization call only (factorisation + column sweep), best of ``--repeats`` after
one warm-up. Also reported: the layer reconstruction error ``||W X - Ŵ X||_F``
of each on the calibration inputs, and RTN's for reference.

llm-compressor lives in its own venv; run this benchmark there (it puts the
repository on ``sys.path``)::

    /work/venv-peer/bin/python benchmarks/bench_gptq_vs_peer.py

Run with a Python that lacks llm-compressor, it times ours only and says the peer
part was skipped. Writes ``benchmarks/results/bench_gptq_vs_peer.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from quantsweep.methods.engine.obs import HessianAccumulator, gptq_quantize  # noqa: E402
from quantsweep.quant import fake_quantize  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_gptq_vs_peer.json"
# (name, out_features, in_features): a toy-width layer and two openPangu-Embedded-7B shapes.
SHAPES = {
    "toy_512x512": (512, 512),
    "pangu7b_q_proj_4096x4096": (4096, 4096),
    "pangu7b_gate_proj_12800x4096": (12800, 4096),
}
BITS, GROUP, DAMP, BLOCK = 4, 128, 0.01, 128


def load_peer():
    """llm-compressor's GPTQ kernel and the qparams helper, or None with the reason."""
    try:
        import llmcompressor
        from compressed_tensors.quantization import QuantizationArgs
        from compressed_tensors.quantization.utils import calculate_qparams
        from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
    except ImportError as error:
        return None, f"llm-compressor not importable in {sys.executable} ({error}); run with /work/venv-peer/bin/python"
    return (QuantizationArgs, calculate_qparams, quantize_weight, llmcompressor.__version__), None


def best_time(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_shape(name, rows, cols, tokens, repeats, peer):
    generator = torch.Generator().manual_seed(0)
    # Correlated inputs with uneven channel scales, like real activations.
    x = torch.randn(tokens, cols, generator=generator) * (torch.rand(cols, generator=generator) * 3 + 0.1)
    weight = torch.randn(rows, cols, generator=generator) * 0.02
    acc = HessianAccumulator(cols)
    acc.add(x)
    hessian = acc.hessian

    def error(q):
        return float(((weight - q) @ x.T).norm())

    row = {
        "shape": name,
        "out_features": rows,
        "in_features": cols,
        "tokens": tokens,
        "rtn_error": error(fake_quantize(weight, BITS, GROUP, False)),
    }
    for act_order in (False, True):
        tag = "act_order" if act_order else "no_act_order"
        ours_s, (ours_q, _) = best_time(
            lambda: gptq_quantize(
                weight,
                hessian,
                bits=BITS,
                group_size=GROUP,
                symmetric=False,
                act_order=act_order,
                dampening_frac=DAMP,
                block_size=BLOCK,
            ),
            repeats,
        )
        row[f"ours_{tag}_s"] = ours_s
        row[f"ours_{tag}_error"] = error(ours_q)
        if peer is not None:
            QuantizationArgs, calculate_qparams, quantize_weight, _ = peer
            args = QuantizationArgs(
                num_bits=BITS,
                type="int",
                symmetric=False,
                strategy="group",
                group_size=GROUP,
                actorder="weight" if act_order else None,
            )
            groups = weight.reshape(rows, -1, GROUP)
            scale, zero = calculate_qparams(groups.amin(-1), groups.amax(-1), args)

            def run_peer():
                return quantize_weight(
                    weight.unsqueeze(0).clone(),
                    hessian.unsqueeze(0).clone(),
                    scale.unsqueeze(0),
                    zero.unsqueeze(0),
                    None,
                    args,
                    blocksize=BLOCK,
                    percdamp=DAMP,
                )

            peer_s, (peer_q, _, _) = best_time(run_peer, repeats)
            row[f"peer_{tag}_s"] = peer_s
            row[f"peer_{tag}_error"] = error(peer_q[0])
            row[f"ratio_{tag}_ours_over_peer"] = ours_s / peer_s
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--tokens", type=int, default=2048, help="calibration tokens behind the Hessian")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared machine)")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    logging.disable(logging.WARNING)  # llm-compressor warns that no accelerator is present
    peer, reason = load_peer()
    if peer is None:
        print(f"peer part skipped: {reason}")
    rows = [bench_shape(name, *SHAPES[name], options.tokens, options.repeats, peer) for name in options.shapes]

    def cell(value, spec):
        return format(value, spec) if value is not None else format("-", ">" + spec.split(".")[0])

    print(
        f"{'shape':32} {'act-order':9} {'ours s':>8} {'peer s':>8} {'ours/peer':>9} "
        f"{'err ours':>9} {'err peer':>9} {'err RTN':>9}"
    )
    for row in rows:
        for tag, label in (("no_act_order", "no"), ("act_order", "yes")):
            print(
                f"{row['shape']:32} {label:9} {cell(row[f'ours_{tag}_s'], '8.2f')} "
                f"{cell(row.get(f'peer_{tag}_s'), '8.2f')} {cell(row.get(f'ratio_{tag}_ours_over_peer'), '9.2f')} "
                f"{cell(row[f'ours_{tag}_error'], '9.4g')} {cell(row.get(f'peer_{tag}_error'), '9.4g')} "
                f"{cell(row['rtn_error'], '9.4g')}"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "gptq_vs_peer",
                "config": {
                    "bits": BITS,
                    "group_size": GROUP,
                    "symmetric": False,
                    "dampening_frac": DAMP,
                    "block_size": BLOCK,
                    "tokens": options.tokens,
                    "repeats": options.repeats,
                    "threads": options.threads,
                },
                "peer": None if peer is None else f"llmcompressor {peer[3]}",
                "peer_skipped_reason": reason,
                "device": "cpu",
                "torch": torch.__version__,
                "platform": platform.platform(),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
