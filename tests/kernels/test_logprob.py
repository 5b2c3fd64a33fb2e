"""token_logprobs and linear_token_logprobs, Triton (interpreted) and torch twin, against fp64."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.kernels.helpers import (
    BACKENDS,
    IGNORE,
    Backend,
    LargestTensor,
    abs_err,
    logprobs64,
    random_targets,
    rel_err,
)

FP32_TOL = 1e-5
# Triton's interpreter evaluates both sides of tl.where with numpy: 0 * -inf on padding lanes warns there
# (and is discarded by the where), never on a GPU.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vocab,temperature", [(151, 1.0), (1000, 0.7), (4099, 1.3)])
def test_token_logprobs_fp32_matches_fp64(backend, vocab, temperature):
    kernels = Backend(backend)
    gen = torch.Generator().manual_seed(vocab)
    z64 = (torch.randn(2, 3, vocab, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    targets = random_targets((2, 3), vocab, gen)
    g_lp, g_ent = torch.randn(2, 3, generator=gen, dtype=torch.float64), torch.randn(2, 3, generator=gen).double()
    z = z64.detach().float().requires_grad_()

    lp, ent = kernels.token_logprobs(z, targets, temperature, return_entropy=True)
    lp_ref, ent_ref = logprobs64(z64, targets, temperature)
    (lp * g_lp.float() + ent * g_ent.float()).sum().backward()
    (lp_ref * g_lp + ent_ref * g_ent).sum().backward()

    assert lp.dtype == ent.dtype == torch.float32 and lp.shape == (2, 3)
    assert rel_err(lp, lp_ref) <= FP32_TOL
    assert rel_err(ent, ent_ref) <= FP32_TOL
    assert rel_err(z.grad, z64.grad) <= FP32_TOL
    assert lp[0, 0] == 0 and ent[0, 0] == 0 and (z.grad[0, 0] == 0).all()  # the ignored target


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vocab", [151, 4099])
def test_token_logprobs_bf16_no_worse_than_plain_torch(backend, vocab):
    kernels = Backend(backend)
    gen = torch.Generator().manual_seed(1)
    z = (torch.randn(7, vocab, generator=gen) * 4).bfloat16()
    targets = random_targets((7,), vocab, gen)
    g = torch.randn(7, generator=gen)
    temperature = 0.9

    z_ours = z.clone().requires_grad_()
    (kernels.token_logprobs(z_ours, targets, temperature) * g).sum().backward()
    lp_ours = kernels.token_logprobs(z, targets, temperature)

    z_plain = z.clone().requires_grad_()
    logp = (z_plain / temperature).log_softmax(-1)  # everything in bf16
    lp_plain = logp.gather(-1, targets.clamp(min=0)[:, None]).squeeze(-1).masked_fill(targets == IGNORE, 0)
    (lp_plain * g.bfloat16()).sum().backward()

    z64 = z.double().requires_grad_()
    lp_ref, _ = logprobs64(z64, targets, temperature)
    (lp_ref * g.double()).sum().backward()

    assert z_ours.grad.dtype == torch.bfloat16
    assert abs_err(lp_ours, lp_ref) <= 2 * abs_err(lp_plain, lp_ref)
    assert abs_err(z_ours.grad, z64.grad) <= 2 * abs_err(z_plain.grad, z64.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_logprobs_without_entropy_and_partial_grads(backend):
    kernels = Backend(backend)
    gen = torch.Generator().manual_seed(2)
    z64 = torch.randn(5, 1000, generator=gen, dtype=torch.float64).requires_grad_()
    targets = random_targets((5,), 1000, gen)
    z = z64.detach().float().requires_grad_()
    before = z.detach().clone()
    lp = kernels.token_logprobs(z, targets, 2.0)
    lp_ref, ent_ref = logprobs64(z64, targets, 2.0)
    (lp * 3.0).sum().backward()
    (lp_ref * 3.0).sum().backward()
    assert rel_err(lp, lp_ref) <= FP32_TOL and rel_err(z.grad, z64.grad) <= FP32_TOL
    assert torch.equal(z.detach(), before)  # backward writes into a copy, never the caller's logits

    # Upstream gradient through the entropy alone.
    z.grad, z64.grad = None, None
    _, ent = kernels.token_logprobs(z, targets, 2.0, return_entropy=True)
    ent.sum().backward()
    logprobs64(z64, targets, 2.0)[1].sum().backward()
    assert rel_err(z.grad, z64.grad) <= FP32_TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_masked_rows_give_zero_and_no_gradient(backend):
    kernels = Backend(backend)
    gen = torch.Generator().manual_seed(3)
    targets = torch.full((6,), IGNORE)
    z = torch.randn(6, 151, generator=gen, requires_grad=True)
    lp, ent = kernels.token_logprobs(z, targets, return_entropy=True)
    (lp + ent).sum().backward()
    assert (lp == 0).all() and (ent == 0).all() and (z.grad == 0).all()

    h = torch.randn(6, 8, generator=gen, requires_grad=True)
    w = torch.randn(151, 8, generator=gen, requires_grad=True)
    lp, ent = kernels.linear_token_logprobs(h, w, targets, return_entropy=True, chunk_size=4)
    (lp + ent).sum().backward()
    assert (lp == 0).all() and (ent == 0).all() and (h.grad == 0).all() and (w.grad == 0).all()


def _linear_case(vocab, dtype, seed, n=13, hidden=24):
    gen = torch.Generator().manual_seed(seed)
    h64 = torch.randn(n, hidden, generator=gen, dtype=torch.float64)
    w64 = torch.randn(vocab, hidden, generator=gen, dtype=torch.float64) * 0.5
    h, w = h64.to(dtype), w64.to(dtype)
    targets = random_targets((n,), vocab, gen, n_ignored=2)
    g_lp, g_ent = torch.randn(n, generator=gen).double(), torch.randn(n, generator=gen).double()
    return h, w, targets, g_lp, g_ent


def _linear_ref(h, w, targets, temperature, g_lp, g_ent):
    h64, w64 = h.double().requires_grad_(), w.double().requires_grad_()
    lp, ent = logprobs64(h64 @ w64.T, targets, temperature)
    (lp * g_lp + ent * g_ent).sum().backward()
    return lp, ent, h64.grad, w64.grad


@pytest.mark.parametrize("backend", BACKENDS)
# chunk_size=1 forces the backward's multi-row-group path (rows per tile < N) and two vocab blocks.
@pytest.mark.parametrize("vocab,chunk_size", [(151, 4), (151, 1), (4099, None)])
def test_linear_token_logprobs_fp32_matches_fp64(backend, vocab, chunk_size):
    kernels = Backend(backend)
    h, w, targets, g_lp, g_ent = _linear_case(vocab, torch.float32, seed=vocab)
    h.requires_grad_(), w.requires_grad_()
    lp, ent = kernels.linear_token_logprobs(h, w, targets, 0.8, return_entropy=True, chunk_size=chunk_size)
    (lp * g_lp.float() + ent * g_ent.float()).sum().backward()
    lp_ref, ent_ref, dh_ref, dw_ref = _linear_ref(h.detach(), w.detach(), targets, 0.8, g_lp, g_ent)
    assert rel_err(lp, lp_ref) <= FP32_TOL and rel_err(ent, ent_ref) <= FP32_TOL
    assert rel_err(h.grad, dh_ref) <= FP32_TOL and rel_err(w.grad, dw_ref) <= FP32_TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_token_logprobs_bf16_no_worse_than_plain_torch(backend):
    kernels = Backend(backend)
    h, w, targets, g_lp, _ = _linear_case(1000, torch.bfloat16, seed=5)
    temperature = 1.1
    ours = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    lp = kernels.linear_token_logprobs(*ours, targets, temperature, chunk_size=4)
    (lp * g_lp.float()).sum().backward()
    plain = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    logp = ((plain[0] @ plain[1].T) / temperature).log_softmax(-1)
    lp_plain = logp.gather(-1, targets.clamp(min=0)[:, None]).squeeze(-1).masked_fill(targets == IGNORE, 0)
    (lp_plain * g_lp.bfloat16()).sum().backward()
    lp_ref, _, dh_ref, dw_ref = _linear_ref(h, w, targets, temperature, g_lp, torch.zeros_like(g_lp))

    assert ours[0].grad.dtype == ours[1].grad.dtype == torch.bfloat16
    assert abs_err(lp, lp_ref) <= 2 * abs_err(lp_plain, lp_ref)
    assert abs_err(ours[0].grad, dh_ref) <= 2 * abs_err(plain[0].grad, dh_ref)
    assert abs_err(ours[1].grad, dw_ref) <= 2 * abs_err(plain[1].grad, dw_ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_token_logprobs_grad_to_one_input_and_leading_dims(backend):
    kernels = Backend(backend)
    h, w, targets, g_lp, _ = _linear_case(151, torch.float32, seed=6, n=12)
    lp_ref, _, dh_ref, dw_ref = _linear_ref(h, w, targets, 1.0, g_lp, torch.zeros_like(g_lp))
    hh = h.clone().requires_grad_()
    lp = kernels.linear_token_logprobs(hh.view(3, 4, -1), w, targets.view(3, 4), chunk_size=5)
    assert lp.shape == (3, 4)
    (lp.view(-1) * g_lp.float()).sum().backward()
    assert rel_err(hh.grad, dh_ref) <= FP32_TOL
    ww = w.clone().requires_grad_()
    (kernels.linear_token_logprobs(h, ww, targets, chunk_size=5) * g_lp.float()).sum().backward()
    assert rel_err(ww.grad, dw_ref) <= FP32_TOL and rel_err(lp.view(-1), lp_ref) <= FP32_TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_token_logprobs_never_materialises_n_by_v(backend):
    kernels = Backend(backend)
    n, vocab, chunk = 40, 1000, 8
    h, w, targets, g_lp, g_ent = _linear_case(vocab, torch.float32, seed=7, n=n)
    h.requires_grad_(), w.requires_grad_()
    with LargestTensor() as probe:
        lp, ent = kernels.linear_token_logprobs(h, w, targets, return_entropy=True, chunk_size=chunk)
        (lp * g_lp.float() + ent * g_ent.float()).sum().backward()
    assert probe.largest <= max(chunk * vocab, w.numel()) * 4  # one fp32 chunk of logits, or dW itself


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), vocab=st.integers(1, 300), temperature=st.floats(0.3, 3.0),
       scale=st.floats(0.0, 20.0), seed=st.integers(0, 2**31 - 1))
def test_torch_twin_random_shapes(n, vocab, temperature, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    z64 = (torch.randn(n, vocab, generator=gen, dtype=torch.float64) * scale).requires_grad_()
    targets = random_targets((n,), vocab, gen, n_ignored=seed % 2)
    z = z64.detach().float().requires_grad_()
    lp, ent = Backend("torch").token_logprobs(z, targets, temperature, return_entropy=True)
    (lp + 0.5 * ent).sum().backward()
    lp_ref, ent_ref = logprobs64(z64, targets, temperature)
    (lp_ref + 0.5 * ent_ref).sum().backward()
    # absolute floor: with scale ~ 0 every value is ~log V and the gradients are ~1/V
    assert abs_err(lp, lp_ref) <= FP32_TOL * max(1.0, lp_ref.abs().max().item())
    assert abs_err(ent, ent_ref) <= FP32_TOL * max(1.0, ent_ref.abs().max().item())
    assert abs_err(z.grad, z64.grad) <= FP32_TOL * max(1.0, z64.grad.abs().max().item())


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 5), vocab=st.integers(1, 300), temperature=st.floats(0.3, 3.0),
       seed=st.integers(0, 2**31 - 1))
def test_triton_equals_torch_twin_random_shapes(n, vocab, temperature, seed):
    tri = Backend("triton")
    twin = Backend("torch")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, vocab, generator=gen) * 5
    targets = random_targets((n,), vocab, gen, n_ignored=seed % 2)
    outs = []
    for mod in (tri, twin):
        zz = z.clone().requires_grad_()
        lp, ent = mod.token_logprobs(zz, targets, temperature, return_entropy=True)
        (lp - ent).sum().backward()
        outs.append((lp, ent, zz.grad))
    for a, b in zip(*outs):
        assert abs_err(a, b) <= 1e-5 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_value_error(backend):
    kernels = Backend(backend)
    z = torch.randn(3, 10)
    with pytest.raises(ValueError, match="outside"):
        kernels.token_logprobs(z, torch.tensor([0, 10, 1]))
    with pytest.raises(ValueError, match="shape"):
        kernels.token_logprobs(z, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="temperature"):
        kernels.token_logprobs(z, torch.tensor([0, 1, 2]), temperature=0.0)
    with pytest.raises(ValueError, match="integer"):
        kernels.token_logprobs(z, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        kernels.token_logprobs(z.double(), torch.tensor([0, 1, 2]))
    h, w = torch.randn(3, 4), torch.randn(10, 4)
    with pytest.raises(ValueError, match="disagree on H"):
        kernels.linear_token_logprobs(h, torch.randn(10, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="dtype"):
        kernels.linear_token_logprobs(h, w.bfloat16(), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="chunk_size"):
        kernels.linear_token_logprobs(h, w, torch.tensor([0, 1, 2]), chunk_size=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    kernels = Backend(backend)
    z = torch.randn(0, 151, requires_grad=True)
    kernels.token_logprobs(z, torch.zeros(0, dtype=torch.long)).sum().backward()
    assert z.grad.shape == (0, 151)
    h, w = torch.randn(0, 8, requires_grad=True), torch.randn(151, 8, requires_grad=True)
    kernels.linear_token_logprobs(h, w, torch.zeros(0, dtype=torch.long)).sum().backward()
    assert h.grad.shape == (0, 8) and (w.grad == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_logits_rows(backend):
    """Logits that are a column slice of a wider tensor (row stride > V) read and write the right rows."""
    kernels = Backend(backend)
    gen = torch.Generator().manual_seed(8)
    wide = torch.randn(5, 160, generator=gen, dtype=torch.float64)
    targets = random_targets((5,), 151, gen)
    z = wide.float().requires_grad_()
    (kernels.token_logprobs(z[:, :151], targets, 0.9) * 2.0).sum().backward()
    z64 = wide.clone().requires_grad_()
    (logprobs64(z64[:, :151], targets, 0.9)[0] * 2.0).sum().backward()
    assert rel_err(z.grad, z64.grad) <= FP32_TOL and (z.grad[:, 151:] == 0).all()
    s = wide.float().requires_grad_()
    kernels.generalized_jsd(s[:, :151], wide.float()[:, 9:], 0.5).sum().backward()
    s_ref = s.detach().clone().requires_grad_()
    kernels.generalized_jsd(s_ref[:, :151].contiguous(), wide.float()[:, 9:].contiguous(), 0.5).sum().backward()
    assert torch.allclose(s.grad, s_ref.grad, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_vocabulary_block_gives_finite_logprobs(backend):
    """-inf logits (a masked vocabulary) filling a whole first tile must not poison the running max."""
    kernels = Backend(backend)
    z = torch.randn(2, 5000, generator=torch.Generator().manual_seed(0))
    z[0, :4096] = float("-inf")  # row 0: the first 4096-column block is all -inf
    targets = torch.tensor([4500, 10])
    z.requires_grad_(True)
    lp, ent = kernels.token_logprobs(z, targets, 1.3, return_entropy=True)
    # the masked columns carry no probability: row 0 is its last 904 columns alone
    ref_lp0, ref_ent0 = logprobs64(z.detach()[:1, 4096:], targets[:1] - 4096, 1.3)
    ref_lp1, ref_ent1 = logprobs64(z.detach()[1:], targets[1:], 1.3)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    assert abs_err(lp, torch.cat([ref_lp0, ref_lp1])) <= 1e-4
    assert abs_err(ent, torch.cat([ref_ent0, ref_ent1])) <= 1e-4
    (lp.sum() + ent.sum()).backward()
    assert torch.isfinite(z.grad).all() and (z.grad[0, :4096] == 0).all()


def test_torch_twin_row_blocks_match_fp64(monkeypatch):
    """The CPU twin runs each tile in blocks of rows (bounded temporaries): forced to 3-row blocks, the
    forward and both backward flavours still equal fp64, and the blocks really were taken."""
    import atlas.kernels.reference as reference

    calls = {"fwd": 0, "bwd": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    vocab, chunk = 151, 8
    monkeypatch.setattr(reference, "ROW_BLOCK_ELEMENTS", 3 * vocab)
    monkeypatch.setattr(reference, "_logprob_block", counted("fwd", reference._logprob_block))
    monkeypatch.setattr(reference, "_logprob_backward_block", counted("bwd", reference._logprob_backward_block))
    kernels = Backend("torch")
    h, w, targets, g_lp, g_ent = _linear_case(vocab, torch.float32, seed=11, n=20)
    lp_ref, ent_ref, dh_ref, dw_ref = _linear_ref(h, w, targets, 0.8, g_lp, g_ent)
    for with_entropy in (True, False):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        out = kernels.linear_token_logprobs(hh, ww, targets, 0.8, return_entropy=with_entropy, chunk_size=chunk)
        lp, ent = out if with_entropy else (out, None)
        (lp * g_lp.float() + (0 if ent is None else ent * g_ent.float())).sum().backward()
        _, _, dh, dw = _linear_ref(h, w, targets, 0.8, g_lp, g_ent if with_entropy else torch.zeros_like(g_ent))
        assert rel_err(lp, lp_ref) <= FP32_TOL and rel_err(hh.grad, dh) <= FP32_TOL and rel_err(ww.grad, dw) <= FP32_TOL
        if with_entropy:
            assert rel_err(ent, ent_ref) <= FP32_TOL
    # 18 kept rows in chunks of 8 (8, 8, 2): 3 + 3 + 1 blocks per forward
    assert calls["fwd"] == 2 * 7 and calls["bwd"] >= 2 * 7
