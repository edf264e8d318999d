"""Rotation is function-preserving on an accelerator: the toy model's logits before and after
``rotate_model`` (randomized Hadamard, online Hadamard on down_proj), in fp32 and bf16, and after
restoring the snapshot.

Run (needs a CUDA device; on CPU pass --device cpu)::

    python benchmarks/rotation_cuda_check.py [--device cuda]

Prints one JSON object per dtype: the largest absolute logit change, relative to the logits' scale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import quantsweep
    from quantsweep.methods.rotation import rotate_model
    from quantsweep.models.snapshot import WeightSnapshot

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    for dtype in ("float32", "bfloat16"):
        model, tokenizer = quantsweep.load_model("toy", device=args.device, dtype=dtype)
        ids = torch.randint(0, len(tokenizer), (4, 96), generator=torch.Generator().manual_seed(0)).to(args.device)
        snapshot = WeightSnapshot(model)
        with torch.no_grad():
            before = model(ids).logits.float()
            rotate_model(model, seed=0, online=["down_proj"])
            after = model(ids).logits.float()
            snapshot.restore(model)
            restored = model(ids).logits.float()
        scale = before.abs().max().item()
        print(
            json.dumps(
                {
                    "device": str(next(model.parameters()).device),
                    "name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device,
                    "dtype": dtype,
                    "max_abs_logit_change": round((after - before).abs().max().item(), 6),
                    "relative_to_logit_scale": round((after - before).abs().max().item() / scale, 6),
                    "same_top1": round((after.argmax(-1) == before.argmax(-1)).float().mean().item(), 4),
                    "restored_exactly": bool(torch.equal(restored, before)),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
