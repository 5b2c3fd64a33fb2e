"""Rollouts: completions sampled from a step's prompts on the trainer's own model, and the micro-batches the
trainer scores them in (GRPO and GKD both use them).

    batch = sample_rollouts(model, tokenizer, examples, params, seed=(config.seed, step))  # RolloutBatch
    batch.prompts, batch.completions, batch.columns          # the reward functions' arguments, built once
    for mb in rollout_micro_batches(batch.rollouts, size, pad_id, device, count):
        hidden = model(mb.micro.input_ids_BT, return_hidden=True, **mb.micro.forward_kwargs())
        logp_BT = model.token_logprobs(hidden, mb.micro.targets_BT)    # 0 off the completion tokens

Prompts: each example's prompt ids (`atlas.train.data.prompt_ids`, rendered once per prompt) are what the
completion was sampled from and what log-probabilities are computed on (prompt + completion, one
sequence), so the model is trained on exactly the context it was sampled in. Under torchrun each rank
samples its share of the step's prompts (rank-strided by the prompt's index in the global batch), all `n`
completions of a prompt on the same rank, each prompt with its own random stream `stream_seed(*seed,
global index)`: a 2-process run samples exactly what 1 process does. Completions are decoded without
special tokens for the reward functions; the ids keep the end-of-turn token, which is trained (the model
learns to stop). A `RolloutBatch` holds the rollouts with the reward functions' `(prompts, **columns)`
(`atlas.train.data.reward_inputs`), one entry per completion. An agent's rollouts (turn by turn through
tools) are atlas/train/agent.py's; they land in the same RolloutBatch and micro-batches, the appended
tool turns as context (no target).

Micro-batches: sequences right-padded in micro-batches of at most `size`; the sampler's per-token
log-probabilities (of the full and of the sampled distribution) are placed at the target positions once,
as tensors (position p - 1 holds the value for the token at p), beside the ids; a trainer's own per-token
tensors (old and reference log-probabilities) are laid out the same way. Every rank gets `count`
micro-batches (empty ones pad), because every FSDP2 forward is a collective.

Left out: rollouts served by another engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import atlas.distributed as ad
from atlas.sampler import Sampler, SamplingParams, stream_seed
from atlas.train.data import MicroBatch, micro_batches, prompt_ids, reward_inputs


@dataclass
class Rollout:
    """One trajectory: the prompt's ids and every token after them, exactly as the model saw them. An agent's
    (atlas.train.agent) also holds tool turns it did not sample: `mask` is 1 on the sampled tokens only
    (None: all sampled), and the per-token log-probabilities are 0 off them."""

    prompt_index: int  # the prompt's index in the step's global batch
    sample: int  # j of the prompt's n completions
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # the sampler's, under the full temperature-scaled distribution
    sampled_logprobs: list[float]  # under the (truncated) distribution actually sampled
    truncated: bool  # ran out of tokens, turns or context before an end of turn / an answer
    text: str  # the (final) assistant message, decoded without special tokens
    mask: list[int] | None = None  # agents: 1 on sampled tokens, 0 on appended tool turns
    messages: list[dict[str, Any]] | None = None  # agents: the trajectory as chat messages
    turns: int = 1
    tool_calls: int = 0
    tool_errors: dict[str, int] = field(default_factory=dict)  # by reason (atlas.train.tools.ERRORS)

    @property
    def sequence(self) -> list[int]:
        return self.prompt_ids + self.completion_ids

    @property
    def sampled(self) -> int:
        """Tokens the model sampled (the rest of the completion was appended)."""
        return len(self.completion_ids) if self.mask is None else sum(self.mask)


@dataclass
class RolloutBatch:
    """This rank's rollouts of one step, prompt-major, and the reward functions' arguments (one entry per
    rollout): built once, read by every stage after sampling."""

    rollouts: list[Rollout]
    prompts: list[Any] = field(default_factory=list)
    columns: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def completions(self) -> list[str]:
        return [r.text for r in self.rollouts]


def sample_rollouts(model, tokenizer, examples: Sequence[Any], params: SamplingParams, seed: tuple[int, ...],
                    sampler: Sampler | None = None, mine: list[int] | None = None) -> RolloutBatch:
    """This rank's rollouts of the global batch `examples` (n = params.n per prompt): of the prompts at
    `mine` (default: this rank's share, `my_prompts`); see the module docstring."""
    mine = my_prompts(len(examples)) if mine is None else mine
    ids = [prompt_ids(tokenizer, examples[i]) for i in mine]
    sampler = sampler or Sampler(model, tokenizer)
    outs = sampler.generate(ids, params, prompt_seeds=[stream_seed(*seed, i) for i in mine])
    texts = tokenizer.decode_batch([o.token_ids for o in outs], skip_special_tokens=True)
    rollouts = [Rollout(mine[o.prompt_index], j % params.n, ids[o.prompt_index], o.token_ids, o.logprobs,
                        o.sampled_logprobs, o.finish_reason == "length", text)
                for j, (o, text) in enumerate(zip(outs, texts))]
    prompts, columns = reward_inputs([examples[i] for i in mine])  # once per prompt, then one per completion
    rows = [o.prompt_index for o in outs]
    return RolloutBatch(rollouts, [prompts[k] for k in rows], {key: [v[k] for k in rows] for key, v in columns.items()})


def my_prompts(count: int) -> list[int]:
    """This rank's share of a step's `count` prompts (rank-strided, all samples of a prompt on one rank)."""
    mine = list(range(ad.rank(), count, ad.world_size()))
    if not mine:
        raise ValueError(f"{count} prompts per step cannot feed {ad.world_size()} ranks: give every rank at least "
                         "one prompt (prompts_per_step >= world size)")
    return mine


@dataclass
class RolloutMicroBatch:
    """One micro-batch of rollout sequences, with the sampler's log-probabilities laid out as its targets."""

    micro: MicroBatch
    rows: list[int]  # indices into the rollout list; [] for an empty (padding) micro-batch
    logprobs_BT: torch.Tensor  # the sampler's, full distribution, fp32, 0 off the completion
    sampled_logprobs_BT: torch.Tensor  # under the distribution sampled (truncation), the same layout

    @property
    def valid_BT(self) -> torch.Tensor:
        return self.micro.targets_BT != -100

    def place(self, values: Sequence[Sequence[float]], rollouts: Sequence[Rollout]) -> torch.Tensor:
        """values[r][j] (one per completion token of rollout r) at the target positions, [B, T] fp32."""
        out = torch.zeros(self.micro.targets_BT.shape, dtype=torch.float32)
        for b, r in enumerate(self.rows):
            start = len(rollouts[r].prompt_ids) - 1
            out[b, start:start + len(values[r])] = torch.tensor(values[r], dtype=torch.float32)
        return out.to(self.micro.targets_BT.device)

    def take(self, values_BT: torch.Tensor, rollouts: Sequence[Rollout]) -> dict[int, list[float]]:
        """The inverse of `place`: {rollout index: its completion tokens' values}."""
        out = values_BT.cpu()
        return {r: out[b, len(rollouts[r].prompt_ids) - 1:][:len(rollouts[r].completion_ids)].tolist()
                for b, r in enumerate(self.rows)}


def rollout_micro_batches(rollouts: Sequence[Rollout], size: int, pad_id: int, device: torch.device | str,
                          count: int, masked: Sequence[bool] | None = None) -> list[RolloutMicroBatch]:
    """`count` micro-batches of this rank's rollouts (prompt + completion, targets on the completion);
    rollouts with `masked[r]` get no target (e.g. truncated completions when those are masked)."""
    seqs = [(r.sequence, [0] * len(r.prompt_ids) + ([0] * len(r.completion_ids) if masked is not None and masked[i]
                                                    else r.mask or [1] * len(r.completion_ids)))
            for i, r in enumerate(rollouts)]
    rows = [list(range(s, min(s + size, len(rollouts)))) for s in range(0, len(rollouts), size)]
    out = []
    for i, micro in enumerate(micro_batches(seqs, size, pack=False, pad_id=pad_id, device=device, count=count)):
        mb = RolloutMicroBatch(micro, rows[i] if i < len(rows) else [], None, None)
        mb.logprobs_BT = mb.place([r.logprobs for r in rollouts], rollouts)
        mb.sampled_logprobs_BT = mb.place([r.sampled_logprobs for r in rollouts], rollouts)
        out.append(mb)
    return out
