"""The GRPO policy loss: a clipped importance ratio per token, a k3 KL penalty to a reference, and the
normalisation that turns per-token terms into one number.

Per completion token t of sequence i (A_i its advantage, logp under the policy being trained, old under
the policy that sampled, ref under the reference model):

    rho_t  = exp(logp_t - old_t)
    l_t    = -w_t min(rho_t A_i, clip(rho_t, 1 - eps_low, 1 + eps_high) A_i)  +  beta * k3_t
    k3_t   = exp(ref_t - logp_t) - (ref_t - logp_t) - 1                  (>= 0, unbiased for KL(pi || ref))

w_t = 1 unless `weights_M` gives a detached per-token weight (GRPO's `tis_cap`: min(pi_old / q, C) with q
the truncated distribution actually sampled; rl/grpo.py says what that is). It weights the clipped
policy term only, as TRL's correction does: it corrects the policy-gradient estimate for where the
tokens were drawn, and the KL term stays a plain regulariser. Masked tokens (truncated completions
when those are masked) have l_t = 0.

Every per-token input holds one value per token, M of them (any shape, the same for all: a packed
micro-batch's targets): the log-probabilities, the advantage of each token's sequence, the mask and, for
seq_mean, each token's sequence (`seq_M`).

Normalisation (`norm`), with every count global (all micro-batches and ranks of the optimizer step):
- "token_mean" (DAPO, the default): sum_{i,t} l_t / (number of valid tokens);
- "seq_mean" (GRPO as published): sum_i (sum_t l_t / T_i) / (number of sequences);
- "dr_grpo": sum_{i,t} l_t / (number of sequences * max_completion_len), a constant denominator.
This function returns the *sum* of this micro-batch's share of that one number, so adding the micro-
batches' losses (and FSDP's mean over ranks times the world size) gives the step's loss exactly.

With one update per rollout batch (mu = 1), old = logp.detach(): rho = 1 and the clip never binds; only
the gradient A * d logp flows. Left out: sequence-level ratios (GSPO), entropy bonuses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atlas.kernels import kl

NORMS = ("token_mean", "seq_mean", "dr_grpo")


@dataclass
class LossCounts:
    """The step's global denominators."""

    tokens: int  # valid tokens over every sequence of the step
    sequences: int
    max_completion_len: int


def policy_loss(logp_M: torch.Tensor, old_M: torch.Tensor, adv_M: torch.Tensor, mask_M: torch.Tensor,
                counts: LossCounts, *, seq_M: torch.Tensor | None = None, eps_low: float = 0.2, eps_high: float = 0.2,
                beta: float = 0.0, ref_M: torch.Tensor | None = None, weights_M: torch.Tensor | None = None,
                norm: str = "token_mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(this micro-batch's share of the step loss, per-token sums for the metrics: "kl", "clipped",
    "tokens"); see the module docstring."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if norm == "seq_mean" and seq_M is None:
        raise ValueError("norm='seq_mean' needs each token's sequence (seq_M)")
    given = {"old_M": old_M, "adv_M": adv_M, "mask_M": mask_M, "seq_M": seq_M, "ref_M": ref_M, "weights_M": weights_M}
    wrong = {k: tuple(v.shape) for k, v in given.items() if v is not None and v.shape != logp_M.shape}
    if wrong:
        raise ValueError(f"every per-token input needs logp_M's shape {tuple(logp_M.shape)} (one value per token: "
                         f"an advantage per token, not per sequence); got {wrong}")
    mask = mask_M.to(logp_M.dtype)
    ratio = torch.exp(logp_M - old_M)
    adv = adv_M.to(logp_M.dtype)
    clipped_ratio = ratio.clamp(1 - eps_low, 1 + eps_high)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)
    if weights_M is not None:
        per_token = per_token * weights_M.detach()
    stats = {"tokens": mask.sum().detach()}
    clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    stats["clipped"] = (clipped.to(mask.dtype) * mask).sum().detach()
    if beta > 0:
        if ref_M is None:
            raise ValueError("beta > 0 needs the reference model's log-probabilities (ref_M)")
        k3 = kl(logp_M, ref_M, "k3")
        per_token = per_token + beta * k3
        stats["kl"] = (k3.detach() * mask).sum()
    per_token = per_token * mask
    if norm == "token_mean":
        loss = per_token.sum() / counts.tokens
    elif norm == "seq_mean":
        seq = seq_M.flatten()
        n = int(seq.max()) + 1 if seq.numel() else 0
        sums = per_token.new_zeros(n).index_add(0, seq, per_token.flatten())
        lengths = mask.new_zeros(n).index_add(0, seq, mask.flatten())
        loss = (sums / lengths.clamp(min=1)).sum() / counts.sequences
    else:
        loss = per_token.sum() / (counts.sequences * counts.max_completion_len)
    return loss, stats
