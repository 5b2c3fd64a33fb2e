"""Triton kernels for the generalized Jensen-Shannon divergence (GKD) and the per-token KL estimators.

Generalized JSD per token, student q = softmax(z_s / T), teacher p = softmax(z_t / T), summed over V,
in TRL's convention (GKDTrainer.generalized_jsd_loss, trl 1.16):
  m = (1 - beta) q + beta p,   JSD_beta = beta KL(p || m) + (1 - beta) KL(q || m)   for 0 < beta < 1,
  beta = 0: KL(p || q) (forward KL),   beta = 1: KL(q || p) (reverse KL).
TRL's endpoints are discontinuous: JSD_beta -> 0 at both ends. Expanding m around q (beta -> 0) gives
KL(q || m) = O(beta^2) and KL(p || m) -> KL(p || q), so JSD_beta / beta -> KL(p || q); symmetrically
JSD_beta / (1 - beta) -> KL(q || p) as beta -> 1. `normalize=True` therefore returns
JSD_beta / (beta (1 - beta)), continuous on [0, 1] with TRL's two KLs as its endpoint values.
Gradient w.r.t. the student logits (the teacher is a constant): dJSD/dq = (1 - beta) log(q / m) because
the terms in dm/dq cancel, so through the softmax dJSD/dz_s = q (a - sum_v q a) / T with
a = (1 - beta) log(q / m); beta = 0 gives q - p, beta = 1 gives q (log q - log p - KL(q || p)).

Kernel: one program per row, two passes over both logits rows in the forward (online logsumexp of each,
then the KL sums, which need the normalised log-probabilities) and one in the backward, which recomputes
q, p and m from the saved lse_s, lse_t and c = sum_v q a. Nothing of size [N, V] is stored.

KL estimators per token, d = ref_logp - logp with tokens sampled from the policy (Schulman's k1/k2/k3):
k1 = -d, k2 = d^2 / 2, k3 = e^d - 1 - d >= 0. One elementwise kernel writes the value and dk/dd; near
d = 0 it uses the Taylor series, since e^d - 1 - d in fp32 would cancel to noise exactly where a policy
sits close to its reference.

Left out: reductions over tokens (callers mask and normalise), teachers with a different vocabulary.
"""

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from atlas.kernels.reference import check_kl_args

MAX_BLOCK_V = 4096
KL_BLOCK = 1024
ESTIMATOR_IDS = {"k1": 1, "k2": 2, "k3": 3}


@triton.jit
def _row_lse(ptr, V, inv_t, BLOCK_V: tl.constexpr):
    m = float("-inf")
    s = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * inv_t
        m_new = tl.maximum(m, tl.max(x, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # an all -inf block so far: no NaN
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), 0)
        m = m_new
    return m + tl.log(s)


@triton.jit
def _log_mixture(logq, logp, log_1mb, log_b):
    a = logq + log_1mb
    b = logp + log_b
    hi = tl.maximum(a, b)
    return hi + tl.log(tl.exp(a - hi) + tl.exp(b - hi))


@triton.jit
def _jsd_fwd_kernel(s_ptr, s_stride, t_ptr, t_stride, jsd_ptr, lse_s_ptr, lse_t_ptr, c_ptr, V, inv_t, beta,
                    log_1mb, log_b, MODE: tl.constexpr, BLOCK_V: tl.constexpr):
    # MODE 0: beta == 0 (forward KL), 1: beta == 1 (reverse KL), 2: the mixture.
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * s_stride
    t_row = t_ptr + row * t_stride
    lse_s = _row_lse(s_row, V, inv_t, BLOCK_V)
    lse_t = _row_lse(t_row, V, inv_t, BLOCK_V)
    acc_t = 0.0
    acc_s = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        inside = cols < V
        logq = tl.load(s_row + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_t - lse_s
        logp = tl.load(t_row + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_t - lse_t
        q = tl.exp(logq)
        p = tl.exp(logp)
        # where(x > 0, ...) drops zero-probability lanes (padding, -inf logits) instead of 0 * inf = nan.
        if MODE == 0:
            acc_t += tl.sum(tl.where(p > 0, p * (logp - logq), 0.0), 0)
        elif MODE == 1:
            acc_s += tl.sum(tl.where(q > 0, q * (logq - logp), 0.0), 0)
        else:
            logm = _log_mixture(logq, logp, log_1mb, log_b)
            acc_t += tl.sum(tl.where(p > 0, p * (logp - logm), 0.0), 0)
            acc_s += tl.sum(tl.where(q > 0, q * (logq - logm), 0.0), 0)
    if MODE == 0:
        jsd = acc_t
        c = 0.0
    elif MODE == 1:
        jsd = acc_s
        c = acc_s
    else:
        jsd = beta * acc_t + (1.0 - beta) * acc_s
        c = (1.0 - beta) * acc_s
    tl.store(jsd_ptr + row, jsd)
    tl.store(lse_s_ptr + row, lse_s)
    tl.store(lse_t_ptr + row, lse_t)
    tl.store(c_ptr + row, c)


@triton.jit
def _jsd_bwd_kernel(s_ptr, s_stride, t_ptr, t_stride, out_ptr, out_stride, lse_s_ptr, lse_t_ptr, c_ptr, g_ptr, V,
                    inv_t, beta, log_1mb, log_b, MODE: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s_row = s_ptr + row * s_stride
    t_row = t_ptr + row * t_stride
    out_row = out_ptr + row * out_stride
    lse_s = tl.load(lse_s_ptr + row)
    lse_t = tl.load(lse_t_ptr + row)
    c = tl.load(c_ptr + row)
    scale = tl.load(g_ptr + row) * inv_t
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        inside = cols < V
        logq = tl.load(s_row + cols, mask=inside, other=0.0).to(tl.float32) * inv_t - lse_s
        logp = tl.load(t_row + cols, mask=inside, other=0.0).to(tl.float32) * inv_t - lse_t
        q = tl.exp(logq)
        if MODE == 0:
            grad = q - tl.exp(logp)
        elif MODE == 1:
            grad = tl.where(q > 0, q * (logq - logp - c), 0.0)
        else:
            logm = _log_mixture(logq, logp, log_1mb, log_b)
            grad = tl.where(q > 0, q * ((1.0 - beta) * (logq - logm) - c), 0.0)
        # out may be the student logits buffer itself: each element is read, then written, by this program.
        tl.store(out_row + cols, (grad * scale).to(out_ptr.dtype.element_ty), mask=inside)


def _jsd_launch(beta: float, vocab: int) -> dict:
    mode = 0 if beta == 0.0 else 1 if beta == 1.0 else 2
    logs = (math.log1p(-beta), math.log(beta)) if mode == 2 else (0.0, 0.0)
    block = min(MAX_BLOCK_V, triton.next_power_of_2(vocab))
    return dict(log_1mb=logs[0], log_b=logs[1], MODE=mode, BLOCK_V=block, num_warps=8 if block >= 2048 else 4)


def jsd_rows(s_NV: Tensor, t_NV: Tensor, beta: float, inv_temperature: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n, vocab = s_NV.shape
    jsd_N = torch.empty(n, dtype=torch.float32, device=s_NV.device)
    lse_s, lse_t, c_N = torch.empty_like(jsd_N), torch.empty_like(jsd_N), torch.empty_like(jsd_N)
    if n:
        _jsd_fwd_kernel[(n,)](s_NV, s_NV.stride(0), t_NV, t_NV.stride(0), jsd_N, lse_s, lse_t, c_N, vocab,
                              inv_temperature, beta, **_jsd_launch(beta, vocab))
    return jsd_N, lse_s, lse_t, c_N


def jsd_rows_backward_(
    s_NB: Tensor, t_NB: Tensor, lse_s: Tensor, lse_t: Tensor, c_N: Tensor, g_N: Tensor, beta: float,
    inv_temperature: float, out: Tensor | None = None,
) -> Tensor:
    """s_NB, t_NB: the same block of vocabulary columns of student and teacher logits. Writes dL/dz_s into
    out, or over s_NB when out is None, and returns it."""
    dest = s_NB if out is None else out
    n, width = s_NB.shape
    if n:
        _jsd_bwd_kernel[(n,)](s_NB, s_NB.stride(0), t_NB, t_NB.stride(0), dest, dest.stride(0), lse_s, lse_t, c_N,
                              g_N, width, inv_temperature, beta, **_jsd_launch(beta, width))
    return dest


@triton.jit
def _kl_kernel(logp_ptr, ref_ptr, k_ptr, dk_ptr, n, ESTIMATOR: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n
    d = tl.load(ref_ptr + offs, mask=inside, other=0.0).to(tl.float32) - tl.load(
        logp_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    if ESTIMATOR == 1:
        k = -d
        dk = d * 0.0 - 1.0
    elif ESTIMATOR == 2:
        k = 0.5 * d * d
        dk = d
    else:
        # |d| < 0.5: Taylor series of e^d - 1 - d up to d^7, summed without ever forming e^d or d + d^2/2
        # (truncation < 1e-6 relative); beyond, the closed form has no cancellation to fear.
        small = tl.abs(d) < 0.5
        series = d * d * (0.5 + d * (1.0 / 6 + d * (1.0 / 24 + d * (1.0 / 120 + d * (1.0 / 720 + d / 5040)))))
        em1 = tl.exp(d) - 1.0
        k = tl.where(small, series, em1 - d)
        dk = tl.where(small, series + d, em1)
    tl.store(k_ptr + offs, k, mask=inside)
    tl.store(dk_ptr + offs, dk, mask=inside)


class _KL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logp, ref_logp, estimator_id):
        flat_p, flat_r = logp.reshape(-1).contiguous(), ref_logp.reshape(-1).contiguous()
        k = torch.empty(flat_p.shape, dtype=torch.float32, device=logp.device)
        dk_dd = torch.empty_like(k)
        if k.numel():
            _kl_kernel[(triton.cdiv(k.numel(), KL_BLOCK),)](flat_p, flat_r, k, dk_dd, k.numel(),
                                                            ESTIMATOR=estimator_id, BLOCK=KL_BLOCK)
        ctx.save_for_backward(dk_dd)
        ctx.dtypes = (logp.dtype, ref_logp.dtype)
        return k.view(logp.shape)

    @staticmethod
    def backward(ctx, g):
        (dk_dd,) = ctx.saved_tensors
        g_dd = g.reshape(-1).float() * dk_dd  # d = ref - logp
        return (-g_dd).view(g.shape).to(ctx.dtypes[0]), g_dd.view(g.shape).to(ctx.dtypes[1]), None


def kl(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    check_kl_args(logp, ref_logp, estimator)
    return _KL.apply(logp, ref_logp, ESTIMATOR_IDS[estimator])
