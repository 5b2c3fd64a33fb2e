"""Pure-torch twins of the Triton kernels: the same row primitives, the CPU path.

Row math (per token, logits z scaled by 1/T, p = softmax(z), lse = logsumexp(z)):
  logprob    lp = z[target] - lse                        d lp / dz = onehot(target) - p
  entropy    H = -sum_v p log p = lse - sum_v p z         d H / dz = -p (log p + H)
  JSD        student q = softmax(z_s), teacher p = softmax(z_t), m = (1 - beta) q + beta p
             beta = 0:  KL(p || q) = sum p (log p - log q)                 d/dz_s = q - p
             beta = 1:  KL(q || p) = sum q (log q - log p)                 d/dz_s = q (log q - log p - KL)
             else:      beta KL(p || m) + (1 - beta) KL(q || m)           d/dz_s = q (a - sum q a),
                        with a = (1 - beta) log(q / m)  [dJSD/dq = (1 - beta) log(q / m): the m terms cancel]
  KL estimators (d = ref_logp - logp, samples from the policy): k1 = -d, k2 = d^2 / 2, k3 = e^d - 1 - d.
Gradients w.r.t. raw logits carry one more 1/T. Backward recomputes p from the saved lse instead of
storing it, works on any block of vocabulary columns (it is elementwise given the per-row statistics),
and writes dL/dz into `out`, or over the logits block itself (the chunked path hands over its own tile
buffer; see functions.py). Each primitive runs over blocks of ROW_BLOCK_ELEMENTS logits (rows whole), so
its fp32 temporaries (log p, exp, the mixture) are a few such blocks, not copies of the tile it is given,
as the Triton kernels keep none (one program per row): the chunked CPU path holds its tile buffer and
little else, and nothing of size [N, V].

Logits of -inf (a masked vocabulary entry) have p = 0 and contribute 0, never 0 * inf = nan.
Left out: fp64 outputs (everything returns fp32), and reductions over tokens (callers mask and average).
"""

import math

import torch
from torch import Tensor

F32 = torch.float32
NEG_INF = float("-inf")
# log p below this has p == 0 exactly in fp32 (exp underflows at about -104); clamping there keeps
# 0 * (-inf) out of the entropy gradient without changing any finite result.
LOG_FLOOR = -1e4
# Logits per row block of the primitives below (16 MiB in fp32; whole rows, at least one): large enough
# that the per-block Python loop costs nothing next to the block's own arithmetic.
ROW_BLOCK_ELEMENTS = 1 << 22


def _row_blocks(n: int, vocab: int) -> list[slice]:
    rows = max(1, ROW_BLOCK_ELEMENTS // max(1, vocab))
    return [slice(s, s + rows) for s in range(0, n, rows)] or [slice(0, 0)]


def _rows(x: Tensor | None, r: slice) -> Tensor | None:
    return None if x is None else x[r]


def _cat(parts: list[tuple]) -> tuple:
    """Per-row outputs of every block, joined (None stays None)."""
    if len(parts) == 1:
        return parts[0]
    return tuple(None if xs[0] is None else torch.cat(xs) for xs in zip(*parts))


def logprob_rows(
    z_NV: Tensor, targets_N: Tensor, inv_temperature: float, ignore_index: int, with_entropy: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    return _cat([_logprob_block(z_NV[r], targets_N[r], inv_temperature, ignore_index, with_entropy)
                 for r in _row_blocks(*z_NV.shape)])


def logprob_rows_backward_(
    z_NB: Tensor, targets_N: Tensor, lse_N: Tensor, ent_N: Tensor | None, g_lp_N: Tensor, g_ent_N: Tensor | None,
    inv_temperature: float, out: Tensor | None = None,
) -> Tensor:
    """z_NB: a block of logits columns; targets_N: the target's column in it, or -1 (elsewhere, ignored).
    Writes dL/dz into out, or over z_NB when out is None, and returns it."""
    for r in _row_blocks(*z_NB.shape):
        _logprob_backward_block(z_NB[r], targets_N[r], lse_N[r], _rows(ent_N, r), g_lp_N[r], _rows(g_ent_N, r),
                                inv_temperature, _rows(out, r))
    return z_NB if out is None else out


def jsd_rows(s_NV: Tensor, t_NV: Tensor, beta: float, inv_temperature: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _cat([_jsd_block(s_NV[r], t_NV[r], beta, inv_temperature) for r in _row_blocks(*s_NV.shape)])


def jsd_rows_backward_(
    s_NB: Tensor, t_NB: Tensor, lse_s: Tensor, lse_t: Tensor, c_N: Tensor, g_N: Tensor, beta: float,
    inv_temperature: float, out: Tensor | None = None,
) -> Tensor:
    """s_NB, t_NB: the same block of vocabulary columns of student and teacher logits. Writes dL/dz_s into
    out, or over s_NB when out is None, and returns it."""
    for r in _row_blocks(*s_NB.shape):
        _jsd_backward_block(s_NB[r], t_NB[r], lse_s[r], lse_t[r], c_N[r], g_N[r], beta, inv_temperature,
                            _rows(out, r))
    return s_NB if out is None else out


def _as_f32(z: torch.Tensor, inv_temperature: float) -> torch.Tensor:
    x = z.float()
    return x if inv_temperature == 1.0 else x * inv_temperature


def _plogratio_sum(logp_NV: torch.Tensor, logq_NV: torch.Tensor) -> torch.Tensor:
    """sum_v p (log p - log q), with p = 0 entries contributing 0."""
    terms = torch.where(logp_NV == NEG_INF, 0.0, logp_NV.exp() * (logp_NV - logq_NV))
    return terms.sum(-1)


def _logprob_block(
    z_NV: Tensor, targets_N: Tensor, inv_temperature: float, ignore_index: int, with_entropy: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    x = _as_f32(z_NV, inv_temperature)
    lse_N = torch.logsumexp(x, -1)
    ignored_N = targets_N == ignore_index
    picked_N = x.gather(1, targets_N.masked_fill(ignored_N, 0)[:, None]).squeeze(1)
    lp_N = (picked_N - lse_N).masked_fill(ignored_N, 0.0)
    ent_N = None
    if with_entropy:  # -sum p log p, log p clamped where p == 0 (no log evaluated: a third of xlogy's time)
        logp_NV = x - lse_N[:, None]
        p_NV = logp_NV.exp()
        ent_N = logp_NV.clamp_(min=LOG_FLOOR).mul_(p_NV).sum(-1).neg_().masked_fill_(ignored_N, 0.0)
    return lp_N, lse_N, ent_N


def _logprob_backward_block(
    z_NB: Tensor, targets_N: Tensor, lse_N: Tensor, ent_N: Tensor | None, g_lp_N: Tensor, g_ent_N: Tensor | None,
    inv_temperature: float, out: Tensor | None = None,
) -> Tensor:
    dest = z_NB if out is None else out
    if dest is not z_NB and dest.dtype == F32:
        x = dest.copy_(z_NB)
    else:
        x = z_NB if z_NB.dtype == F32 else z_NB.float()
    if inv_temperature != 1.0:
        x.mul_(inv_temperature)
    x.sub_(lse_N[:, None])  # log p, in place
    if g_ent_N is None:
        x.exp_().mul_(-g_lp_N[:, None])
    else:
        p_NB = x.exp()
        # -p (g_lp + g_ent (log p + H)), built in place in x
        x.clamp_(min=LOG_FLOOR).add_(ent_N[:, None]).mul_(g_ent_N[:, None]).add_(g_lp_N[:, None])
        x.mul_(p_NB).neg_()
        del p_NB
    hit_N = targets_N >= 0
    rows_N = torch.arange(x.shape[0], device=x.device)
    x.index_put_((rows_N, targets_N.clamp(min=0)), torch.where(hit_N, g_lp_N, 0.0), accumulate=True)
    if inv_temperature != 1.0:
        x.mul_(inv_temperature)
    if x is not dest:
        dest.copy_(x)
    return dest


def _log_mixture(logq_NV, logp_NV, beta):
    return torch.logaddexp(logq_NV + math.log1p(-beta), logp_NV + math.log(beta))


def _jsd_block(s_NV: Tensor, t_NV: Tensor, beta: float, inv_temperature: float) -> tuple[Tensor, ...]:
    xs, xt = _as_f32(s_NV, inv_temperature), _as_f32(t_NV, inv_temperature)
    lse_s, lse_t = torch.logsumexp(xs, -1), torch.logsumexp(xt, -1)
    logq, logp = xs - lse_s[:, None], xt - lse_t[:, None]
    if beta == 0.0:
        jsd_N = _plogratio_sum(logp, logq)
        c_N = torch.zeros_like(jsd_N)
    elif beta == 1.0:
        jsd_N = c_N = _plogratio_sum(logq, logp)
    else:
        logm = _log_mixture(logq, logp, beta)
        kl_s = _plogratio_sum(logq, logm)
        jsd_N = beta * _plogratio_sum(logp, logm) + (1.0 - beta) * kl_s
        c_N = (1.0 - beta) * kl_s
    return jsd_N, lse_s, lse_t, c_N


def _jsd_backward_block(
    s_NB: Tensor, t_NB: Tensor, lse_s: Tensor, lse_t: Tensor, c_N: Tensor, g_N: Tensor, beta: float,
    inv_temperature: float, out: Tensor | None = None,
) -> Tensor:
    logq = _as_f32(s_NB, inv_temperature) - lse_s[:, None]
    logp = _as_f32(t_NB, inv_temperature) - lse_t[:, None]
    q = logq.exp()
    if beta == 0.0:
        grad = q - logp.exp()
    else:
        a = logq - logp if beta == 1.0 else (1.0 - beta) * (logq - _log_mixture(logq, logp, beta))
        grad = torch.where(q > 0, q * (a - c_N[:, None]), 0.0)
    dest = s_NB if out is None else out
    return dest.copy_(grad.mul_((g_N * inv_temperature)[:, None]))


KL_ESTIMATORS = ("k1", "k2", "k3")


def check_kl_args(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> None:
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp and ref_logp must have the same shape, got {tuple(logp.shape)} and "
                         f"{tuple(ref_logp.shape)}")
    if not (logp.is_floating_point() and ref_logp.is_floating_point()):
        raise ValueError(f"logp and ref_logp must be floating point, got {logp.dtype} and {ref_logp.dtype}")


def kl(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    check_kl_args(logp, ref_logp, estimator)
    # fp64 on per-token vectors costs nothing and keeps k3 = expm1(d) - d accurate as d -> 0, where fp32
    # would cancel to noise exactly when the policy sits close to its reference.
    d = ref_logp.double() - logp.double()
    if estimator == "k1":
        k = -d
    elif estimator == "k2":
        k = 0.5 * d * d
    else:
        k = torch.expm1(d) - d
    return k.float()
