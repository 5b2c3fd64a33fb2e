"""The autograd plumbing shared by both backends: whole-logits and chunked (hidden @ W.T) variants.

Each backend supplies only row math: a forward that reduces a [n, V] logits block to per-row values and
per-row statistics, and a backward that turns a [n, B] block of logits into dL/dlogits given those
statistics (elementwise once they are known, so any block of columns works), written into a fresh buffer
(whole-logits variants: the caller's logits survive) or over the block itself (chunked variants: the
tile is their own). The code
here decides what is stored, what is recomputed and how tiles are walked, so the Triton path and its
torch twin (reference.py) cannot drift apart in anything but arithmetic.

Chunked variants (`hidden_NH @ weight_VH.T`): z = h @ W.T in the input dtype, then the row math casts
to fp32 and scales by 1/T, exactly what the whole-logits variants do to `model(ids)`'s logits. So a
sampler that scores `lm_head(h)` with `token_logprobs(logits, y, T)` and a trainer that calls
`linear_token_logprobs(h, W, y, T)` compute one expression (scaling a bf16 h by 1/T before the matmul
instead rounds h/T to bf16: 0.04-0.17 nats per token apart at T = 0.7).
  forward   token chunks of C rows, full vocab: z_CV -> row forward -> per-token outputs and per-row
            statistics (lse, entropy, JSD constant); z_CV is dropped, nothing of size [N, V] is kept.
  backward  tiles of R rows x B vocab columns, R * B <= C * V (the same element budget), vocab outermost:
            z_RB is recomputed, the row backward turns it into G_RB = dL/dz in place (no second buffer;
            its 1/T factor included), dW[B] = G_RB.T @ h_R and dH_R += G_RB @ W[B].
  Why the backward walks the vocabulary: with R = N (any N below budget / 128 rows, i.e. every realistic
  micro-batch) each block of dW comes out of ONE matmul over all tokens, written once in the weight dtype:
  no [V, H] fp32 accumulator, no rounding per chunk in bf16, no re-reading dW per chunk (a token-chunked
  backward re-reads and re-writes all of dW, 0.5 GB for Qwen2.5-0.5B, once per chunk). What accumulates
  instead is dH, [N, H], 170x smaller than dW at Qwen's shapes, kept in fp32. Only when N exceeds the
  budget do row groups add up per vocab block, in a [B, H] fp32 buffer.
  Cost: 4 matmuls of N x V x H (forward 1, backward 3) against the naive path's 3, but no [N, V] tensor
  is ever written to memory, which is what dominates the naive path's time. The gradients of the
  outputs are per token and unknown in forward, so dW cannot be formed early (as Liger does for a scalar
  loss): recomputing z in backward is the price of per-token outputs.

Ignored/masked rows are dropped before the chunked variants run (see _kept_rows) and their outputs
scattered back as zeros. Left out: sequence packing (callers flatten to [N, H] themselves).
"""

from collections.abc import Callable

import torch
from torch import Tensor

from atlas.kernels.common import (
    check_beta,
    check_linear,
    check_logits,
    check_mask,
    check_targets,
    check_temperature,
    chunk_rows,
)

F32 = torch.float32
# Narrower vocabulary blocks make the recompute GEMM skinny; the row budget shrinks before they do.
MIN_BLOCK_V = 128


def _grad_or_zeros(g: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    if g is None:
        return torch.zeros(n, dtype=F32, device=like.device)
    return g.reshape(n).to(F32).contiguous()


def _backward_targets(targets_N, ignore_index, g_lp_N, g_ent_N):
    """Ignored rows get target -1 (no one-hot column anywhere) and zero upstream gradients."""
    ignored_N = targets_N == ignore_index
    targets_N = targets_N.masked_fill(ignored_N, -1)
    g_lp_N = g_lp_N.masked_fill(ignored_N, 0.0)
    g_ent_N = None if g_ent_N is None else g_ent_N.masked_fill(ignored_N, 0.0)
    return targets_N, g_lp_N, g_ent_N


class TokenLogprobs(torch.autograd.Function):
    """logits [N, V] -> logprobs [N] (and entropy [N]); backward recomputes softmax from the saved lse."""

    @staticmethod
    def forward(ctx, logits_NV, targets_N, inv_temperature, ignore_index, with_entropy, rows_fwd, rows_bwd):
        lp_N, lse_N, ent_N = rows_fwd(logits_NV, targets_N, inv_temperature, ignore_index, with_entropy)
        ctx.save_for_backward(logits_NV, targets_N, lse_N, ent_N)
        ctx.args = (inv_temperature, ignore_index, rows_bwd)
        return (lp_N, ent_N) if with_entropy else lp_N

    @staticmethod
    def backward(ctx, g_lp_N, g_ent_N=None):
        logits_NV, targets_N, lse_N, ent_N = ctx.saved_tensors
        inv_temperature, ignore_index, rows_bwd = ctx.args
        n = logits_NV.shape[0]
        g_ent_N = None if g_ent_N is None else _grad_or_zeros(g_ent_N, n, logits_NV)
        targets_N, g_lp_N, g_ent_N = _backward_targets(
            targets_N, ignore_index, _grad_or_zeros(g_lp_N, n, logits_NV), g_ent_N)
        # A fresh buffer: the caller's logits must survive (they may feed other losses). One read of the
        # logits and one write of the gradient, the least a backward can move.
        grad_NV = torch.empty_like(logits_NV)
        rows_bwd(logits_NV, targets_N, lse_N, ent_N, g_lp_N, g_ent_N, inv_temperature, out=grad_NV)
        return grad_NV, None, None, None, None, None, None


class LinearTokenLogprobs(torch.autograd.Function):
    """hidden [N, H], weight [V, H] -> logprobs [N] (and entropy [N]), chunked; see the module docstring."""

    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, targets_N, inv_temperature, ignore_index, chunk, with_entropy,
                rows_fwd, rows_bwd):
        n = hidden_NH.shape[0]
        lp_N = torch.empty(n, dtype=F32, device=hidden_NH.device)
        lse_N = torch.empty_like(lp_N)
        ent_N = torch.empty_like(lp_N) if with_entropy else None
        buf = _Buffer(chunk * weight_VH.shape[0], hidden_NH)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            z_CV = buf.mm(hidden_NH[s:e], weight_VH.T)
            lp, lse, ent = rows_fwd(z_CV, targets_N[s:e], inv_temperature, ignore_index, with_entropy)
            lp_N[s:e], lse_N[s:e] = lp, lse
            if with_entropy:
                ent_N[s:e] = ent
        del buf
        ctx.save_for_backward(hidden_NH, weight_VH, targets_N, lse_N, ent_N)
        ctx.args = (inv_temperature, ignore_index, chunk * weight_VH.shape[0], rows_bwd)
        return (lp_N, ent_N) if with_entropy else lp_N

    @staticmethod
    def backward(ctx, g_lp_N, g_ent_N=None):
        hidden_NH, weight_VH, targets_N, lse_N, ent_N = ctx.saved_tensors
        inv_temperature, ignore_index, budget, rows_bwd = ctx.args
        n = hidden_NH.shape[0]
        g_ent_N = None if g_ent_N is None else _grad_or_zeros(g_ent_N, n, hidden_NH)
        targets_N, g_lp_N, g_ent_N = _backward_targets(
            targets_N, ignore_index, _grad_or_zeros(g_lp_N, n, hidden_NH), g_ent_N)

        def tile_backward(z_RB, r0, r1, v0, v1):
            t = targets_N[r0:r1]
            in_block = torch.where((t >= v0) & (t < v1), t - v0, -1)
            rows_bwd(z_RB, in_block, lse_N[r0:r1], None if ent_N is None else ent_N[r0:r1], g_lp_N[r0:r1],
                     None if g_ent_N is None else g_ent_N[r0:r1], inv_temperature)

        d_hidden, d_weight = _tiled_backward(ctx, hidden_NH, weight_VH, budget, tile_backward)
        return d_hidden, d_weight, None, None, None, None, None, None, None


class _Buffer:
    """One reused allocation for every logits tile: a fresh 100+ MB tensor per chunk costs page faults
    and zeroing on CPU (glibc returns big blocks to the OS on free) and allocator churn on GPU."""

    def __init__(self, numel: int, like: torch.Tensor):
        self.flat = torch.empty(numel, dtype=like.dtype, device=like.device)

    def mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = self.flat[: a.shape[0] * b.shape[1]].view(a.shape[0], b.shape[1])
        return torch.mm(a, b, out=out)


def _backward_tiles(n: int, vocab: int, budget: int) -> tuple[int, int]:
    rows = max(1, min(n, budget // MIN_BLOCK_V))
    block_v = min(vocab, max(MIN_BLOCK_V, budget // rows // MIN_BLOCK_V * MIN_BLOCK_V))
    return rows, block_v


def _add_matmul_(acc_f32: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dtype == F32:
        acc_f32.addmm_(a, b)
    else:
        acc_f32.add_(a @ b)  # low-precision matmul (fp32 accumulation inside), summed in fp32


def _tiled_backward(ctx, hidden_NH, weight_VH, budget, tile_backward):
    """Recompute z per (rows x vocab block) tile, tile_backward(z, r0, r1, v0, v1) makes it dL/dz in place,
    then dW[v0:v1] and dH[r0:r1] from it; see the module docstring for the order."""
    need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (need_h or need_w):
        return None, None
    (n, hid), vocab = hidden_NH.shape, weight_VH.shape[0]
    if n == 0:  # torch.mm with an empty inner dimension may leave out= untouched instead of zeroing it
        return torch.zeros_like(hidden_NH) if need_h else None, torch.zeros_like(weight_VH) if need_w else None
    rows, block_v = _backward_tiles(n, vocab, budget)
    d_hidden = torch.zeros(n, hid, dtype=F32, device=hidden_NH.device) if need_h else None
    d_weight = torch.empty(weight_VH.shape, dtype=weight_VH.dtype, device=weight_VH.device) if need_w else None
    buf = _Buffer(budget, hidden_NH)
    for v0 in range(0, vocab, block_v):
        v1 = min(v0 + block_v, vocab)
        w_BH = weight_VH[v0:v1]
        dw_BH = torch.zeros(v1 - v0, hid, dtype=F32, device=w_BH.device) if need_w and rows < n else None
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            z_RB = buf.mm(hidden_NH[r0:r1], w_BH.T)
            tile_backward(z_RB, r0, r1, v0, v1)
            if need_h:
                _add_matmul_(d_hidden[r0:r1], z_RB, w_BH)
            if need_w:
                if dw_BH is None:
                    torch.mm(z_RB.T, hidden_NH, out=d_weight[v0:v1])
                else:
                    _add_matmul_(dw_BH, z_RB.T, hidden_NH[r0:r1])
        if dw_BH is not None:
            d_weight[v0:v1] = dw_BH
    if need_h:
        d_hidden = d_hidden.to(hidden_NH.dtype)
    return d_hidden, d_weight


class GeneralizedJSD(torch.autograd.Function):
    """student/teacher logits [N, V] -> scale * JSD_beta [N], zero where mask is False; teacher constant."""

    @staticmethod
    def forward(ctx, student_NV, teacher_NV, mask_N, beta, inv_temperature, scale, rows_fwd, rows_bwd):
        jsd_N, lse_s, lse_t, c_N = rows_fwd(student_NV, teacher_NV, beta, inv_temperature)
        out_N = _scale_and_mask(jsd_N, scale, mask_N)
        ctx.save_for_backward(student_NV, teacher_NV, mask_N, lse_s, lse_t, c_N)
        ctx.args = (beta, inv_temperature, scale, rows_bwd)
        return out_N

    @staticmethod
    def backward(ctx, g_N):
        student_NV, teacher_NV, mask_N, lse_s, lse_t, c_N = ctx.saved_tensors
        beta, inv_temperature, scale, rows_bwd = ctx.args
        g_N = _scale_and_mask(_grad_or_zeros(g_N, student_NV.shape[0], student_NV), scale, mask_N)
        grad_NV = torch.empty_like(student_NV)
        rows_bwd(student_NV, teacher_NV, lse_s, lse_t, c_N, g_N, beta, inv_temperature, out=grad_NV)
        return grad_NV, None, None, None, None, None, None, None


class LinearGeneralizedJSD(torch.autograd.Function):
    """Chunked JSD from hidden states (masked rows already dropped): student (h_s, W_s) differentiable,
    teacher (h_t, W_t) constant."""

    @staticmethod
    def forward(ctx, hs_NH, ws_VH, ht_NK, wt_VK, beta, inv_temperature, scale, chunk, rows_fwd, rows_bwd):
        n = hs_NH.shape[0]
        out_N = torch.empty(n, dtype=F32, device=hs_NH.device)
        lse_s, lse_t, c_N = torch.empty_like(out_N), torch.empty_like(out_N), torch.empty_like(out_N)
        buf_s, buf_t = _Buffer(chunk * ws_VH.shape[0], hs_NH), _Buffer(chunk * ws_VH.shape[0], ht_NK)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            zs_CV = buf_s.mm(hs_NH[s:e], ws_VH.T)
            zt_CV = buf_t.mm(ht_NK[s:e], wt_VK.T)
            out_N[s:e], lse_s[s:e], lse_t[s:e], c_N[s:e] = rows_fwd(zs_CV, zt_CV, beta, inv_temperature)
        del buf_s, buf_t
        ctx.save_for_backward(hs_NH, ws_VH, ht_NK, wt_VK, lse_s, lse_t, c_N)
        ctx.args = (beta, inv_temperature, scale, chunk * ws_VH.shape[0], rows_bwd)
        return _scale_and_mask(out_N, scale, None)

    @staticmethod
    def backward(ctx, g_N):
        hs_NH, ws_VH, ht_NK, wt_VK, lse_s, lse_t, c_N = ctx.saved_tensors
        beta, inv_temperature, scale, budget, rows_bwd = ctx.args
        g_N = _scale_and_mask(_grad_or_zeros(g_N, hs_NH.shape[0], hs_NH), scale, None)
        buf_t = _Buffer(budget, ht_NK)

        def tile_backward(zs_RB, r0, r1, v0, v1):
            # The teacher's tile is recomputed too: keeping [N, V] teacher logits is what this avoids.
            rows_bwd(zs_RB, buf_t.mm(ht_NK[r0:r1], wt_VK[v0:v1].T), lse_s[r0:r1], lse_t[r0:r1], c_N[r0:r1],
                     g_N[r0:r1], beta, inv_temperature)

        d_hidden, d_weight = _tiled_backward(ctx, hs_NH, ws_VH, budget, tile_backward)
        return d_hidden, d_weight, None, None, None, None, None, None, None, None


def _scale_and_mask(x_N: torch.Tensor, scale: float, mask_N: torch.Tensor | None) -> torch.Tensor:
    if scale != 1.0:
        x_N = x_N * scale
    if mask_N is not None:
        # where, not multiply: a masked row's value may be inf/nan (e.g. padding with garbage logits).
        x_N = torch.where(mask_N, x_N, 0.0)
    return x_N


# Front ends: validation and reshaping shared by both backends; each backend passes its row math.


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float, ignore_index: int, return_entropy: bool,
                   rows_fwd: Callable, rows_bwd: Callable) -> Tensor | tuple[Tensor, Tensor]:
    check_logits("logits", logits)
    inv_t = 1.0 / check_temperature(temperature)
    lead, vocab = logits.shape[:-1], logits.shape[-1]
    check_targets(targets, lead, vocab, ignore_index)
    logits_NV = logits.reshape(-1, vocab)
    if logits_NV.stride(-1) != 1:
        logits_NV = logits_NV.contiguous()
    out = TokenLogprobs.apply(logits_NV, targets.reshape(-1).long().contiguous(), inv_t, ignore_index,
                              return_entropy, rows_fwd, rows_bwd)
    return tuple(o.view(lead) for o in out) if return_entropy else out.view(lead)


def linear_token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float, ignore_index: int,
                          return_entropy: bool, chunk_size: int | None, rows_fwd: Callable,
                          rows_bwd: Callable) -> Tensor | tuple[Tensor, Tensor]:
    check_linear("", hidden, weight)
    inv_t = 1.0 / check_temperature(temperature)
    lead, vocab = hidden.shape[:-1], weight.shape[0]
    check_targets(targets, lead, vocab, ignore_index)
    hidden_NH = hidden.reshape(-1, hidden.shape[-1])
    targets_N = targets.reshape(-1).long()
    keep_K = _kept_rows(targets_N != ignore_index)
    if keep_K is not None:
        hidden_NH, targets_N = hidden_NH.index_select(0, keep_K), targets_N[keep_K]
    chunk = chunk_rows(hidden_NH.shape[0], vocab, chunk_size)
    out = LinearTokenLogprobs.apply(hidden_NH, weight, targets_N.contiguous(), inv_t, ignore_index, chunk,
                                    return_entropy, rows_fwd, rows_bwd)
    outs = out if return_entropy else (out,)
    outs = tuple(_unkeep(o, keep_K, lead) for o in outs)
    return outs if return_entropy else outs[0]


def _kept_rows(keep_N: Tensor) -> Tensor | None:
    """Indices of the rows that count, or None when all do. Ignored rows (prompt tokens, padding: often
    most of an RL or distillation batch) are dropped before the matmuls instead of computed and zeroed.
    Costs one host sync (a GPU nonzero); the target check before it syncs already."""
    if bool(keep_N.all()):
        return None
    return keep_N.nonzero().squeeze(1)


def _unkeep(x_K: Tensor, keep_K: Tensor | None, lead: torch.Size) -> Tensor:
    """Per-kept-row values as a fresh tensor of shape `lead`, zeros at the dropped rows (differentiable).
    Fresh, never a view of the output buffer: FSDP2 warns about views returned by a forward method (an
    in-place op on one would skip its pre-backward hook), and these are returned by one."""
    if keep_K is None:
        return x_K.view(lead).clone()
    return x_K.new_zeros(lead).index_put(torch.unravel_index(keep_K, lead), x_K)


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, beta: float, temperature: float,
                    mask: Tensor | None, normalize: bool, rows_fwd: Callable, rows_bwd: Callable) -> Tensor:
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must have the same shape (same tokens, same vocabulary), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    beta, inv_t = check_beta(beta), 1.0 / check_temperature(temperature)
    lead, vocab = student_logits.shape[:-1], student_logits.shape[-1]
    check_mask(mask, lead)
    s_NV = student_logits.reshape(-1, vocab).contiguous()
    t_NV = teacher_logits.detach().reshape(-1, vocab).contiguous()
    mask_N = None if mask is None else mask.reshape(-1)
    out = GeneralizedJSD.apply(s_NV, t_NV, mask_N, beta, inv_t, jsd_scale(beta, normalize), rows_fwd, rows_bwd)
    return out.view(lead)


def linear_generalized_jsd(student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor,
                           teacher_weight: Tensor, beta: float, temperature: float, mask: Tensor | None,
                           normalize: bool, chunk_size: int | None, rows_fwd: Callable,
                           rows_bwd: Callable) -> Tensor:
    check_linear("student", student_hidden, student_weight)
    check_linear("teacher", teacher_hidden, teacher_weight)
    if student_weight.shape[0] != teacher_weight.shape[0] or student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"student and teacher must score the same tokens over the same vocabulary: hidden "
            f"{tuple(student_hidden.shape)} vs {tuple(teacher_hidden.shape)}, weight "
            f"{tuple(student_weight.shape)} vs {tuple(teacher_weight.shape)} (V must match; H may differ)"
        )
    beta, inv_t = check_beta(beta), 1.0 / check_temperature(temperature)
    lead, vocab = student_hidden.shape[:-1], student_weight.shape[0]
    check_mask(mask, lead)
    hs_NH = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht_NK = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    keep_K = None if mask is None else _kept_rows(mask.reshape(-1))
    if keep_K is not None:
        hs_NH, ht_NK = hs_NH.index_select(0, keep_K), ht_NK.index_select(0, keep_K)
    chunk = chunk_rows(hs_NH.shape[0], vocab, chunk_size)
    out = LinearGeneralizedJSD.apply(hs_NH, student_weight, ht_NK, teacher_weight.detach(), beta, inv_t,
                                     jsd_scale(beta, normalize), chunk, rows_fwd, rows_bwd)
    return _unkeep(out, keep_K, lead)


def jsd_scale(beta: float, normalize: bool) -> float:
    """1 / (beta (1 - beta)) inside (0, 1) when normalising; the endpoints already are the limits (KLs)."""
    return 1.0 / (beta * (1.0 - beta)) if normalize and 0.0 < beta < 1.0 else 1.0
