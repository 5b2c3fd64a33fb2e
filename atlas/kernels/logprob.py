"""Triton kernels for token log-probabilities (and entropy) over a large vocabulary.

Per row of logits z (scaled by 1/T), one program walks the vocabulary in BLOCK_V tiles:
  forward   online max m and sum-exp s in fp32 (s <- s e^{m_old - m_new} + sum e^{z - m_new}), plus
            a = sum e^{z - m} z for the entropy; lse = m + log s, lp = z[target] - lse, H = lse - a / s.
            One read of the logits; per row it stores lp, lse (and H): 8-12 bytes.
  backward  a second read: p = exp(z - lse) from the saved lse (no [N, V] softmax is ever stored),
            dL/dz = (g_lp (onehot - p) - g_H p (log p + H)) / T, written in the logits dtype into a fresh
            buffer, or in place when the caller hands over its own (the chunked linear path does). Elementwise given lse
            and H, so it runs on any block of vocabulary columns (the linear path's backward tiles).
Targets equal to ignore_index give lp = H = 0 and a zero gradient row.

The chunked `hidden @ W.T` driver and the autograd Functions live in functions.py; the same driver runs
the torch twins of reference.py. Left out: a fused matmul (the chunk's GEMM stays cuBLAS's), and
split-vocab parallelism for tiny N (one program per row suits the thousands of rows training sees).
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_BLOCK_V = 4096


@triton.jit
def _logprob_fwd_kernel(z_ptr, z_stride, t_ptr, lp_ptr, lse_ptr, ent_ptr, V, inv_t, ignore_index,
                        WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_stride
    m = float("-inf")
    s = 0.0
    a = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        inside = cols < V
        x = tl.load(z_row + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_t
        m_new = tl.maximum(m, tl.max(x, 0))
        # while every column so far is -inf (a masked block), shift by 0: exp(-inf - -inf) would be NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        rescale = tl.exp(m - m_safe)
        e = tl.exp(x - m_safe)
        s = s * rescale + tl.sum(e, 0)
        if WITH_ENTROPY:
            # e == 0 where x == -inf (padding lanes, masked vocab): drop those lanes, not 0 * -inf.
            a = a * rescale + tl.sum(tl.where(e > 0, e * x, 0.0), 0)
        m = m_new
    lse = m + tl.log(s)
    target = tl.load(t_ptr + row)
    ignored = target == ignore_index
    picked = tl.load(z_row + tl.where(ignored, 0, target)).to(tl.float32) * inv_t
    tl.store(lp_ptr + row, tl.where(ignored, 0.0, picked - lse))
    tl.store(lse_ptr + row, lse)
    if WITH_ENTROPY:
        tl.store(ent_ptr + row, tl.where(ignored, 0.0, lse - a / s))


@triton.jit
def _logprob_bwd_kernel(z_ptr, z_stride, g_ptr, g_stride, t_ptr, lse_ptr, ent_ptr, glp_ptr, gent_ptr, V, inv_t,
                        WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
    # z is a block of V vocabulary columns; t is the target's column in it, or -1. Ignored rows arrive
    # with zero upstream gradients, so they come out zero without a branch.
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_stride
    g_row = g_ptr + row * g_stride
    target = tl.load(t_ptr + row)
    g_lp = tl.load(glp_ptr + row)
    lse = tl.load(lse_ptr + row)
    if WITH_ENTROPY:
        g_ent = tl.load(gent_ptr + row)
        ent = tl.load(ent_ptr + row)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        inside = cols < V
        logp = tl.load(z_row + cols, mask=inside, other=0.0).to(tl.float32) * inv_t - lse
        p = tl.exp(logp)
        coef = g_lp
        if WITH_ENTROPY:
            coef = coef + g_ent * (logp + ent)
        grad = tl.where(p > 0, -p * coef, 0.0) + tl.where(cols == target, g_lp, 0.0)
        tl.store(g_row + cols, (grad * inv_t).to(g_ptr.dtype.element_ty), mask=inside)


def _launch_config(vocab: int) -> tuple[int, int]:
    block = min(MAX_BLOCK_V, triton.next_power_of_2(vocab))
    return block, 8 if block >= 2048 else 4


def logprob_rows(
    z_NV: Tensor, targets_N: Tensor, inv_temperature: float, ignore_index: int, with_entropy: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    n, vocab = z_NV.shape
    lp_N = torch.empty(n, dtype=torch.float32, device=z_NV.device)
    lse_N = torch.empty_like(lp_N)
    ent_N = torch.empty_like(lp_N) if with_entropy else None
    if n == 0:
        return lp_N, lse_N, ent_N
    block, warps = _launch_config(vocab)
    _logprob_fwd_kernel[(n,)](
        z_NV, z_NV.stride(0), targets_N, lp_N, lse_N, ent_N if with_entropy else lp_N, vocab,
        inv_temperature, ignore_index, WITH_ENTROPY=with_entropy, BLOCK_V=block, num_warps=warps,
    )
    return lp_N, lse_N, ent_N


def logprob_rows_backward_(
    z_NB: Tensor, targets_N: Tensor, lse_N: Tensor, ent_N: Tensor | None, g_lp_N: Tensor, g_ent_N: Tensor | None,
    inv_temperature: float, out: Tensor | None = None,
) -> Tensor:
    """z_NB: a block of logits columns; targets_N: the target's column in it, or -1 (elsewhere, ignored).
    Writes dL/dz into out, or over z_NB when out is None, and returns it."""
    dest = z_NB if out is None else out
    n, width = z_NB.shape
    if n == 0:
        return dest
    with_entropy = g_ent_N is not None
    block, warps = _launch_config(width)
    # Writing over z itself is safe: each element is read, then written, by the same program.
    _logprob_bwd_kernel[(n,)](
        z_NB, z_NB.stride(0), dest, dest.stride(0), targets_N, lse_N, ent_N if with_entropy else lse_N,
        g_lp_N, g_ent_N if with_entropy else g_lp_N, width, inv_temperature,
        WITH_ENTROPY=with_entropy, BLOCK_V=block, num_warps=warps,
    )
    return dest
