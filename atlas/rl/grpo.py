"""GRPO: sample G completions per prompt on the policy itself, score them, and push up the log-probability
of the ones that beat their group (advantages: rl/advantage.py; the loss: rl/loss.py).

    GRPO(model, tokenizer, reward_fns, GRPOConfig(...), ref_model=None).train(examples, eval_examples)

One rollout batch (`prompts_per_step` prompts x `num_generations` completions) per `mu` optimizer steps:
1. rollouts through the Sampler on the policy's own (sharded) model object (atlas.train.rollout): each
   rank samples its share of the prompts, each prompt with the stream of (seed, step, its global index);
2. rewards where the completions are: each reward function `(prompts, completions, **columns) -> list[float]`
   is called on this rank's completions; the reward is their weighted sum (`reward_weights`). A group
   never straddles ranks (all G completions of a prompt are sampled on one), so advantages need no
   gathering; only scale="batch" reduces the batch's standard deviation over ranks;
3. log-probabilities of the sampled tokens (prompt + completion, one sequence, the context it was
   sampled in) through `model.token_logprobs` at the sampling temperature: the LM head in chunks, no
   [tokens x vocab] tensor beyond one chunk. Old log-probabilities: with mu = 1 they are the current ones
   detached (the ratio is exactly 1); with mu > 1 one no-grad pass before the first inner update. The
   reference model (a frozen copy in the compute dtype, sharded like the policy, skipped when beta = 0)
   is scored in a no-grad pass; with `ref_sync_every` = k it moves toward the policy every k steps
   (ref <- alpha policy + (1 - alpha) ref), and then the resume state holds it. The sampler's own
   log-probabilities are compared with the trainer's at every rollout (`logprob_gap_mean/max`): one
   model and one kernel, one number;
4. the clipped, KL-penalised loss, normalised by global counts (loss_norm), micro-batch by micro-batch,
   then one optimizer step (clipping, the non-finite guard: atlas.train).

Truncated sampling (top-p/top-k/min-p) draws each token from q, the truncated distribution renormalised,
not from the policy's full distribution p at the sampling temperature. `tis_cap = C` multiplies each
token's clipped policy term (not its KL term, as TRL) by w_t = min(exp(old_t - log q_t), C), log q_t the
sampler's own `Completion.sampled_logprobs` (no extra forward). A sampled token is one the truncation
kept, where q = p / Z with Z the probability mass kept, and old is the sampling policy's log p (the same
weights, model and kernel), so w_t = min(Z_t, C) = Z_t <= 1: a per-token weight equal to the kept mass,
which the cap bounds only when C < 1. TRL computes the same ratio from vLLM's processed log-probabilities
(`logprobs_mode="processed_logprobs"`: after temperature and top-k/top-p), but those come from another
engine, so its ratio mixes the kept mass with the two engines' numerical mismatch (which its
`vllm_importance_sampling_clip_*` bounds tame); here both log-probabilities come from one model and one
kernel.

Reward functions: a plain callable, or a list of them (with `reward_weights`); each is logged as
`reward_<name>`. Columns: an `atlas.data.Example`'s reference arrives as `answers` (the rule rewards'
keyword); a dict example's keys other than "prompt" arrive under their own names. Each column holds one
entry per completion (the prompt's value repeated G times), and so do `prompts` (as the example gives
them: a string or chat messages); the held-out evaluation calls it the same way
(`atlas.train.data.reward_inputs` builds both calls). A reward function that raises, returns the wrong
number of values or a non-finite one stops the run with an error naming it: a skipped reward would
silently bias the gradient.

Under torchrun the trainer initialises the process group and shards the policy and the reference
itself; 1 process and N processes sample the same rollouts and compute the same loss up to floating-
point reduction order. Departures from the textbook: the loss uses the clipped surrogate even at mu = 1
(where it is the plain policy gradient); KL is the k3 estimator on the sampled tokens, not the full-
distribution KL; completions that hit max_new_tokens are trained unless `mask_truncated`.

Left out: dynamic sampling (DAPO's refill of zero-variance groups), multi-turn/tool rollouts, value
models (PPO), GSPO's sequence-level ratio.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

import atlas.distributed as ad
from atlas.model import Transformer
from atlas.rl.advantage import group_advantages
from atlas.rl.loss import LossCounts, policy_loss
from atlas.sampler import Sampler, SamplingParams
from atlas.train.data import reward_inputs
from atlas.train.evaluate import greedy_eval
from atlas.train.rollout import Rollout, micro_batch_count, rollout_batches, sample_rollouts
from atlas.train.trainer import TrainConfig, Trainer

RewardFn = Callable[..., list[float]]


@dataclass
class GRPOConfig(TrainConfig):
    """The original's defaults where they exist: lr 1e-6, 8 generations, beta 0.04, temperature 1.0."""

    output_dir: str = "results/grpo"
    lr: float = 1e-6
    prompts_per_step: int = 8
    num_generations: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    ignore_eos: bool = False  # sample exactly max_new_tokens (benchmarks): no end-of-turn or eos stops a turn
    beta: float = 0.04
    eps_low: float = 0.2
    eps_high: float = 0.2  # DAPO's clip-higher: 0.28
    mu: int = 1  # optimizer steps per rollout batch
    loss_norm: Literal["token_mean", "seq_mean", "dr_grpo"] = "token_mean"
    adv_scale: Literal["group", "batch", "none"] = "group"
    mask_truncated: bool = False
    tis_cap: float | None = None  # per-token weights min(pi_old / q, C) on the policy term; None: off
    ref_sync_every: int = 0  # 0: the reference stays the initial policy
    ref_sync_alpha: float = 0.9
    reward_weights: list[float] | None = None
    eval_max_new_tokens: int | None = None  # default: max_new_tokens
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError(f"config key 'num_generations' must be >= 2: a group advantage needs at least two "
                             f"completions per prompt, got {self.num_generations}")
        for key in ("prompts_per_step", "max_new_tokens", "mu", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)!r}")
        if not self.temperature > 0:
            raise ValueError(f"config key 'temperature' must be > 0 (GRPO samples), got {self.temperature}")
        for key in ("beta", "eps_low", "eps_high", "ref_sync_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"config key {key!r} must be >= 0, got {getattr(self, key)!r}")
        if self.eps_low >= 1:
            raise ValueError(f"config key 'eps_low' must be < 1, got {self.eps_low}")
        if not 0 < self.ref_sync_alpha <= 1:
            raise ValueError(f"config key 'ref_sync_alpha' must be in (0, 1], got {self.ref_sync_alpha}")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError(f"config key 'tis_cap' must be > 0 or null, got {self.tis_cap}")
        SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                       top_k=self.top_k, min_p=self.min_p)  # the sampling knobs' own checks


@dataclass
class _Batch:
    """One rollout batch and what every inner step of it reuses."""

    rollouts: list[Rollout]
    advantages: list[float]
    old: list[list[float]] | None  # per completion token; None with mu = 1 (the current, detached)
    ref: list[list[float]] | None
    counts: LossCounts
    metrics: dict[str, float]
    inner: int = 0


class GRPO(Trainer):
    """See the module docstring. `ref_model`: the frozen reference (default, with beta > 0: a copy of the
    policy as given, sharded like it: `atlas.distributed.copy_model`)."""

    def __init__(self, model: Transformer, tokenizer, reward_fns: RewardFn | Sequence[RewardFn],
                 config: GRPOConfig, ref_model: Transformer | None = None):
        self.reward_fns = list(reward_fns) if isinstance(reward_fns, Sequence) else [reward_fns]
        if not self.reward_fns or not all(callable(f) for f in self.reward_fns):
            raise ValueError("reward_fns must be a callable or a non-empty list of callables "
                             "(prompts, completions, **columns) -> list[float]")
        self.reward_names = _names(self.reward_fns)
        weights = config.reward_weights or [1.0] * len(self.reward_fns)
        if len(weights) != len(self.reward_fns):
            raise ValueError(f"reward_weights has {len(weights)} entries for {len(self.reward_fns)} reward functions")
        self.reward_weights = weights
        super().__init__(model, tokenizer, config)
        self.ref = None
        if config.beta > 0:  # GRPO alone decides whether there is a reference, and makes it when not given one
            self.ref = self.freeze(ref_model if ref_model is not None else ad.copy_model(self.model))
        self.batch_size = config.prompts_per_step
        self.sampler = Sampler(self.model, tokenizer)
        self.params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                     top_p=config.top_p, top_k=config.top_k, min_p=config.min_p,
                                     n=config.num_generations, ignore_eos=config.ignore_eos)
        self.buffer: _Batch | None = None

    # the loop's hooks

    def needs_batch(self) -> bool:
        return self.buffer is None

    def step(self, batch: list[Any] | None) -> dict[str, float]:
        if batch is not None:
            self.buffer = self._rollout(batch)
        row = self._update(self.buffer)
        self.buffer.inner += 1
        if self.buffer.inner == self.config.mu:
            self.buffer = None
        return row

    def evaluate(self, examples: Sequence[Any]) -> dict[str, float]:
        config = self.config
        return greedy_eval(self.model, self.tokenizer, examples, self.reward,
                           max_new_tokens=config.eval_max_new_tokens or config.max_new_tokens,
                           batch_size=config.eval_batch_size)

    def moving_models(self) -> dict[str, Transformer]:
        """The reference, once syncing moves it away from the initial policy."""
        return {"ref": self.ref} if self.ref is not None and self.config.ref_sync_every else {}

    def extra_state(self) -> dict[str, Any]:
        """The rollout batch an interrupted mu-cycle is still using (nothing between cycles)."""
        if self.buffer is None:
            return {}
        b = self.buffer
        return {"rollouts": [vars(r) for r in b.rollouts], "advantages": b.advantages, "old": b.old, "ref": b.ref,
                "counts": vars(b.counts), "metrics": b.metrics, "inner": b.inner}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            self.buffer = _Batch([Rollout(**r) for r in state["rollouts"]], state["advantages"], state["old"],
                                 state["ref"], LossCounts(**state["counts"]), state["metrics"], state["inner"])

    # rewards

    def reward(self, prompts: list[Any], completions: list[str], **columns: Any) -> list[float]:
        """The weighted sum of the reward functions (also the evaluation's reward)."""
        return self._score(prompts, completions, columns)[0]

    def _score(self, prompts, completions, columns) -> tuple[list[float], dict[str, float]]:
        total = [0.0] * len(completions)
        sums = {}
        for fn, name, weight in zip(self.reward_fns, self.reward_names, self.reward_weights):
            try:
                values = fn(prompts, completions, **columns)
            except Exception as e:
                raise RuntimeError(f"reward function {name!r} raised {type(e).__name__}: {e}") from e
            values = list(values) if values is not None else None
            if values is None or len(values) != len(completions):
                raise ValueError(f"reward function {name!r} returned {None if values is None else len(values)} "
                                 f"values for {len(completions)} completions")
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise ValueError(f"reward function {name!r} returned a non-finite or non-numeric value: "
                                 f"{[v for v in values if not (isinstance(v, int | float) and math.isfinite(v))][:3]}")
            sums[name] = float(sum(values))
            total = [t + weight * v for t, v in zip(total, values)]
        return total, sums

    # one rollout batch

    def prompts_for(self, batch: list[Any], mine: list[int]) -> list[Any]:
        """The examples the policy samples from, by position in the global batch; only this rank's `mine`
        are read. A subclass builds its prompts here (the teaching recipe asks its student first)."""
        return batch

    def _rollout(self, batch: list[Any]) -> _Batch:
        config, G = self.config, self.config.num_generations
        step = self.step_count + 1
        t0 = time.perf_counter()
        batch = self.prompts_for(batch, list(range(ad.rank(), len(batch), ad.world_size())))
        rollouts = sample_rollouts(self.model, self.tokenizer, batch, self.params, (config.seed, step), self.sampler)
        t1 = time.perf_counter()
        prompts, columns = reward_inputs([batch[r.prompt_index] for r in rollouts])
        rewards, sums = self._score(prompts, [r.text for r in rollouts], columns)  # sums per function
        t2 = time.perf_counter()

        r_PG = torch.tensor(rewards, dtype=torch.float64).view(-1, G)
        n_total = len(batch) * G
        stats = ad.all_reduce(torch.tensor([r_PG.sum().item(), (r_PG ** 2).sum().item(),
                                            float((r_PG.std(1) > 0).sum()), *sums.values()],
                                           dtype=torch.float64, device=ad.device())).tolist()
        mean = stats[0] / n_total
        std = math.sqrt(max(0.0, stats[1] / n_total - mean ** 2) * n_total / max(1, n_total - 1))
        adv = group_advantages(r_PG, config.adv_scale, batch_std=std).flatten().tolist()

        masked = [config.mask_truncated and r.truncated for r in rollouts]
        lengths = ad.all_reduce(torch.tensor([
            float(sum(len(r.completion_ids) for r, m in zip(rollouts, masked) if not m)),
            float(sum(len(r.completion_ids) for r in rollouts)), float(sum(r.truncated for r in rollouts))],
            dtype=torch.float64, device=ad.device())).tolist()
        counts = LossCounts(tokens=max(1, int(lengths[0])), sequences=n_total, max_completion_len=config.max_new_tokens)
        old = self._logprobs(self.model, rollouts, masked) if config.mu > 1 else None
        ref = self._logprobs(self.ref, rollouts, masked) if self.ref is not None else None
        t3 = time.perf_counter()
        metrics = {"reward_mean": mean, "reward_std": std, "mixed_group_frac": stats[2] / len(batch),
                   **{f"reward_{name}": s / n_total for name, s in zip(sums, stats[3:])},
                   "completion_len_mean": lengths[1] / n_total, "truncated_frac": lengths[2] / n_total,
                   "tokens": lengths[1], "rollout_s": t1 - t0, "reward_s": t2 - t1, "logprob_s": t3 - t2}
        return _Batch(rollouts, adv, old, ref, counts, metrics)

    def _logprobs(self, model, rollouts: list[Rollout], masked: list[bool]) -> list[list[float]]:
        """Per completion token log-probabilities under `model` (no grad), at the sampling temperature."""
        out: list[list[float]] = [[] for _ in rollouts]
        with torch.no_grad():
            for rb in self._batches(rollouts, masked):
                hidden = model(rb.micro.input_ids_BT, return_hidden=True, **rb.micro.forward_kwargs())
                logp = model.token_logprobs(hidden, rb.micro.targets_BT, self.config.temperature).cpu()
                for b, r in enumerate(rb.rows):
                    start = len(rollouts[r].prompt_ids) - 1
                    out[r] = logp[b, start:start + len(rollouts[r].completion_ids)].tolist()
        return out

    def _batches(self, rollouts, masked):
        per_rank = math.ceil(self.config.prompts_per_step / ad.world_size()) * self.config.num_generations
        count = micro_batch_count(per_rank, self.config.micro_batch_size)
        return rollout_batches(rollouts, self.config.micro_batch_size, self.pad_id, ad.device(), count, masked)

    def _update(self, b: _Batch) -> dict[str, float]:
        config, device = self.config, ad.device()
        t0 = time.perf_counter()
        rollouts = b.rollouts
        masked = [config.mask_truncated and r.truncated for r in rollouts]
        first = b.inner == 0
        sums = torch.zeros(7, dtype=torch.float64, device=device)  # loss, kl, clipped, tokens, entropy, gap, count
        gap_max = torch.zeros((), dtype=torch.float64, device=device)
        for rb in self._batches(rollouts, masked):
            hidden = self.model(rb.micro.input_ids_BT, return_hidden=True, **rb.micro.forward_kwargs())
            logp, entropy = self.model.token_logprobs(hidden, rb.micro.targets_BT, config.temperature,
                                                      return_entropy=True)
            valid = rb.micro.targets_BT != -100
            old = logp.detach() if b.old is None else rb.per_token(b.old, rollouts, device)
            ref = None if b.ref is None else rb.per_token(b.ref, rollouts, device)
            weights = None
            if config.tis_cap is not None:
                q = rb.per_token([r.sampled_logprobs for r in rollouts], rollouts, device)
                weights = torch.exp(old - q).clamp(max=config.tis_cap)
            adv = torch.zeros(valid.shape[0], device=device)
            if rb.rows:
                adv[:len(rb.rows)] = torch.tensor([b.advantages[r] for r in rb.rows], device=device)
            loss, stats = policy_loss(logp, old, adv, valid, b.counts, eps_low=config.eps_low,
                                      eps_high=config.eps_high, beta=config.beta, ref_BT=ref, weights_BT=weights,
                                      norm=config.loss_norm)
            self.backward(loss)
            sampler = rb.per_token([r.logprobs for r in rollouts], rollouts, device)
            gap = (old - sampler).abs() * valid  # old: this pass's own log-probs at mu = 1
            sums += torch.stack([loss.detach().double(), stats.get("kl", torch.zeros((), device=device)).double(),
                                 stats["clipped"].double(), stats["tokens"].double(),
                                 (entropy.detach() * valid).sum().double(), gap.sum().double(),
                                 valid.sum().double()])
            gap_max = torch.maximum(gap_max, gap.max().double() if gap.numel() else gap_max)
        out = self.optimizer_step()
        if self.ref is not None and config.ref_sync_every and self.step_count % config.ref_sync_every == 0:
            self._sync_reference()
        loss, kl, clipped, tokens, entropy, gap, count = ad.all_reduce(sums).tolist()
        gap_max = ad.all_reduce(gap_max, "max").item()
        tokens, count = max(tokens, 1.0), max(count, 1.0)
        row = {"loss": loss, "kl": kl / tokens, "clip_frac": clipped / tokens, "entropy": entropy / count, **out}
        row.update(b.metrics)
        if first:
            row.update(logprob_gap_mean=gap / count, logprob_gap_max=gap_max)
        else:  # the rollout batch's time and tokens belong to its first optimizer step
            row.update(rollout_s=0.0, reward_s=0.0, logprob_s=0.0, tokens=0.0)
        row["update_s"] = time.perf_counter() - t0
        return row

    def _sync_reference(self) -> None:
        """ref <- alpha * policy + (1 - alpha) * ref, shard by shard."""
        alpha = self.config.ref_sync_alpha
        with torch.no_grad():
            for p_ref, p in zip(self.ref.parameters(), self.model.parameters()):
                p_ref.mul_(1 - alpha).add_(p.detach(), alpha=alpha)


def _names(fns: list[RewardFn]) -> list[str]:
    names = []
    for fn in fns:
        base = fn.func if isinstance(fn, functools.partial) else fn
        name = getattr(base, "__name__", type(base).__name__)
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names
