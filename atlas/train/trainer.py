"""The loop every trainer runs, and the config fields every trainer shares.

    trainer = SFT(model, tokenizer, SFTConfig(output_dir="results/sft", max_steps=200))
    trainer.train(train_examples, eval_examples)      # or drive trainer.step(batch) yourself

A trainer is a `Trainer` subclass that implements `step(batch) -> metrics` (one optimizer step on a
global batch, metrics already reduced over ranks) and `evaluate(examples) -> metrics`; `train` does the
rest, identically for SFT, GRPO and GKD:
- keeps fp32 master weights: a model given in another dtype (a bf16 hub checkpoint) is upcast in place,
  once, with a warning, so the optimizer's weights and its state are fp32 whatever the checkpoint's dtype
  (in bf16, an update below the weight's spacing rounds away: one GRPO step at lr 1e-6 moved 1.4% of a
  bf16 model's weights). That is 16 bytes per trained parameter (fp32 weight, gradient, two AdamW
  moments), sharded over the ranks under FSDP2. `param_dtype` (bf16, say) is only the compute dtype:
  FSDP2 all-gathers the weights in it (atlas.distributed; under plain python too, on a one-rank group);
- under torchrun, joins the process group and shards the models it is given (atlas.distributed), with
  the config's `param_dtype` (mixed precision) and `activation_checkpointing`; frozen models (GRPO's
  reference, GKD's teacher: `freeze`) are kept in the compute dtype (`param_dtype`, else fp32) and
  sharded alike;
- seeds torch from `seed` on every rank (the same initialisation and data order everywhere);
- takes `batch_size` example indices per step from a `DataOrder` over the examples;
- sets the learning rate of each step (`lr_factor`), and gives subclasses `backward` and
  `optimizer_step` (global gradient clipping, the non-finite guard, AdamW);
- evaluates at step 0 (the baseline), every `eval_every` steps and at the end, when eval examples are
  given and `eval_every` > 0;
- saves a resume state every `save_every` steps and at the end, and the HF export (`output_dir/hf/`) with
  each one, in `export_dtype` (by default the dtype the checkpoint came in, `model.config.torch_dtype`:
  a bf16 checkpoint goes back to serving in bf16), with `provenance.json` when the caller set
  `trainer.provenance` (what trained it);
  `resume=true` restores the newest complete state (model, optimizer, step, data position, RNG,
  counters) and continues the exact same run: same rows in metrics.jsonl;
- on SIGTERM (to a worker, or to torchrun, which forwards it) every rank finishes its step, the ranks agree
  on the stop step (a max-reduce of the flag), save, and `train` returns with `interrupted=True`, so the
  process exits 0 and `resume=true` picks it up.
A loss normalised by a global count (all tokens of the step, over micro-batches and ranks) is multiplied
by the world size before backward, because FSDP2 averages gradients over ranks (`backward` does it).

Left out: gradient accumulation across steps without communication (every micro-batch reduce-scatters:
sharded gradients stay sharded), early stopping, multiple eval sets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

import atlas.distributed as ad
from atlas.checkpoint import export_hf, latest_state, load_state, save_state
from atlas.config import check_types, save_config, to_dict
from atlas.model import Transformer
from atlas.model.config import DTYPES
from atlas.train.data import DataOrder
from atlas.train.metrics import Metrics
from atlas.train.optim import NonFiniteGuard, build_optimizer, grad_norm_, lr_factor

logger = logging.getLogger("atlas.train")


@dataclass
class TrainConfig:
    """Fields every trainer shares, with one spelling. Subclasses add theirs and set their own defaults."""

    output_dir: str = "results/run"
    max_steps: int = 100
    lr: float = 1e-5
    warmup_ratio: float = 0.03
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.0  # the cosine schedule's floor, as a fraction of lr
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0  # 0: measure the norm, do not clip
    micro_batch_size: int = 8
    seed: int = 0
    save_every: int = 0  # 0: only at the end
    eval_every: int = 0  # 0: no evaluation inside train()
    keep_checkpoints: int = 2
    resume: bool = False
    max_nonfinite_steps: int = 3
    param_dtype: Literal["float32", "bfloat16", "float16"] | None = None  # compute dtype (FSDP2 mixed precision)
    export_dtype: Literal["float32", "bfloat16", "float16"] | None = None  # HF export; None: the checkpoint's
    activation_checkpointing: bool = False
    wandb_project: str | None = None
    run_name: str | None = None

    def __post_init__(self) -> None:
        check_types(self)
        positive = {"max_steps": self.max_steps, "lr": self.lr, "micro_batch_size": self.micro_batch_size,
                    "max_nonfinite_steps": self.max_nonfinite_steps}
        for key, value in positive.items():
            if value <= 0:
                raise ValueError(f"config key {key!r} must be > 0, got {value!r}")
        for key in ("save_every", "eval_every", "keep_checkpoints", "weight_decay", "max_grad_norm"):
            if getattr(self, key) < 0:
                raise ValueError(f"config key {key!r} must be >= 0, got {getattr(self, key)!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"config key 'warmup_ratio' must be in [0, 1), got {self.warmup_ratio!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"config key 'min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio!r}")
        if not all(0 <= b < 1 for b in self.adam_betas) or len(self.adam_betas) != 2:
            raise ValueError(f"config key 'adam_betas' must be two numbers in [0, 1), got {self.adam_betas!r}")


class Trainer(ABC):
    """The shared loop; see the module docstring. Subclasses set `self.batch_size` (examples per step)."""

    batch_size: int

    def __init__(self, model: Transformer, tokenizer, config: TrainConfig):
        ad.init()
        self.config, self.tokenizer = config, tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        torch.manual_seed(config.seed)
        self.export_dtype = DTYPES[config.export_dtype] if config.export_dtype else model.config.dtype or model.dtype
        self.compute_dtype = DTYPES.get(config.param_dtype) or torch.float32
        self.model = ad.parallelize(fp32_master_weights(model), param_dtype=DTYPES.get(config.param_dtype),
                                    activation_checkpointing=config.activation_checkpointing)
        self.model.train()
        self.optimizer = build_optimizer(self.model, config.lr, config.weight_decay, tuple(config.adam_betas))
        self.guard = NonFiniteGuard(config.max_nonfinite_steps)
        self.step_count = 0
        self.order: DataOrder | None = None
        self.output_dir = Path(config.output_dir)
        self.provenance: dict[str, Any] | None = None  # written as hf/provenance.json with every export
        self._stop = threading.Event()

    # What a trainer implements

    @abstractmethod
    def step(self, batch: list[Any] | None) -> dict[str, float]:
        """One optimizer step on a global batch (the same list on every rank; None when `needs_batch` said
        no); metrics reduced over ranks."""

    @abstractmethod
    def evaluate(self, examples: Sequence[Any]) -> dict[str, float]:
        """Held-out metrics (without the eval_ prefix), reduced over ranks."""

    def freeze(self, model: Transformer) -> Transformer:
        """A model that never steps (a reference, a teacher): no gradient, no optimizer state, held in the
        compute dtype and sharded like the policy. Changes the caller's object in place, like the policy."""
        model.requires_grad_(False)
        return ad.parallelize(model.to(self.compute_dtype)).eval()

    def needs_batch(self) -> bool:
        """Whether the next step takes a new batch of examples (GRPO with mu > 1 reuses its rollouts)."""
        return True

    def prepare(self, examples: Sequence[Any]) -> list[Any]:
        """Turn user examples into what `step` takes (SFT tokenizes here); called once by `train`."""
        return list(examples)

    def moving_models(self) -> dict[str, Transformer]:
        """Models besides the policy whose weights change during the run (GRPO's synced reference), by
        name: saved with every resume state and restored with it."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """This rank's JSON-able trainer state beyond model/optimizer/data/RNG, saved with every resume state."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned (nothing to restore by default)."""
        assert not state, f"{type(self).__name__} saved extra state it does not restore: {sorted(state)}"

    # The loop

    def train(self, examples: Sequence[Any], eval_examples: Sequence[Any] | None = None) -> dict[str, Any]:
        """Run to `max_steps` (or a SIGTERM); returns the last metrics, `interrupted`, and the HF export path."""
        config = self.config
        data = self.prepare(examples)
        eval_data = self.prepare(eval_examples) if eval_examples else None
        self.order = DataOrder(len(data), config.seed)
        resumed = self._resume() if config.resume else None
        if ad.is_main():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.output_dir / "config.yaml")
        metrics = Metrics(self.output_dir, config.max_steps, main=ad.is_main(), resume_step=resumed,
                          wandb_project=config.wandb_project, run_name=config.run_name, config=to_dict(config))
        evaluating = eval_data is not None and config.eval_every > 0
        last: dict[str, Any] = {}
        interrupted = False
        with _on_sigterm(self._stop):
            if evaluating and self.step_count == 0:
                metrics.log({"step": 0, **_prefixed(self.evaluate(eval_data))})
            while self.step_count < config.max_steps:
                batch = [data[i] for i in self.order.take(self.batch_size)] if self.needs_batch() else None
                t0 = time.perf_counter()
                row = self.step(batch)
                seconds = time.perf_counter() - t0
                last = {"step": self.step_count, **row, "step_s": seconds}
                if "tokens" in row:
                    last["tokens_per_s"] = row["tokens"] / seconds
                metrics.log(last)
                done = self.step_count == config.max_steps
                if evaluating and (done or self.step_count % config.eval_every == 0):
                    metrics.log({"step": self.step_count, **_prefixed(self.evaluate(eval_data))})
                interrupted = self._stop_agreed()
                if done or interrupted or (config.save_every and self.step_count % config.save_every == 0):
                    self.save()
                if interrupted:
                    break
        metrics.close()
        return {**last, "interrupted": interrupted, "hf": str(self.output_dir / "hf")}

    def save(self) -> None:
        """Resume state of the current step and the HF export (every rank must call it)."""
        state = {"data": self.order.state_dict() if self.order else None, "guard": self.guard.state_dict()}
        save_state(self.output_dir, self.step_count, self.model, self.optimizer, state, self.config,
                   keep=self.config.keep_checkpoints, others=self.moving_models(), rank_state=self.extra_state())
        extra = None if self.provenance is None else {
            "provenance.json": json.dumps({**self.provenance, "step": self.step_count}, indent=2, default=str) + "\n"}
        export_hf(self.model, self.output_dir / "hf", self.tokenizer, self.export_dtype, extra_files=extra)

    def _resume(self) -> int | None:
        path = latest_state(self.output_dir)
        if path is None:
            return None
        state = load_state(path, self.model, self.optimizer, others=self.moving_models())
        self.step_count = state["step"]
        if state["data"] is not None:
            self.order.load_state_dict(state["data"])
        self.guard.load_state_dict(state["guard"])
        self.load_extra_state(state["rank_state"])
        return self.step_count

    # What step() uses

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a loss normalised by a global count: scaled by the world size against FSDP2's mean."""
        (loss * ad.world_size()).backward()

    def optimizer_step(self, apply: bool = True) -> dict[str, float]:
        """Advance one optimizer step: the step's learning rate, global clipping, the non-finite guard.
        `apply=False`: a step with nothing to learn from (every rank agrees) advances the count and the
        schedule and leaves the weights and the optimizer's state as they are."""
        self.step_count += 1
        config = self.config
        lr = config.lr * lr_factor(self.step_count, config.max_steps, config.warmup_ratio, config.lr_schedule,
                                   config.min_lr_ratio)
        if not apply:
            self.optimizer.zero_grad(set_to_none=True)
            return {"grad_norm": 0.0, "lr": lr, "skipped": 0, "skipped_total": self.guard.total}
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = grad_norm_(params, config.max_grad_norm)
        finite = self.guard.check(bool(torch.isfinite(norm)), self.step_count)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": norm.item(), "lr": lr, "skipped": int(not finite), "skipped_total": self.guard.total}

    def _stop_agreed(self) -> bool:
        flag = torch.tensor([float(self._stop.is_set())], device=ad.device())
        return bool(ad.all_reduce(flag, "max").item())



def fp32_master_weights(model: Transformer) -> Transformer:
    """`model` with fp32 parameters (upcast in place, FSDP2-sharded or not); see the module docstring."""
    low = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if low:
        n = sum(ad.local_tensor(p).numel() for p in model.parameters() if p.requires_grad)
        logger.warning("training keeps fp32 master weights: the model given in %s is upcast to float32 in place "
                       "(16 bytes per trained parameter with its gradient and AdamW state: %.2f GiB on this rank); "
                       "param_dtype=bfloat16 sets the compute dtype", ", ".join(low), 16 * n / 2**30)
        model.float()
    return model


@contextlib.contextmanager
def _on_sigterm(event: threading.Event):
    """SIGTERM sets `event` instead of killing the process (signals reach only the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _prefixed(row: dict[str, Any]) -> dict[str, Any]:
    return {f"eval_{k}": v for k, v in row.items()}
