"""Rollouts: completions sampled from a step's prompts on the trainer's own model, and the sequences the
trainer then scores (GRPO and GKD both use them).

    rollouts = sample_rollouts(model, tokenizer, batch, params, seed=(config.seed, step))
    for rb in rollout_batches(rollouts, micro_batch_size, pad_id, device):
        hidden = model(rb.micro.input_ids_BT, return_hidden=True, attention_mask_BT=...)
        logp_BT = model.token_logprobs(hidden, rb.micro.targets_BT)     # 0 off the completion tokens

Prompts: each example's prompt messages rendered by the chat template with the generation prompt; the
same ids are what the completion was sampled from and what log-probabilities are computed on (prompt +
completion, one sequence), so the model is trained on exactly the context it was sampled in. Under
torchrun each rank samples its share of the step's prompts (rank-strided by the prompt's index in the
global batch), all `n` completions of a prompt on the same rank, each prompt with its own random stream
`stream_seed(*seed, global index)`: a 2-process run samples exactly what 1 process does. Completions are
decoded without special tokens for the reward functions; the ids keep the end-of-turn token, which is
trained (the model learns to stop). Sequences are right-padded into micro-batches of at most `size`;
token-level values (sampler log-probabilities, old/ref log-probabilities) sit at the target positions
(`per_token`), i.e. position p - 1 holds the value for the token at p. Every rank gets the same number
of micro-batches (`count`), padded with empty ones, because every FSDP2 forward is a collective.

Left out: multi-turn rollouts with tool calls, rollouts served by another engine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

import atlas.distributed as ad
from atlas.sampler import Sampler, SamplingParams, stream_seed
from atlas.train.data import MicroBatch, micro_batches, pad_micro_batches, prompt_messages


@dataclass
class Rollout:
    prompt_index: int  # the prompt's index in the step's global batch
    sample: int  # j of the prompt's n completions
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # the sampler's, under the full temperature-scaled distribution
    sampled_logprobs: list[float]  # under the (truncated) distribution actually sampled
    truncated: bool  # hit max_new_tokens without an end-of-turn token
    text: str  # decoded without special tokens

    @property
    def sequence(self) -> list[int]:
        return self.prompt_ids + self.completion_ids


def prompt_ids(tokenizer, example: Any) -> list[int]:
    return tokenizer.apply_chat_template(prompt_messages(example), add_generation_prompt=True, tokenize=True)


def sample_rollouts(model, tokenizer, batch: Sequence[Any], params: SamplingParams, seed: tuple[int, ...],
                    sampler: Sampler | None = None) -> list[Rollout]:
    """This rank's rollouts of the global `batch` (n = params.n per prompt), prompt-major."""
    mine = list(range(ad.rank(), len(batch), ad.world_size()))
    if not mine:
        raise ValueError(f"{len(batch)} prompts per step cannot feed {ad.world_size()} ranks: give every rank at "
                         "least one prompt (prompts_per_step >= world size)")
    ids = [prompt_ids(tokenizer, batch[i]) for i in mine]
    sampler = sampler or Sampler(model, tokenizer)
    outs = sampler.generate(ids, params, prompt_seeds=[stream_seed(*seed, i) for i in mine])
    texts = tokenizer.decode_batch([o.token_ids for o in outs], skip_special_tokens=True)
    return [Rollout(mine[o.prompt_index], j % params.n, ids[o.prompt_index], o.token_ids, o.logprobs,
                    o.sampled_logprobs, o.finish_reason == "length", text)
            for j, (o, text) in enumerate(zip(outs, texts))]


@dataclass
class RolloutBatch:
    micro: MicroBatch
    rows: list[int]  # indices into the rollout list; [] for an empty (padding) micro-batch

    def per_token(self, values: Sequence[Sequence[float]], rollouts: Sequence[Rollout],
                  device: torch.device | str) -> torch.Tensor:
        """values[r][j] (one per completion token of rollout r) placed at the target positions, [B, T] fp32."""
        out = torch.zeros(self.micro.targets_BT.shape, dtype=torch.float32)
        for b, r in enumerate(self.rows):
            start = len(rollouts[r].prompt_ids) - 1
            out[b, start:start + len(values[r])] = torch.tensor(values[r], dtype=torch.float32)
        return out.to(device)


def rollout_batches(rollouts: Sequence[Rollout], size: int, pad_id: int, device: torch.device | str,
                    count: int, masked: Sequence[bool] | None = None) -> list[RolloutBatch]:
    """`count` micro-batches of this rank's rollouts (prompt + completion, targets on the completion);
    rollouts with `masked[r]` get no target (e.g. truncated completions when those are masked)."""
    seqs = []
    for r, ro in enumerate(rollouts):
        keep = 0 if masked is not None and masked[r] else 1
        seqs.append((ro.sequence, [0] * len(ro.prompt_ids) + [keep] * len(ro.completion_ids)))
    micro = micro_batches(seqs, size, pack=False, pad_id=pad_id, device=device)
    rows = [list(range(s, min(s + size, len(rollouts)))) for s in range(0, len(rollouts), size)]
    padded = pad_micro_batches(micro, count, pad_id, device)
    return [RolloutBatch(mb, rows[i] if i < len(rows) else []) for i, mb in enumerate(padded)]


def micro_batch_count(sequences_per_rank_max: int, size: int) -> int:
    """Micro-batches every rank runs: enough for the rank with the most sequences."""
    return max(1, math.ceil(sequences_per_rank_max / size))
