"""generalized_jsd (vs TRL's own function), its chunked LM-head variant and the KL estimators."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kernels.helpers import BACKENDS, Backend, abs_err, rel_err

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # trl.experimental announces itself as unstable on import
    from trl.experimental.gkd import GKDTrainer

FP32_TOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]


def trl_jsd(student, teacher, beta, temperature):
    """TRL's per-token generalized JSD (its loss before masking/reduction is per vocab entry)."""
    jsd = GKDTrainer.generalized_jsd_loss(student[None], teacher[None], beta=beta, temperature=temperature,
                                          reduction="none")
    return jsd.sum(-1)[0]


def _pair(n, vocab, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 2
    t = s + torch.randn(n, vocab, generator=gen, dtype=torch.float64) * 1.5  # related, as in distillation
    return s.to(dtype), t.to(dtype), torch.randn(n, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", BETAS)
def test_generalized_jsd_matches_trl(backend, beta):
    kernels = Backend(backend)
    vocab = 4099 if beta == 0.5 else 1000
    s64, t64, g = _pair(6, vocab, seed=int(beta * 10))
    mask = torch.tensor([True, True, False, True, True, True])
    s = s64.float().requires_grad_()
    out = kernels.generalized_jsd(s, t64.float(), beta, 0.8, mask=mask)
    (out * g.float()).sum().backward()

    s_ref = s64.clone().requires_grad_()
    ref = trl_jsd(s_ref, t64, beta, 0.8).masked_fill(~mask, 0.0)
    (ref * g).sum().backward()
    assert out.dtype == torch.float32 and out.shape == (6,)
    assert rel_err(out, ref) <= FP32_TOL
    assert rel_err(s.grad, s_ref.grad) <= FP32_TOL
    assert out[2] == 0 and (s.grad[2] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_generalized_jsd_bf16_no_worse_than_trl_in_bf16(backend, beta):
    kernels = Backend(backend)
    s64, t64, g = _pair(5, 1000, seed=11)
    s, t = s64.bfloat16(), t64.bfloat16()
    ours_in = s.clone().requires_grad_()
    ours = kernels.generalized_jsd(ours_in, t, beta, 1.2)
    (ours * g.float()).sum().backward()
    plain_in = s.clone().requires_grad_()
    plain = trl_jsd(plain_in, t, beta, 1.2)
    (plain * g.bfloat16()).sum().backward()
    ref_in = s.double().requires_grad_()
    ref = trl_jsd(ref_in, t.double(), beta, 1.2)
    (ref * g).sum().backward()
    assert ours_in.grad.dtype == torch.bfloat16
    assert abs_err(ours, ref) <= 2 * abs_err(plain, ref)
    assert abs_err(ours_in.grad, ref_in.grad) <= 2 * abs_err(plain_in.grad, ref_in.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_normalized_jsd_is_continuous_at_the_endpoints(backend):
    kernels = Backend(backend)
    s64, t64, _ = _pair(4, 151, seed=3)
    s, t = s64.float(), t64.float()
    forward_kl = kernels.generalized_jsd(s, t, 0.0, normalize=True)
    reverse_kl = kernels.generalized_jsd(s, t, 1.0, normalize=True)
    assert torch.equal(forward_kl, kernels.generalized_jsd(s, t, 0.0))  # endpoints are TRL's KLs
    near0 = kernels.generalized_jsd(s, t, 1e-3, normalize=True)
    near1 = kernels.generalized_jsd(s, t, 1 - 1e-3, normalize=True)
    assert rel_err(near0, forward_kl) < 1e-2 and rel_err(near1, reverse_kl) < 1e-2
    # TRL's own convention is not continuous: JSD_beta -> 0 at both ends.
    assert kernels.generalized_jsd(s, t, 1e-3).max() < 1e-2 * forward_kl.min()
    mid = kernels.generalized_jsd(s, t, 0.5)
    assert rel_err(kernels.generalized_jsd(s, t, 0.5, normalize=True), 4 * mid) <= FP32_TOL


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_linear_generalized_jsd_matches_full_logits(backend, beta):
    kernels = Backend(backend)
    gen = torch.Generator().manual_seed(4)
    n, vocab = 11, 1000
    hs, ws = torch.randn(n, 16, generator=gen).double(), torch.randn(vocab, 16, generator=gen).double() * 0.5
    ht, wt = torch.randn(n, 24, generator=gen).double(), torch.randn(vocab, 24, generator=gen).double() * 0.5
    g = torch.randn(n, generator=gen).double()
    mask = torch.ones(n, dtype=torch.bool)
    mask[[0, 7]] = False

    student = [hs.float().requires_grad_(), ws.float().requires_grad_()]
    teacher = [ht.float().requires_grad_(), wt.float().requires_grad_()]
    chunk = 1 if beta == 0.5 else 4  # 1: backward tiles of 7 rows x 128 vocab columns, row groups add up
    out = kernels.linear_generalized_jsd(*student, *teacher, beta, 0.9, mask=mask, normalize=True, chunk_size=chunk)
    (out * g.float()).sum().backward()

    ref_s = [hs.clone().requires_grad_(), ws.clone().requires_grad_()]
    scale = 4.0 if beta == 0.5 else 1.0
    ref = scale * trl_jsd(ref_s[0] @ ref_s[1].T, ht @ wt.T, beta, 0.9).masked_fill(~mask, 0.0)
    (ref * g).sum().backward()
    assert rel_err(out, ref) <= FP32_TOL
    assert rel_err(student[0].grad, ref_s[0].grad) <= FP32_TOL
    assert rel_err(student[1].grad, ref_s[1].grad) <= FP32_TOL
    assert teacher[0].grad is None and teacher[1].grad is None  # the teacher is a constant


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_masked_jsd_rows_give_zero_and_no_gradient(backend):
    kernels = Backend(backend)
    s64, t64, _ = _pair(3, 151, seed=5)
    s = s64.float().requires_grad_()
    out = kernels.generalized_jsd(s, t64.float(), 0.5, mask=torch.zeros(3, dtype=torch.bool))
    out.sum().backward()
    assert (out == 0).all() and (s.grad == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_jsd_bad_inputs_raise_value_error(backend):
    kernels = Backend(backend)
    s = torch.randn(3, 10)
    with pytest.raises(ValueError, match="beta"):
        kernels.generalized_jsd(s, s, 1.5)
    with pytest.raises(ValueError, match="same shape"):
        kernels.generalized_jsd(s, torch.randn(3, 11))
    with pytest.raises(ValueError, match="mask"):
        kernels.generalized_jsd(s, s, mask=torch.ones(3))
    with pytest.raises(ValueError, match="same vocabulary"):
        kernels.linear_generalized_jsd(torch.randn(3, 4), torch.randn(10, 4), torch.randn(3, 5), torch.randn(11, 5))


def _kl64(logp, ref, estimator):
    d = ref - logp
    return {"k1": -d, "k2": 0.5 * d * d, "k3": torch.expm1(d) - d}[estimator]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_match_fp64(backend, estimator):
    kernels = Backend(backend)
    gen = torch.Generator().manual_seed(6)
    logp64 = -torch.rand(2, 50, generator=gen, dtype=torch.float64) * 5
    # gaps from 1e-7 (policy == reference up to rounding) to ~3 nats, both signs
    gap = torch.logspace(-7, 0.5, 100, dtype=torch.float64).view(2, 50) * torch.randn(2, 50, generator=gen).sign()
    ref64 = logp64 + gap
    logp, ref = logp64.float().requires_grad_(), ref64.float().requires_grad_()
    g = torch.randn(2, 50, generator=gen, dtype=torch.float64)
    out = kernels.kl(logp, ref, estimator)
    (out * g.float()).sum().backward()
    lp_r, rf_r = logp.detach().double().requires_grad_(), ref.detach().double().requires_grad_()
    expected = _kl64(lp_r, rf_r, estimator)  # on the fp32 inputs: their rounding is not the kernel's error
    (expected * g).sum().backward()
    assert out.dtype == torch.float32 and out.shape == (2, 50)
    # elementwise relative error: k3 must stay accurate where it is ~1e-14
    assert ((out.double() - expected).abs() <= FP32_TOL * expected.abs() + 1e-30).all()
    assert rel_err(logp.grad, lp_r.grad) <= FP32_TOL and rel_err(ref.grad, rf_r.grad) <= FP32_TOL


def test_kl_bad_inputs_raise_value_error():
    from atlas.kernels import kl

    with pytest.raises(ValueError, match="estimator"):
        kl(torch.zeros(3), torch.zeros(3), "k4")
    with pytest.raises(ValueError, match="same shape"):
        kl(torch.zeros(3), torch.zeros(4))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 4), vocab=st.integers(2, 300), beta=st.sampled_from(BETAS + [0.3]),
       temperature=st.floats(0.5, 2.0), seed=st.integers(0, 2**31 - 1))
def test_triton_jsd_equals_torch_twin_random_shapes(n, vocab, beta, temperature, seed):
    outs = []
    s64, t64, g = _pair(n, vocab, seed)
    for kind in BACKENDS:
        s = s64.float().requires_grad_()
        out = Backend(kind).generalized_jsd(s, t64.float(), beta, temperature)
        (out * g.float()).sum().backward()
        outs.append((out, s.grad))
    for a, b in zip(*outs):
        assert abs_err(a, b) <= 1e-5 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_jsd_with_a_masked_vocabulary_block(backend):
    """A first 4096-column block of -inf in both distributions must give the same JSD as without it."""
    kernels = Backend(backend)
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5000, generator=g), torch.randn(2, 5000, generator=g)
    s[0, :4096] = t[0, :4096] = float("-inf")
    out = kernels.generalized_jsd(s, t, beta=0.5)
    expected = Backend("torch").generalized_jsd(s[:, 4096:], t[:, 4096:], beta=0.5)
    assert torch.allclose(out[0], expected[0], atol=1e-5) and out[0] > 0


def test_torch_twin_jsd_row_blocks_match_trl(monkeypatch):
    """The CPU twin's JSD rows in forced 2-row blocks still equal TRL's full-logits loss, gradients too."""
    import atlas.kernels.reference as reference

    calls = []
    block = reference._jsd_block
    monkeypatch.setattr(reference, "ROW_BLOCK_ELEMENTS", 2 * 300)
    monkeypatch.setattr(reference, "_jsd_block", lambda *a: calls.append(1) or block(*a))
    s, t, g = _pair(9, 300, seed=12)
    ours = s.float().requires_grad_()
    out = Backend("torch").generalized_jsd(ours, t.float(), 0.5, 0.9)
    (out * g.float()).sum().backward()
    ref_s = s.clone().requires_grad_()
    ref = trl_jsd(ref_s, t, 0.5, 0.9)
    (ref * g).sum().backward()
    assert len(calls) == 5  # 9 rows in blocks of 2
    assert rel_err(out, ref) <= FP32_TOL and rel_err(ours.grad, ref_s.grad) <= FP32_TOL
