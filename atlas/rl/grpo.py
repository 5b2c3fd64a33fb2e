"""GRPO: sample G completions per prompt on the policy itself, score them, and push up the log-probability
of the ones that beat their group (advantages: rl/advantage.py; the loss: rl/loss.py).

    GRPO(model, tokenizer, reward_fns, GRPOConfig(...), ref_model=None).train(examples, eval_examples)

One rollout batch (`prompts_per_step` prompts x `num_generations` completions) per `mu` optimizer steps:
1. rollouts through the Sampler on the policy's own (sharded) model object (atlas.train.rollout): each
   rank samples its share of the prompts, each prompt with the stream of (seed, step, its global index);
2. rewards where the completions are: each reward function `(prompts, completions, **columns) -> list[float]`
   is called on this rank's completions; the reward is their weighted sum (`reward_weights`). A group
   never straddles ranks (all G completions of a prompt are sampled on one), so advantages need no
   gathering; only scale="batch" reduces the batch's standard deviation over ranks (`group_advantages`);
3. log-probabilities of the sampled tokens (prompt + completion, one sequence, the context it was
   sampled in) through `model.token_logprobs` at the sampling temperature: the LM head in chunks, no
   [tokens x vocab] tensor beyond one chunk. Old log-probabilities: with mu = 1 they are the current ones
   detached (the ratio is exactly 1); with mu > 1 one no-grad pass before the first inner update. The
   reference model (a frozen copy in the compute dtype, sharded like the policy, skipped when beta = 0)
   is scored in a no-grad pass; with `ref_sync_every` = k it moves toward the policy every k steps
   (ref <- alpha policy + (1 - alpha) ref), and then the resume state holds it. The sampler's own
   log-probabilities are compared with the trainer's at every rollout (`logprob_gap_mean/max`): one
   model, the same numbers up to fp32 rounding (decode on CPU multiplies by prepacked weights: another
   GEMM, atlas.model.prepack);
4. the clipped, KL-penalised loss, normalised by global counts (loss_norm), micro-batch by micro-batch,
   then one optimizer step (clipping, the non-finite guard: atlas.train).
The rollout batch is built once per `mu` steps (`TrainingBatch`): prompts rendered once, the reward
functions' arguments once, the micro-batches and every per-token value (the sampler's, old, reference
log-probabilities) as tensors laid out on them once; each optimizer step is one pass over them.

Each prompt is computed once per group in every pass (reference, old, and the policy's forward and
backward): the micro-batches pack each prompt once with its completions after it (atlas.train.rollout),
which gives the log-probabilities and gradients of G separate sequences with |p| + G |c| tokens of work
instead of G (|p| + |c|), and no compute on padding. A group that `micro_batch_size` splits (a size that
is not a multiple of G) computes its prompt once per micro-batch it spans.

Groups whose G rewards are all equal (`zero_variance_frac` of them per step) have advantage 0 on every
token. `zero_variance_groups: train` (the default, TRL's behaviour) keeps them: only their KL term acts
(none at beta = 0), and their tokens and sequences count in the loss's denominators. `skip` (DAPO's and
prime-rl's) leaves them out of the micro-batches: no forward or backward for them, no KL term, and the
denominators count only the groups kept, so under token_mean the loss is sum over kept tokens / kept
tokens (each kept token weighs more than with `train` when some groups are skipped). A step where every
group is skipped does not touch the weights (`Trainer.optimizer_step(apply=False)`).

Truncated sampling (top-p/top-k/min-p) draws each token from q, the truncated distribution renormalised,
not from the policy's full distribution p at the sampling temperature. `tis_cap = C` multiplies each
token's clipped policy term (not its KL term, as TRL) by w_t = min(exp(old_t - log q_t), C), log q_t the
sampler's own `Completion.sampled_logprobs` (no extra forward). A sampled token is one the truncation
kept, where q = p / Z with Z the probability mass kept, and old is the sampling policy's log p (the same
weights and model), so w_t = min(Z_t, C) = Z_t <= 1 (to fp32 rounding): a per-token weight equal to the kept mass,
which the cap bounds only when C < 1. TRL computes the same ratio from vLLM's processed log-probabilities
(`logprobs_mode="processed_logprobs"`: after temperature and top-k/top-p), but those come from another
engine, so its ratio mixes the kept mass with the two engines' numerical mismatch (which its
`vllm_importance_sampling_clip_*` bounds tame); here both log-probabilities come from one model.

Agents (`tools=[fn, ...]` and/or `environment_factory=cls`, TRL's conventions): step 1 rolls each
trajectory out turn by turn through the tools (atlas.train.agent: calls read in the template's format,
run with `tool_timeout_s`, results cut at `max_tool_output_tokens`, appended as the template's tool turns
and prefilled into the same KV cache, at most `max_turns` turns and `max_new_tokens` sampled tokens in
all). The sequence trained is exactly what the model saw; the loss covers the sampled tokens only (tool
turns and template glue are context), so at mu = 1 the ratio is still exactly 1. The reward functions see
the final assistant message as the completion and the trajectory as the `trajectories` column; an
environment's `get_reward()` is one more reward function (weight 1, logged as reward_<its class> and
env_reward_mean; `reward_fns` may then be empty; `reward_weights` weigh the others). Metrics add
turns_mean, tool_calls_mean, tool_error_frac (and per reason: tool_error_frac_<reason>),
tool_output_cut_frac, appended_len_mean; `tokens` and `completion_len_mean` count sampled tokens,
`trained_tokens` the tokens with a loss. The held-out evaluation runs the same loop greedily.

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

Left out: dynamic sampling (DAPO's refill of zero-variance groups), value models (PPO), GSPO's
sequence-level ratio.
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
from atlas.rl.advantage import group_advantages, reward_moments
from atlas.rl.loss import LossCounts, policy_loss
from atlas.sampler import Sampler, SamplingParams, Truncation
from atlas.train.agent import Toolbox, agent_rollouts, tool_metrics, tool_sums
from atlas.train.data import micro_batch_count
from atlas.train.evaluate import greedy_eval
from atlas.train.rollout import (
    Rollout,
    RolloutBatch,
    RolloutMicroBatch,
    my_prompts,
    rollout_micro_batches,
    sample_rollouts,
)
from atlas.train.trainer import TrainConfig, Trainer

RewardFn = Callable[..., list[float]]


@dataclass
class GRPOConfig(TrainConfig, Truncation):
    """Defaults for 7B-scale policies: lr 1e-6, 8 generations, beta 0.04, temperature 1.0 (the embedded
    configs set their own)."""

    output_dir: str = "results/grpo"
    lr: float = 1e-6
    prompts_per_step: int = 8
    num_generations: int = 8
    max_new_tokens: int = 256  # and temperature, top_p, top_k, min_p, ignore_eos: atlas.sampler.Truncation
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
    zero_variance_groups: Literal["train", "skip"] = "train"  # groups whose rewards are all equal
    eval_max_new_tokens: int | None = None  # default: max_new_tokens
    eval_batch_size: int = 64
    max_turns: int = 8  # with tools: assistant turns per trajectory (max_new_tokens is their sum)
    tool_timeout_s: float = 30.0
    max_tool_output_tokens: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_generations < 2:
            raise ValueError(f"config key 'num_generations' must be >= 2: a group advantage needs at least two "
                             f"completions per prompt, got {self.num_generations}")
        for key in ("prompts_per_step", "max_new_tokens", "mu", "eval_batch_size", "max_turns",
                    "max_tool_output_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)!r}")
        if not self.temperature > 0:
            raise ValueError(f"config key 'temperature' must be > 0 (GRPO samples), got {self.temperature}")
        for key in ("beta", "eps_low", "eps_high", "ref_sync_every"):
            if getattr(self, key) < 0:
                raise ValueError(f"config key {key!r} must be >= 0, got {getattr(self, key)!r}")
        if not self.tool_timeout_s > 0:
            raise ValueError(f"config key 'tool_timeout_s' must be > 0, got {self.tool_timeout_s}")
        if self.eps_low >= 1:
            raise ValueError(f"config key 'eps_low' must be < 1, got {self.eps_low}")
        if not 0 < self.ref_sync_alpha <= 1:
            raise ValueError(f"config key 'ref_sync_alpha' must be in (0, 1], got {self.ref_sync_alpha}")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError(f"config key 'tis_cap' must be > 0 or null, got {self.tis_cap}")
        self.sampling_params()  # the sampling knobs' own checks

    def sampling_params(self) -> SamplingParams:
        """The rollouts' sampling settings (G completions per prompt)."""
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, min_p=self.min_p, n=self.num_generations, ignore_eos=self.ignore_eos)


@dataclass
class TrainingBatch:
    """One rollout batch as GRPO trains on it for `mu` optimizer steps: the rollouts, their micro-batches,
    and per micro-batch the advantages of its rollouts [B] and the old and reference log-probabilities of
    its targets [M] (old None with mu = 1: the current ones, detached)."""

    rollouts: list[Rollout]
    micro: list[RolloutMicroBatch]
    adv_B: list[torch.Tensor]
    old_M: list[torch.Tensor] | None
    ref_M: list[torch.Tensor] | None
    counts: LossCounts
    metrics: dict[str, float]
    kept: list[int]  # the rollouts trained on (zero_variance_groups="skip" leaves some out)
    inner: int = 0


class GRPO(Trainer):
    """See the module docstring. `ref_model`: the frozen reference (default, with beta > 0: a copy of the
    policy as given, sharded like it: `atlas.distributed.copy_model`). `tools` / `environment_factory`:
    rollouts turn by turn through tools (atlas.train.agent, TRL's conventions); an environment's
    `get_reward` joins the reward functions (weight 1, logged as reward_<its class>), which may then be
    empty."""

    def __init__(self, model: Transformer, tokenizer, reward_fns: RewardFn | Sequence[RewardFn],
                 config: GRPOConfig, ref_model: Transformer | None = None, tools: Sequence[Callable] | None = None,
                 environment_factory: Callable[[], Any] | None = None):
        self.toolbox = None
        if tools or environment_factory is not None:
            self.toolbox = Toolbox(tokenizer, tools or (), environment_factory, max_turns=config.max_turns,
                                   timeout_s=config.tool_timeout_s, max_output_tokens=config.max_tool_output_tokens)
        self.reward_fns = list(reward_fns) if isinstance(reward_fns, Sequence) else [reward_fns]
        scored_elsewhere = type(self).score is not GRPO.score  # a subclass that computes its own rewards
        env_reward = self.toolbox is not None and self.toolbox.reward_name is not None
        if not (self.reward_fns or scored_elsewhere or env_reward) or not all(callable(f) for f in self.reward_fns):
            raise ValueError("reward_fns must be a callable or a non-empty list of callables "
                             "(prompts, completions, **columns) -> list[float] (empty only with an environment "
                             "that defines get_reward)")
        self.reward_names = _names(self.reward_fns)
        weights = config.reward_weights or [1.0] * len(self.reward_fns)
        if len(weights) != len(self.reward_fns):
            raise ValueError(f"reward_weights has {len(weights)} entries for {len(self.reward_fns)} reward functions "
                             "(an environment's get_reward is not among them: it always weighs 1, as in TRL)")
        self.reward_weights = weights
        if env_reward:
            self.reward_fns.append(self.toolbox.reward)
            self.reward_names.append(self.toolbox.reward_name)
            self.reward_weights = [*weights, 1.0]
        super().__init__(model, tokenizer, config)
        self.ref = None
        if config.beta > 0:  # GRPO alone decides whether there is a reference, and makes it when not given one
            self.ref = self.freeze(ref_model if ref_model is not None else ad.copy_model(self.model))
        self.batch_size = config.prompts_per_step
        self.sampler = Sampler(self.model, tokenizer)
        self.params = config.sampling_params()
        self.rollout_batch: TrainingBatch | None = None  # kept across the mu optimizer steps that use it

    # the loop's hooks

    def needs_batch(self) -> bool:
        return self.rollout_batch is None

    def step(self, examples: list[Any] | None) -> dict[str, float]:
        if examples is not None:
            self.rollout_batch = self._rollout(examples)
        row = self._update(self.rollout_batch)
        self.rollout_batch.inner += 1
        if self.rollout_batch.inner == self.config.mu:
            self.rollout_batch = None
        return row

    def evaluate(self, examples: Sequence[Any]) -> dict[str, float]:
        config = self.config
        return greedy_eval(self.model, self.tokenizer, examples, self.reward,
                           max_new_tokens=config.eval_max_new_tokens or config.max_new_tokens,
                           batch_size=config.eval_batch_size, toolbox=self.toolbox)

    def moving_models(self) -> dict[str, Transformer]:
        """The reference, once syncing moves it away from the initial policy."""
        return {"ref": self.ref} if self.ref is not None and self.config.ref_sync_every else {}

    def extra_state(self) -> dict[str, Any]:
        """The rollout batch an interrupted mu-cycle is still using (nothing between cycles)."""
        b = self.rollout_batch
        if b is None:
            return {}

        def per_rollout(values_M):
            out: dict[int, list[float]] = {}
            for mb, values in zip(b.micro, values_M):
                out.update(mb.take(values, b.rollouts))
            return [out.get(r, [0.0] * len(b.rollouts[r].completion_ids)) for r in range(len(b.rollouts))]

        # rollouts left out (zero_variance_groups="skip") have no micro-batch: advantage and values 0
        adv = {r: a for mb, adv_B in zip(b.micro, b.adv_B) for r, a in zip(mb.rows, adv_B.tolist())}
        return {"rollouts": [vars(r) for r in b.rollouts],
                "advantages": [adv.get(r, 0.0) for r in range(len(b.rollouts))],
                "old": None if b.old_M is None else per_rollout(b.old_M),
                "ref": None if b.ref_M is None else per_rollout(b.ref_M),
                "counts": vars(b.counts), "metrics": b.metrics, "kept": b.kept, "inner": b.inner}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        rollouts = [Rollout(**r) for r in state["rollouts"]]
        kept = state.get("kept", list(range(len(rollouts))))  # a state saved before skipping existed: all kept
        micro = self._micro_batches(rollouts, kept)
        self.rollout_batch = TrainingBatch(
            rollouts, micro, self._advantages_by_micro(micro, state["advantages"]),
            None if state["old"] is None else [mb.place(state["old"]) for mb in micro],
            None if state["ref"] is None else [mb.place(state["ref"]) for mb in micro],
            LossCounts(**state["counts"]), state["metrics"], kept, state["inner"])

    # rewards

    def reward(self, prompts: list[Any], completions: list[str], **columns: Any) -> list[float]:
        """The weighted sum of the reward functions (also the evaluation's reward)."""
        return self._weighted(prompts, completions, columns)[0]

    def score(self, batch: RolloutBatch) -> tuple[list[float], dict[str, float]]:
        """This rank's rewards of a rollout batch and the metrics they add (each function's mean, over every
        rank). A subclass may score otherwise (the teaching recipe asks its student)."""
        total, sums = self._weighted(batch.prompts, batch.completions, batch.columns)
        sums = ad.all_reduce_sums({**sums, "n": len(total)})
        n = sums.pop("n")
        return total, {f"reward_{name}": value / n for name, value in sums.items()}

    def _weighted(self, prompts, completions, columns) -> tuple[list[float], dict[str, float]]:
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

    def prompts_for(self, examples: list[Any], mine: list[int]) -> list[Any]:
        """The examples the policy samples from, by position in the global batch; only this rank's `mine`
        are read. A subclass builds its prompts here (the teaching recipe asks its student first)."""
        return examples

    def _rollout(self, examples: list[Any]) -> TrainingBatch:
        config, G = self.config, self.config.num_generations
        t0 = time.perf_counter()
        examples = self.prompts_for(examples, my_prompts(len(examples)))
        seed = (config.seed, self.step_count + 1)
        if self.toolbox is None:
            batch = sample_rollouts(self.model, self.tokenizer, examples, self.params, seed, self.sampler)
        else:
            batch = agent_rollouts(self.model, self.tokenizer, examples, self.params, seed, self.toolbox, self.sampler)
        rollouts = batch.rollouts
        t1 = time.perf_counter()
        rewards, reward_metrics = self.score(batch)
        t2 = time.perf_counter()
        r_PG = torch.tensor(rewards, dtype=torch.float64).view(-1, G)
        flat = (r_PG == r_PG[:, :1]).all(1)  # groups whose rewards are all equal: advantage 0 everywhere
        kept = [r for r in range(len(rollouts)) if not (config.zero_variance_groups == "skip" and flat[r // G])]
        micro = self._micro_batches(rollouts, kept)
        adv_B = self._advantages_by_micro(micro, group_advantages(r_PG, config.adv_scale).flatten().tolist())
        mean, std = reward_moments(r_PG)
        sums = ad.all_reduce_sums({
            "trained": sum(mb.valid_M.sum() for mb in micro), "flat": flat.sum(), "kept": len(kept),
            "sampled": sum(r.sampled for r in rollouts), "truncated": sum(r.truncated for r in rollouts),
            **(tool_sums(rollouts) if self.toolbox is not None else {})})
        n_total = len(examples) * G
        counts = LossCounts(tokens=int(sums["trained"]), sequences=int(sums["kept"]),
                            max_completion_len=config.max_new_tokens)
        learns = counts.tokens > 0  # the same on every rank; else the step leaves the weights (_update)
        old = self._logprobs(self.model, micro) if config.mu > 1 and learns else None
        ref = self._logprobs(self.ref, micro) if self.ref is not None and learns else None
        t3 = time.perf_counter()
        metrics = {"reward_mean": mean, "reward_std": std, "zero_variance_frac": sums["flat"] / len(examples),
                   **reward_metrics, "completion_len_mean": sums["sampled"] / n_total,
                   "truncated_frac": sums["truncated"] / n_total, "tokens": sums["sampled"],
                   "trained_tokens": sums["trained"], "rollout_s": t1 - t0, "reward_s": t2 - t1, "logprob_s": t3 - t2}
        if self.toolbox is not None:
            metrics.update(tool_metrics(sums, n_total))
            if self.toolbox.reward_name is not None:
                metrics["env_reward_mean"] = metrics[f"reward_{self.toolbox.reward_name}"]
        return TrainingBatch(rollouts, micro, adv_B, old, ref, counts, metrics, kept)

    def _micro_batches(self, rollouts: list[Rollout], kept: list[int]) -> list[RolloutMicroBatch]:
        """The micro-batches of the rollouts `kept` (all but skipped zero-variance groups)."""
        config = self.config
        count = micro_batch_count(len(kept), config.micro_batch_size)
        return rollout_micro_batches(rollouts, config.micro_batch_size, self.pad_id, ad.device(), count,
                                     [config.mask_truncated and r.truncated for r in rollouts], kept)

    @staticmethod
    def _advantages_by_micro(micro: list[RolloutMicroBatch], advantages: list[float]) -> list[torch.Tensor]:
        """Each micro-batch's advantages, one per rollout [B]."""
        return [torch.tensor([advantages[r] for r in mb.rows], dtype=torch.float32, device=mb.targets_M.device)
                for mb in micro]

    def _logprobs(self, model, micro: list[RolloutMicroBatch]) -> list[torch.Tensor]:
        """The targets' log-probabilities [M] of each micro-batch under `model` (no grad), at the sampling
        temperature."""
        with torch.no_grad():
            return [model.token_logprobs(mb.hidden(model), mb.targets_M, self.config.temperature) for mb in micro]

    def _update(self, b: TrainingBatch) -> dict[str, float]:
        config, device = self.config, ad.device()
        t0 = time.perf_counter()
        first = b.inner == 0
        if b.counts.tokens == 0:  # every group skipped (or every completion masked): nothing to learn from
            row = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "entropy": 0.0, **self.optimizer_step(apply=False),
                   **b.metrics}
            self._maybe_sync_reference()
            row["update_s"] = time.perf_counter() - t0
            return row if first else {**row, "rollout_s": 0.0, "reward_s": 0.0, "logprob_s": 0.0, "tokens": 0.0}
        zero = torch.zeros((), dtype=torch.float64, device=device)
        sums = dict.fromkeys(("loss", "kl", "clipped", "tokens", "entropy", "gap", "count"), zero)
        gap_max = zero
        for i, mb in enumerate(b.micro):
            logp, entropy = self.model.token_logprobs(mb.hidden(self.model), mb.targets_M, config.temperature,
                                                      return_entropy=True)
            valid = mb.valid_M
            old = logp.detach() if b.old_M is None else b.old_M[i]
            weights = None
            if config.tis_cap is not None:
                weights = torch.exp(old - mb.sampled_logprobs_M).clamp(max=config.tis_cap)
            adv = b.adv_B[i][mb.seq_M] if mb.rows else torch.zeros_like(logp)
            loss, stats = policy_loss(logp, old, adv, valid, b.counts, seq_M=mb.seq_M, eps_low=config.eps_low,
                                      eps_high=config.eps_high, beta=config.beta,
                                      ref_M=None if b.ref_M is None else b.ref_M[i], weights_M=weights,
                                      norm=config.loss_norm)
            self.backward(loss)
            gap = (old - mb.logprobs_M).abs() * valid  # old: this pass's own log-probs at mu = 1
            for key, value in (("loss", loss.detach()), ("kl", stats.get("kl", zero)), ("clipped", stats["clipped"]),
                               ("tokens", stats["tokens"]), ("entropy", (entropy.detach() * valid).sum()),
                               ("gap", gap.sum()), ("count", valid.sum())):
                sums[key] = sums[key] + value.double()
            gap_max = torch.maximum(gap_max, gap.max().double() if gap.numel() else gap_max)
        out = self.optimizer_step()
        self._maybe_sync_reference()
        sums = ad.all_reduce_sums(sums)
        gap_max = ad.all_reduce(gap_max, "max").item()
        tokens, count = max(sums["tokens"], 1.0), max(sums["count"], 1.0)
        row = {"loss": sums["loss"], "kl": sums["kl"] / tokens, "clip_frac": sums["clipped"] / tokens,
               "entropy": sums["entropy"] / count, **out, **b.metrics}
        if first:
            row.update(logprob_gap_mean=sums["gap"] / count, logprob_gap_max=gap_max)
        else:  # the rollout batch's time and tokens belong to its first optimizer step
            row.update(rollout_s=0.0, reward_s=0.0, logprob_s=0.0, tokens=0.0)
        row["update_s"] = time.perf_counter() - t0
        return row

    def _maybe_sync_reference(self) -> None:
        config = self.config
        if self.ref is not None and config.ref_sync_every and self.step_count % config.ref_sync_every == 0:
            self._sync_reference()

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
