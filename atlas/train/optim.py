"""The optimizer step every trainer shares: AdamW, warmup + constant/cosine schedule, global gradient
clipping, and the non-finite guard.

    lr(step) = lr * s / W                          for s < W = ceil(warmup_ratio * max_steps)  (s from 1)
             = lr                                  constant, after warmup
             = lr * (r + (1 - r) (1 + cos(pi p)) / 2),  p = (s - W) / (max_steps - W)   cosine to r = min_lr_ratio

Weight decay applies to matrices only (norm weights and biases are not decayed), as is usual for
decoders; the update is torch's fused AdamW kernel (no parameter-sized temporaries, on CPU and CUDA
alike). The gradient norm is the global one, over every parameter on every rank (under FSDP2 the
per-rank norms of sharded DTensor gradients are reduced, as torchtitan does); gradients are scaled to
`max_grad_norm` when above it (0 disables clipping, the norm is still measured). A step whose norm is
not finite (a NaN/inf loss or gradient anywhere) is skipped: the gradients are dropped, the optimizer
does not move, the schedule still advances (it is a function of the step number), and the skip is
counted; `max_nonfinite_steps` consecutive skips stop the run with an error, because a run that keeps
producing them is broken, not unlucky. The norm is reduced over ranks, so every rank takes the same
decision.

Left out: other optimizers, per-parameter-group learning rates, gradient scaling for fp16.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import atlas.distributed as ad


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float = 1e-8) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel per parameter with no temporaries; the for-loop default on CPU allocates a
    # parameter-sized denominator (297 MiB for a 151,936 x 512 embedding) and is ~8x slower there
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, eps=eps, fused=True)


def lr_factor(step: int, max_steps: int, warmup_ratio: float, schedule: str, min_lr_ratio: float) -> float:
    """The learning-rate multiplier for optimizer step `step` (counting from 1)."""
    warmup = math.ceil(warmup_ratio * max_steps)
    if step <= warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, max_steps - warmup)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def grad_norm_(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """The global L2 norm of the gradients (fp32, a plain tensor on every rank), clipped in place to
    `max_norm` when above it (0: measure only). Non-finite norms leave the gradients as they are."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    # under FSDP2 a partial DTensor of per-rank shard norms: reduced to the global one
    norm = ad.full_tensor(torch.nn.utils.get_total_norm(grads, norm_type=2.0)).float()
    if max_norm > 0 and torch.isfinite(norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


class NonFiniteGuard:
    """Counts skipped steps; raises after `limit` consecutive ones."""

    def __init__(self, limit: int):
        self.limit = limit
        self.consecutive = 0
        self.total = 0

    def check(self, finite: bool, step: int) -> bool:
        if finite:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.limit:
            raise RuntimeError(
                f"{self.consecutive} consecutive optimizer steps (up to step {step}) had a non-finite loss or "
                f"gradient and were skipped; stopping. Lower the learning rate, check the data for empty or "
                f"corrupt examples, or raise max_nonfinite_steps"
            )
        return False

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consecutive, self.total = state["consecutive"], state["total"]
