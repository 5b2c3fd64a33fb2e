"""GKD: on-policy distillation. The student learns the teacher's next-token distribution on the student's
own samples (Agarwal et al., generalized knowledge distillation).

    loss = (1 / N) * sum over completion tokens t of JSD_beta(p_S(. | x_<t) || p_T(. | x_<t))
    JSD_beta = beta KL(p_T || M) + (1 - beta) KL(p_S || M),  M = (1 - beta) p_S + beta p_T   (TRL's convention)

over the full vocabulary per token, both distributions at the loss temperature, N the completion tokens
of the whole step (all micro-batches and ranks). beta = 0 is forward KL(p_T || p_S), beta = 1 reverse
KL(p_S || p_T) (Thinking Machines' on-policy distillation); `normalize_jsd` divides by beta (1 - beta),
which is continuous at both ends.

Each step, with probability `lmbda` (a draw from (seed, step), the same on every rank) the completions
are the student's own samples (the Sampler on the student, at `temperature`); otherwise the examples'
completions, or with `seq_kd` the teacher's own samples (at `temperature`). On an agent's trajectory
(atlas.data.trajectory_examples) this is per assistant turn: each turn's context is the recorded
conversation up to it (tool calls and results included, rendered with the tools); on-policy, the student
samples the turn there (until the end of turn, which closes a tool call too), off-policy the recorded
turn is used; the teacher scores exactly those tokens in that context. `jsd_per_turn` logs the summed
JSD per assistant turn. GKD never runs tools live (GRPO's agent rollouts do). The
teacher scores exactly the token sequences the student is trained on, prompt + completion (never the
dataset's completion on an on-policy step), and only completion tokens count.
The loss comes from both models' hidden states and LM heads in chunks (`Transformer.generalized_jsd`,
an FSDP forward method on the student), so neither [tokens x vocab] logits tensor exists; under FSDP2 the
teacher's root (embeddings and head) is unsharded for the step with the public `FSDPModule.unshard` and
resharded after the backward, which recomputes the teacher's logits tile by tile. The teacher is frozen
(no gradient, no optimizer state), held in the compute dtype (`param_dtype`, else fp32) and sharded like
the student.

Vocabularies: student and teacher must share a tokenizer. A second tokenizer (`teacher_tokenizer`) is
compared with the first: a different size or a different id for any piece is a ValueError. Embedding
matrices may be padded past the tokenizer, and differently on the two sides (Qwen2.5-0.5B has 151,936
rows, Qwen2.5-7B 152,064, both for a 151,665-entry tokenizer): the JSD is taken over the tokenizer's
entries only (the first `tokenizer.vocab_size` rows of both heads); padding rows are no token.

Evaluation (`eval_every`): the student's greedy held-out success rate and mean completion tokens
(atlas.train.evaluate), the teacher's once as the ceiling, and against the first (baseline) evaluation
`success_delta` (points) and `token_reduction_pct`: what distillation is for, a student that succeeds
more often with shorter answers.

Left out: sequence-level KD from a teacher served elsewhere, top-k (sparse) distillation, token-level
mixing of on- and off-policy data within a step; shared-prefix passes: GKD samples one completion per
prompt, so no two sequences share a prompt (GRPO's groups do: atlas.train.rollout), and the per-turn
contexts of one trajectory, which repeat its earlier turns, are computed each in full.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import atlas.distributed as ad
from atlas.model import Transformer
from atlas.sampler import SamplingParams, stream_seed
from atlas.train.data import (
    IGNORE,
    as_conversation,
    encode_conversation,
    micro_batch_count,
    micro_batches,
    shard,
    tools_of,
    turn_prompts,
)
from atlas.train.evaluate import greedy_eval
from atlas.train.rollout import sample_rollouts
from atlas.train.trainer import TrainConfig, Trainer


@dataclass
class GKDConfig(TrainConfig):
    """Defaults for 7B-scale students: lmbda 1.0 (always on-policy), beta 0.5, sampling temperature 0.9,
    max_new_tokens 512, lr 5e-6 (the embedded configs set their own)."""

    output_dir: str = "results/gkd"
    lr: float = 5e-6
    batch_size: int = 8  # prompts per optimizer step, over all ranks
    lmbda: float = 1.0  # share of on-policy steps
    beta: float = 0.5
    temperature: float = 0.9  # sampling
    loss_temperature: float = 1.0
    seq_kd: bool = False  # off-policy steps use the teacher's samples instead of the data's completions
    normalize_jsd: bool = False
    max_new_tokens: int = 512
    ignore_eos: bool = False  # sample exactly max_new_tokens (benchmarks): no end-of-turn or eos stops a turn
    eval_max_new_tokens: int | None = None  # default: max_new_tokens
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.lmbda <= 1:
            raise ValueError(f"config key 'lmbda' must be in [0, 1], got {self.lmbda}")
        if not 0 <= self.beta <= 1:
            raise ValueError(f"config key 'beta' must be in [0, 1], got {self.beta}")
        for key in ("temperature", "loss_temperature"):
            if not getattr(self, key) > 0:
                raise ValueError(f"config key {key!r} must be > 0, got {getattr(self, key)}")
        for key in ("batch_size", "max_new_tokens", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")

    def sampling_params(self) -> SamplingParams:
        """How the on-policy (and seq_kd) completions are sampled."""
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                              ignore_eos=self.ignore_eos)


def check_vocabularies(tokenizer, teacher_tokenizer, student: Transformer, teacher: Transformer) -> None:
    """ValueError when the two sides cannot be compared token for token; see the module docstring."""
    if teacher_tokenizer is not None and teacher_tokenizer is not tokenizer:
        if teacher_tokenizer.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"student and teacher tokenizers differ in size ({tokenizer.vocab_size} vs "
                             f"{teacher_tokenizer.vocab_size}): GKD compares distributions token by token, so "
                             "both must share one vocabulary")
        mine, theirs = tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        different = [piece for piece, i in mine.items() if theirs.get(piece) != i]
        if different:
            raise ValueError(f"student and teacher tokenizers give {len(different)} pieces different ids (e.g. "
                             f"{different[:3]}): GKD needs one shared vocabulary")
    for name, model in (("student", student), ("teacher", teacher)):
        if model.config.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"the {name}'s embedding has {model.config.vocab_size} rows for a tokenizer of "
                             f"{tokenizer.vocab_size} entries: it is not a model of this tokenizer")


class GKD(Trainer):
    """`GKD(student, teacher, tokenizer, GKDConfig(...)).train(examples, eval_examples)`; see the module
    docstring. reward_fn: `(prompts, completions, answers=...) -> list[float]`, for the success rate."""

    def __init__(self, student: Transformer, teacher: Transformer, tokenizer, config: GKDConfig, *,
                 reward_fn: Callable[..., list[float]] | None = None, teacher_tokenizer=None):
        check_vocabularies(tokenizer, teacher_tokenizer, student, teacher)
        super().__init__(student, tokenizer, config)
        self.teacher = self.freeze(teacher)
        self.reward_fn = reward_fn
        self.batch_size = config.batch_size
        self.vocab = tokenizer.vocab_size
        self.baseline: dict[str, float] | None = None

    def step(self, prompts: list[Any]) -> dict[str, float]:
        """One optimizer step on `batch_size` prompts (their completions, on- or off-policy)."""
        config, step = self.config, self.step_count + 1
        t0 = time.perf_counter()
        on_policy = random.Random(stream_seed(config.seed, step, 1)).random() < config.lmbda
        sequences = self._sequences(prompts, step, on_policy)
        t1 = time.perf_counter()
        lengths = [sum(m[1:]) for _, m in sequences]  # completion tokens per sequence (targets start at 1)
        counts = ad.all_reduce_sums({"completion": sum(lengths), "sequences": len(lengths),
                                     "tokens": sum(len(ids) for ids, _ in sequences),
                                     "turns": sum(_runs(m) for _, m in sequences)})
        total = counts["completion"]
        if total == 0:
            raise ValueError("this step has no completion token to distil on")
        mbs = micro_batches(sequences, config.micro_batch_size, False, self.pad_id, ad.device(),
                            count=micro_batch_count(len(sequences), config.micro_batch_size))
        loss_sum = torch.zeros((), dtype=torch.float64, device=ad.device())
        with ad.root_unsharded(self.teacher):
            for mb in mbs:
                kwargs = mb.forward_kwargs()
                with torch.no_grad():
                    teacher_hidden = self.teacher(mb.input_ids_BT, return_hidden=True, **kwargs)
                hidden = self.model(mb.input_ids_BT, return_hidden=True, **kwargs)
                jsd = self.model.generalized_jsd(hidden, teacher_hidden, self.teacher.lm_head.weight, config.beta,
                                                 config.loss_temperature, mask=mb.targets_BT != IGNORE,
                                                 normalize=config.normalize_jsd, vocab_size=self.vocab)
                loss = jsd.sum() / total
                self.backward(loss)
                loss_sum += loss.detach().double()
        out = self.optimizer_step()
        loss = ad.all_reduce_sums({"loss": loss_sum})["loss"]
        return {"loss": loss, "jsd_per_turn": loss * total / max(counts["turns"], 1), "on_policy": int(on_policy),
                "completion_len_mean": total / max(counts["sequences"], 1), "tokens": counts["tokens"],
                "rollout_s": t1 - t0, "update_s": time.perf_counter() - t1, **out}

    def _sequences(self, prompts: list[Any], step: int, on_policy: bool) -> list[tuple[list[int], list[int]]]:
        """This rank's (ids, completion mask) sequences: sampled by the student (on-policy), by the teacher
        (seq_kd), or the examples' own completions."""
        config = self.config
        if on_policy or config.seq_kd:
            model = self.model if on_policy else self.teacher
            turns = [t for e in prompts for t in turn_prompts(e)]  # a trajectory: each turn in its recorded context
            batch = sample_rollouts(model, self.tokenizer, turns, config.sampling_params(), (config.seed, step))
            return [(r.sequence, [0] * len(r.prompt_ids) + [1] * len(r.completion_ids)) for r in batch.rollouts]
        return [seq for e in shard(prompts, ad.rank(), ad.world_size())
                for seq in encode_conversation(self.tokenizer, as_conversation(e), tools_of(e))]

    def evaluate(self, examples: Sequence[Any]) -> dict[str, float]:
        config = self.config
        kwargs = dict(max_new_tokens=config.eval_max_new_tokens or config.max_new_tokens,
                      batch_size=config.eval_batch_size)
        if self.reward_fn is None:
            raise ValueError("GKD's held-out evaluation needs a reward_fn (a rule or a judge) to tell success")
        result = greedy_eval(self.model, self.tokenizer, examples, self.reward_fn, **kwargs)
        if self.baseline is None:
            teacher = greedy_eval(self.teacher, self.tokenizer, examples, self.reward_fn, **kwargs)
            self.baseline = {**result, "teacher_success_rate": teacher["success_rate"],
                             "teacher_mean_tokens": teacher["mean_tokens"]}
        base = self.baseline
        result["success_delta"] = 100 * (result["success_rate"] - base["success_rate"])
        result["token_reduction_pct"] = 100 * (base["mean_tokens"] - result["mean_tokens"]) / max(base["mean_tokens"],
                                                                                                  1e-9)
        result["teacher_success_rate"], result["teacher_mean_tokens"] = (base["teacher_success_rate"],
                                                                          base["teacher_mean_tokens"])
        return result

    def extra_state(self) -> dict[str, Any]:
        return {"baseline": self.baseline}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.baseline = state.get("baseline")


def _runs(mask: list[int]) -> int:
    """Assistant turns in a sequence: its runs of trained tokens."""
    return sum(1 for t, m in enumerate(mask) if m and (t == 0 or not mask[t - 1]))
