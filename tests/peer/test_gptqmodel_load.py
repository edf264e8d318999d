"""The real loader: GPTQModel loads quantsweep's GPTQ export and gives our fake-quant model's logits.

Skips where GPTQModel is not installed (``pip install 'quantsweep[gptq]'``). GPTQModel's
CPU kernel ``TorchLinear`` computes in fp16 or bf16; we load in fp16 and compare with our
fake-quant model in float32. Tolerance: max |logit difference| <= 1% of the largest |logit|
(fp16 weights and activations carry ~2**-11 relative error per operation), and the
top-1 token agrees at >= 95% of positions.

w4-gptq is asymmetric, and GPTQModel refuses asymmetric v1 (``gptq``) checkpoints from
producers other than itself (old auto-gptq v1 files could not hold a zero point of 0),
so it is exported as ``gptq_v2``; w8-rtn (symmetric) checks the v1 zero - 1 convention.
"""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("gptqmodel")

import quantsweep  # noqa: E402
from quantsweep.calibration import load_calibration  # noqa: E402
from quantsweep.export import export_gptq  # noqa: E402
from quantsweep.recipes import get_recipe  # noqa: E402

pytestmark = [pytest.mark.peer, pytest.mark.slow]

RELATIVE_TOLERANCE = 0.01
TOP1_AGREEMENT = 0.95


@pytest.mark.parametrize("recipe, checkpoint_format", [("w4-gptq", "gptq_v2"), ("w8-rtn", "gptq")])
def test_gptqmodel_logits_match_fake_quant(tmp_path, recipe, checkpoint_format):
    from gptqmodel import BACKEND, GPTQModel

    logging.getLogger("gptqmodel").setLevel(logging.WARNING)
    model, tokenizer = quantsweep.load_model("toy", device="cpu")
    calibration = load_calibration("toy", tokenizer, n_samples=32, seq_len=64)
    result = quantsweep.apply_recipe(model, recipe, calibration=calibration)
    out = export_gptq(
        model,
        result,
        tmp_path / recipe,
        config=get_recipe(recipe),
        tokenizer=tokenizer,
        checkpoint_format=checkpoint_format,
    )
    loaded = GPTQModel.load(str(out), device="cpu", dtype=torch.float16, backend=BACKEND.TORCH)
    q_proj = loaded.model.model.layers[0].self_attn.q_proj
    assert hasattr(q_proj, "qweight") and not isinstance(q_proj, torch.nn.Linear)  # a real packed kernel module
    ids = torch.randint(3, 120, (4, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(input_ids=ids).logits
        theirs = loaded.model(input_ids=ids).logits.float()
    error = float((theirs - ours).abs().max())
    scale = float(ours.abs().max())
    agreement = float((theirs.argmax(-1) == ours.argmax(-1)).float().mean())
    logging.getLogger(__name__).info(
        "%s: max |dlogit| %.4f of %.2f, top-1 agreement %.3f", recipe, error, scale, agreement
    )
    assert error <= RELATIVE_TOLERANCE * scale, (error, scale)
    assert agreement >= TOP1_AGREEMENT
