"""Rotation rescues W4A4: rotate + GPTQ (W4 per channel) + 4-bit per-token activations against
W4A4 SmoothQuant (the recipe that gave non-finite perplexity in the study), same calibration.

Composed through the recipe plumbing (a ``stages:`` recipe given to ``quantsweep.quantize``):
rotate (online Hadamard on down_proj), GPTQ W4 per channel, A4 per token without clipping.
Margins are set from measured numbers (CPU, fp32), see each test, and leave room for the
rotation seed: on toy, rotation seeds 0/1/2 gave +0.00/+0.02/+0.05 perplexity over fp,
against +0.24 for SmoothQuant.
"""

import pytest
import torch
from helpers.outlier_models import perplexity, sample_tokens, sequence_nll, write_outlier_pangu
from scipy.stats import wilcoxon

import quantsweep
from quantsweep.calibration import load_calibration
from quantsweep.methods.activation import attach_activation_quant
from quantsweep.methods.rotation import rotate_model
from quantsweep.models.layout import decoder_linears
from quantsweep.models.snapshot import WeightSnapshot
from quantsweep.recipes import recipe_from_dict

W4A4_ROTATE_GPTQ = {
    "name": "w4a4-rotate-gptq-test",
    "stages": [
        {"transform": "rotate", "seed": 0, "online": ["down_proj"]},
        {"weight": "gptq", "bits": 4, "group_size": None, "symmetric": True},
        {"activations": {"bits": 4, "symmetric": True, "clip_ratio": 1.0}},  # after the rotation: Hadamard input
    ],
}


def w4a4_rotate_gptq(model, calibration: torch.Tensor) -> None:
    """QuaRot W4A4 as a composed recipe: rotation (online Hadamard on down_proj), GPTQ W4, A4 per token."""
    quantsweep.quantize(model, recipe_from_dict(W4A4_ROTATE_GPTQ), calibration=calibration)


def compare(model, calibration, evaluation):
    """Per-sequence NLLs of fp, W4A4 SmoothQuant and W4A4 rotate + GPTQ on ``evaluation``."""
    snapshot = WeightSnapshot(model)
    fp = sequence_nll(model, evaluation)
    quantsweep.quantize(model, "w4a4-smoothquant", calibration=calibration)
    smoothquant = sequence_nll(model, evaluation)
    snapshot.restore(model)
    w4a4_rotate_gptq(model, calibration)
    rotated = sequence_nll(model, evaluation)
    snapshot.restore(model)
    assert torch.equal(sequence_nll(model, evaluation), fp)  # restore brought the FP model back
    return fp, smoothquant, rotated


@pytest.mark.slow  # GPTQ + SmoothQuant on 4 layers: ~15 s quiet, minutes on a loaded 2-core machine
def test_rotation_rescues_w4a4_on_toy():
    # Measured: fp 3.83, SmoothQuant 4.08, rotate + GPTQ 3.83 (seed 0). SmoothQuant damages the
    # toy only mildly (it has no strong outlier channels), so the margin is on the damage:
    # rotation must keep less than half of SmoothQuant's rise over fp.
    model, tokenizer = quantsweep.load_model("toy")
    calibration = load_calibration("toy", tokenizer, n_samples=16, seq_len=128, seed=0).input_ids
    evaluation = load_calibration("toy", tokenizer, n_samples=64, seq_len=128, seed=7).input_ids
    fp, smoothquant, rotated = compare(model, calibration, evaluation)
    ppl_fp, ppl_sq, ppl_rot = perplexity(fp), perplexity(smoothquant), perplexity(rotated)
    assert ppl_sq > ppl_fp * 1.03  # the damage to rescue is there
    assert ppl_rot - ppl_fp < 0.5 * (ppl_sq - ppl_fp), (ppl_fp, ppl_sq, ppl_rot)
    assert wilcoxon(smoothquant.numpy(), rotated.numpy(), alternative="greater").pvalue < 0.01


@pytest.mark.slow
def test_rotation_rescues_w4a4_on_an_openpangu_shaped_model(tmp_path):
    # Measured (hidden 64, 2 layers, outliers in norm scales and down_proj inputs): fp 3.26,
    # SmoothQuant 25.1, rotate + GPTQ 13.6 (1.84x lower). Asserted: at least 1.4x lower.
    write_outlier_pangu(tmp_path / "pangu")
    model, _ = quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)
    calibration = sample_tokens(model, 32, 64, seed=0)
    evaluation = sample_tokens(model, 32, 64, seed=1)
    fp, smoothquant, rotated = compare(model, calibration, evaluation)
    ppl_fp, ppl_sq, ppl_rot = perplexity(fp), perplexity(smoothquant), perplexity(rotated)
    assert ppl_sq > 1.4 * ppl_rot, (ppl_fp, ppl_sq, ppl_rot)
    assert wilcoxon(smoothquant.numpy(), rotated.numpy(), alternative="greater").pvalue < 0.01


def test_online_hadamard_matters_for_down_proj_outliers(tmp_path):
    """With outliers on down_proj's input, A4 after rotation without the online Hadamard is worse."""
    write_outlier_pangu(tmp_path / "pangu")
    model, _ = quantsweep.load_model(tmp_path / "pangu", device="cpu", trust_remote_code=True)
    evaluation = sample_tokens(model, 16, 48, seed=1)
    snapshot = WeightSnapshot(model)
    nll = {}
    for online in (("down_proj",), ()):
        rotate_model(model, seed=0, online=online)
        for linear in decoder_linears(model).values():
            attach_activation_quant(linear, bits=4)
        nll[online] = sequence_nll(model, evaluation)
        snapshot.restore(model)
    assert perplexity(nll[("down_proj",)]) < perplexity(nll[()]), {k: perplexity(v) for k, v in nll.items()}
