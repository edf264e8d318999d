"""KL divergence and top-1 agreement against scipy's, computed from full distributions in the test."""

import numpy as np
import torch
from scipy.special import rel_entr

from quantsweep.sensitivity.divergence import next_token_divergence


def test_kl_matches_scipy_on_random_distributions():
    generator = torch.Generator().manual_seed(0)
    reference_logits = torch.randn(3, 5, 50, generator=generator) * 3
    logits = reference_logits + torch.randn(3, 5, 50, generator=generator)
    kl, same = next_token_divergence(torch.log_softmax(reference_logits, dim=-1), logits)
    p = torch.softmax(reference_logits.double(), dim=-1).numpy()
    q = torch.softmax(logits.double(), dim=-1).numpy()
    expected = rel_entr(p, q).sum(axis=-1)
    np.testing.assert_allclose(kl.numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(same.numpy(), p.argmax(-1) == q.argmax(-1))
    assert 0 < same.float().mean() < 1  # the noise flips some top tokens, not all


def test_zero_mass_tokens_add_nothing_and_non_finite_logits_give_nan():
    reference = torch.log(torch.tensor([[0.5, 0.5, 0.0]]))  # a token the reference never predicts
    kl, _ = next_token_divergence(reference, torch.tensor([[0.0, 0.0, 5.0]]))
    q = torch.softmax(torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64), dim=0).numpy()
    assert abs(float(kl[0]) - rel_entr([0.5, 0.5, 0.0], q).sum()) < 1e-5
    kl, same = next_token_divergence(reference, torch.tensor([[float("nan"), 0.0, 0.0]]))
    assert torch.isnan(kl[0]) and not bool(same[0])
