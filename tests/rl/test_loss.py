"""Advantages and the policy loss against hand computations (float64 python loops)."""

import math

import pytest
import torch

from atlas.rl import LossCounts, group_advantages, policy_loss

REWARDS = [[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.2, 0.4, 1.0]]


def _std(xs):  # unbiased, as torch.std
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_by_hand(scale):
    flat = [r for g in REWARDS for r in g]
    got = group_advantages(torch.tensor(REWARDS, dtype=torch.float64), scale)  # batch std: over every rank
    for g, row in zip(REWARDS, got.tolist()):
        mean = sum(g) / len(g)
        s = {"group": _std(g) + 1e-4, "batch": _std(flat) + 1e-4, "none": 1.0}[scale]
        assert row == pytest.approx([(r - mean) / s for r in g], abs=1e-12)
    assert got[1].abs().max() == 0  # a group whose completions all score the same teaches nothing


def test_group_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(2, 2), "rank")


def _case():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 2
    old = logp + (torch.rand(3, 5, generator=g, dtype=torch.float64) - 0.5) * 2.0  # some ratios outside the clip
    ref = logp + (torch.rand(3, 5, generator=g, dtype=torch.float64) - 0.5) * 0.4
    weights = torch.rand(3, 5, generator=g, dtype=torch.float64) + 0.5
    adv = torch.tensor([1.5, -0.7, 0.3], dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    return logp, old, ref, weights, adv, mask


@pytest.mark.parametrize("norm", ["token_mean", "seq_mean", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("use_weights", [False, True])
def test_policy_loss_by_hand(norm, beta, use_weights):
    logp, old, ref, weights, adv, mask = _case()
    eps_low, eps_high = 0.2, 0.28
    # the step's global counts include sequences of other micro-batches/ranks: the denominators are not local
    counts = LossCounts(tokens=20, sequences=6, max_completion_len=7)
    # one value per token: the packed layout's flat targets (here the [3, 5] grid, flattened)
    per_token = {"adv_M": adv[:, None].expand(3, 5).flatten(), "seq_M": torch.arange(3)[:, None].expand(3, 5).flatten()}
    loss, stats = policy_loss(logp.flatten(), old.flatten(), per_token["adv_M"], mask.flatten(), counts,
                              seq_M=per_token["seq_M"], eps_low=eps_low, eps_high=eps_high, beta=beta,
                              ref_M=ref.flatten(), weights_M=weights.flatten() if use_weights else None, norm=norm)
    total, clipped, kl_sum = 0.0, 0, 0.0
    for i in range(3):
        seq = 0.0
        for t in range(5):
            if not mask[i, t]:
                continue
            lp, o, r, a = logp[i, t].item(), old[i, t].item(), ref[i, t].item(), adv[i].item()
            rho = math.exp(lp - o)
            # the truncated-sampling weight corrects the policy-gradient term only, as TRL's; the KL is not weighted
            term = -min(rho * a, min(max(rho, 1 - eps_low), 1 + eps_high) * a)
            term *= weights[i, t].item() if use_weights else 1.0
            k3 = math.exp(r - lp) - (r - lp) - 1
            term += beta * k3
            kl_sum += k3
            clipped += (rho < 1 - eps_low and a < 0) or (rho > 1 + eps_high and a > 0)
            seq += term
        total += seq / int(mask[i].sum()) if norm == "seq_mean" else seq
    expected = {"token_mean": total / 20, "seq_mean": total / 6, "dr_grpo": total / (6 * 7)}[norm]
    assert loss.item() == pytest.approx(expected, abs=1e-10)
    assert stats["tokens"].item() == 9 and stats["clipped"].item() == clipped and clipped > 0
    if beta:
        assert stats["kl"].item() == pytest.approx(kl_sum, abs=1e-6)


def test_at_mu_1_the_ratio_is_one_and_the_gradient_is_the_policy_gradient():
    logp, _, _, _, adv, mask = _case()
    logp = logp.clone().requires_grad_()
    counts = LossCounts(tokens=int(mask.sum()), sequences=3, max_completion_len=5)
    loss, stats = policy_loss(logp, logp.detach(), adv[:, None].expand(3, 5), mask, counts)
    assert stats["clipped"].item() == 0
    loss.backward()
    expected = -(adv[:, None] * mask) / counts.tokens  # d/dlogp of -A * rho at rho = 1
    assert torch.allclose(logp.grad, expected, atol=1e-12)


def test_policy_loss_refuses_inputs_it_would_misread():
    logp, old, _, _, adv, mask = _case()
    counts = LossCounts(tokens=int(mask.sum()), sequences=3, max_completion_len=5)
    with pytest.raises(ValueError, match="an advantage per token, not per sequence"):
        policy_loss(logp, old, adv, mask, counts)  # adv [3] against [3, 5] tokens: no silent broadcast
    with pytest.raises(ValueError, match="seq_M"):
        policy_loss(logp, old, adv[:, None].expand(3, 5), mask, counts, norm="seq_mean")
