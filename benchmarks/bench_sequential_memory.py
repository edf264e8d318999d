"""Peak memory and time per decoder layer of the sequential GPTQ-family methods.

Models:

* ``toy``: the embedded toy model (4 layers, hidden 128), calibrated on the toy corpus.
* ``pangu7b-2l``: random weights with the real openPangu-Embedded-7B layer shape
  (hidden 4096, intermediate 12800, 32 heads, 8 KV heads, q/k/v/o biases, from
  ``/work/shared/reference/openpangu-embedded-7b.config.json``) but 2 layers and a
  1024-token vocabulary, calibrated on random token ids. This gives the cost per
  decoder layer at real width.

For every (model, recipe): the model's FP weights are restored, the recipe runs
through :func:`quantsweep.quantize`, and we record the seconds of each decoder
layer (from :class:`quantsweep.methods.engine.sequential.LayerReport`), the peak device
memory on an accelerator (:func:`quantsweep.device.peak_memory_bytes`; None on
CPU), and the peak *host* RSS above the level before quantization (sampled from
``/proc/self/statm`` every 5 ms by a thread; tracemalloc cannot see torch's
allocator). For scale, the bytes of one decoder layer's weights and of the
calibration activations (N x L x hidden, one stream) are printed too.

Calibration is small on CPU (default 8 x 256). Run::

    /work/venv/bin/python benchmarks/bench_sequential_memory.py
    /work/venv/bin/python benchmarks/bench_sequential_memory.py --models toy --calib 16x128

Writes ``benchmarks/results/bench_sequential_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # one table line per run instead of progress bars

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import quantsweep  # noqa: E402
from quantsweep import device as devices  # noqa: E402
from quantsweep.models.snapshot import WeightSnapshot  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bench_sequential_memory.json"
PANGU_CONFIG = Path("/work/shared/reference/openpangu-embedded-7b.config.json")
RECIPES = ["w4-gptq", "w4-gptaq", "w4a4-gptaq", "w1-billm", "w2-slim-llm"]
PAGE = os.sysconf("SC_PAGE_SIZE")


class RSSSampler:
    """Peak resident set size of this process while the ``with`` block runs."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * PAGE

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval_s)

    def __enter__(self):
        self.baseline = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def toy_model(n_samples: int, seq_len: int):
    from quantsweep.calibration import load_calibration

    model, tokenizer = quantsweep.load_model("toy", device="cpu")
    seq_len = min(seq_len, model.config.max_position_embeddings)
    return model, load_calibration("toy", tokenizer, n_samples=n_samples, seq_len=seq_len, seed=0)


def pangu_shape_model(n_samples: int, seq_len: int, layers: int = 2, vocab: int = 1024):
    from transformers import LlamaConfig, LlamaForCausalLM

    reference = json.loads(PANGU_CONFIG.read_text())
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=reference["hidden_size"],
        intermediate_size=reference["intermediate_size"],
        num_hidden_layers=layers,
        num_attention_heads=reference["num_attention_heads"],
        num_key_value_heads=reference["num_key_value_heads"],
        rms_norm_eps=reference["rms_norm_eps"],
        rope_theta=reference["rope_theta"],
        max_position_embeddings=4096,
        attention_bias=bool(reference["bias"]),
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, vocab, (n_samples, seq_len), generator=torch.Generator().manual_seed(0))
    return model, ids


def layer_bytes(model) -> int:
    layer = model.model.layers[0]
    return sum(t.numel() * t.element_size() for t in list(layer.parameters()) + list(layer.buffers()))


def run(model_name, model, calibration, recipes, device):
    snapshot = WeightSnapshot(model)
    ids = calibration.input_ids if hasattr(calibration, "input_ids") else calibration
    activation_bytes = ids.numel() * model.config.hidden_size * next(model.parameters()).element_size()
    rows = []
    for name in recipes:
        snapshot.restore(model)
        recipe = quantsweep.get_recipe(name)
        recipe = type(recipe)(**{**recipe.to_dict(), "device": device})
        devices.reset_peak_memory(devices.resolve_device(device))
        start = time.perf_counter()
        with RSSSampler() as sampler:
            report = quantsweep.apply_recipe(model, recipe, calibration=calibration).report
        total = time.perf_counter() - start
        peaks = [layer["peak_device_bytes"] for layer in report["layers"]]
        rows.append(
            {
                "model": model_name,
                "recipe": name,
                "device": devices.resolve_device(device),
                "n_samples": int(ids.shape[0]),
                "seq_len": int(ids.shape[1]),
                "layer_seconds": [layer["seconds"] for layer in report["layers"]],
                "total_seconds": total,
                "device_peak_bytes": None if any(p is None for p in peaks) else max(peaks),
                "host_peak_above_baseline_bytes": sampler.peak - sampler.baseline,
                "one_layer_weight_bytes": layer_bytes(model),
                "calibration_activation_bytes": activation_bytes,
            }
        )
        print(format_row(rows[-1]), flush=True)
    snapshot.restore(model)
    return rows


def mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def format_row(row) -> str:
    per_layer = ", ".join(f"{s:.2f}" for s in row["layer_seconds"])
    return (
        f"{row['model']:11} {row['recipe']:12} {row['n_samples']}x{row['seq_len']:<5} "
        f"[{per_layer}] {row['total_seconds']:8.2f} {mib(row['device_peak_bytes']):>7} "
        f"{mib(row['host_peak_above_baseline_bytes']):>8} {mib(row['one_layer_weight_bytes']):>7} "
        f"{mib(row['calibration_activation_bytes']):>7}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["toy", "pangu7b-2l"], choices=["toy", "pangu7b-2l"])
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--calib", default="8x256", help="N x L calibration tokens, e.g. 8x256")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared machine)")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    n_samples, seq_len = (int(v) for v in options.calib.lower().split("x"))
    print(
        f"{'model':11} {'recipe':12} {'N x L':7} [seconds per decoder layer] {'total s':>8} "
        f"{'dev MiB':>7} {'host MiB':>8} {'layer':>7} {'acts':>7}"
    )
    rows = []
    for name in options.models:
        model, calibration = toy_model(n_samples, seq_len) if name == "toy" else pangu_shape_model(n_samples, seq_len)
        rows += run(name, model, calibration, options.recipes, options.device)
        del model
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    fresh = {(r["model"], r["recipe"]) for r in rows}
    kept = [r for r in previous.get("rows", []) if (r["model"], r["recipe"]) not in fresh]
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "sequential_memory",
                "notes": "host_peak_above_baseline_bytes: peak RSS during quantize() minus RSS before it; "
                "device_peak_bytes: None on CPU. Times on a shared 2-core CPU, torch threads as given.",
                "threads": options.threads,
                "torch": torch.__version__,
                "platform": platform.platform(),
                "rows": kept + rows,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
