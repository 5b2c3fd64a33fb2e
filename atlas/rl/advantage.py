"""Group-relative advantages: each completion's reward against the other completions of its prompt.

    A_i = (r_i - mean_g) / (s + eps)      eps = 1e-4, one value per completion

with mean_g the mean reward of the G completions of the same prompt, and s, by `scale`:
- "group" (GRPO, the default): the group's standard deviation (unbiased, as TRL computes it);
- "batch": the standard deviation of all rewards of the step (unbiased, over every rank: `reward_moments`),
  which keeps a group whose rewards barely differ from getting advantages as large as one whose rewards
  differ a lot;
- "none" (Dr. GRPO): no scaling, s + eps = 1.
A group whose completions all score the same has A = 0 for all of them: it teaches nothing (GRPO logs
their share as `zero_variance_frac`, and `zero_variance_groups: skip` leaves them out of the update).

Left out: leave-one-out baselines (RLOO), reward whitening across steps.
"""

from __future__ import annotations

import math

import torch

import atlas.distributed as ad

SCALES = ("group", "batch", "none")
EPS = 1e-4


def reward_moments(rewards_PG: torch.Tensor) -> tuple[float, float]:
    """The mean and unbiased standard deviation of every reward of the step, over all ranks."""
    sums = ad.all_reduce_sums({"n": rewards_PG.numel(), "sum": rewards_PG.sum(), "sq": (rewards_PG ** 2).sum()})
    n, mean = sums["n"], sums["sum"] / sums["n"]
    return mean, math.sqrt(max(0.0, sums["sq"] / n - mean ** 2) * n / max(1.0, n - 1))


def group_advantages(rewards_PG: torch.Tensor, scale: str = "group", eps: float = EPS) -> torch.Tensor:
    """Advantages [P, G] for this rank's rewards [P, G] (P prompts, G completions each); with scale="batch"
    every rank must call it (the batch's standard deviation is reduced over ranks)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if rewards_PG.dim() != 2 or rewards_PG.shape[1] < 2:
        raise ValueError(f"rewards must be [prompts, G] with G >= 2 completions per prompt, got "
                         f"{tuple(rewards_PG.shape)}")
    centred = rewards_PG - rewards_PG.mean(1, keepdim=True)
    if scale == "group":
        return centred / (rewards_PG.std(1, keepdim=True) + eps)
    if scale == "batch":
        return centred / (reward_moments(rewards_PG)[1] + eps)
    return centred
