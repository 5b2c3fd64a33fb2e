"""Rollouts: completions sampled from a step's prompts on the trainer's own model, and the micro-batches the
trainer scores them in (GRPO's; GKD samples here too, one completion per prompt, and lays its sequences
out with atlas.train.data.micro_batches).

    batch = sample_rollouts(model, tokenizer, examples, params, seed=(config.seed, step))  # RolloutBatch
    batch.prompts, batch.completions, batch.columns          # the reward functions' arguments, built once
    for mb in rollout_micro_batches(batch.rollouts, size, pad_id, device, count):
        logp_M = model.token_logprobs(mb.hidden(model), mb.targets_M)   # one per trained completion token

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

Micro-batches: at most `size` rollouts each, packed into one row without padding, each prompt once: the
rollouts of a micro-batch that share their prompt (a GRPO group; an agent's trajectories whose prompts
are equal token for token, not merely alike) are laid out as the prompt, then each completion after it,
with the prompt as the completions' parent (atlas.model.attention's packed regime with `parents`). Each
completion attends to its prompt and to itself at the positions it had when sampled, so every hidden
state equals the one of prompt + completion as one sequence, and the prompt's forward (and, in backward,
the gradient into it, summed over its completions) is computed once instead of G times: the tokens a
pass processes fall from G (|p| + |c|) to |p| + G |c|. Prompts are shared whole; two prompts that differ
after a common prefix are not (their shared part is not found).
The trained tokens are the completion tokens the model sampled (`Rollout.mask`: not an agent's appended
tool turns), M of them: `targets_M`, with `predict_M` the row positions whose hidden states predict them
(a completion's first token is predicted by its prompt's last position, shared by the group), `seq_M`
their rollout's place in `rows`, `valid_M` whether they are trained (not a masked truncated rollout).
The sampler's per-token log-probabilities (of the full and of the sampled distribution) are laid out on
the targets once, as tensors; a trainer's own (old and reference log-probabilities) the same way
(`place` / `take`). Every rank gets `count` micro-batches (empty ones pad), because every FSDP2 forward
is a collective.

Left out: rollouts served by another engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

import atlas.distributed as ad
from atlas.sampler import Sampler, SamplingParams, stream_seed
from atlas.train.data import prompt_ids, reward_inputs


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
    """Rollouts packed into one row, each prompt once (see the module docstring), and their targets."""

    ids_1N: torch.Tensor  # the packed row
    cu_seqlens: torch.Tensor  # [S + 1] int32: prompts and completions
    parents: torch.Tensor  # [S]: a completion's prompt, -1 for a prompt
    rows: list[int]  # indices into the rollout list; [] for an empty (padding) micro-batch
    predict_M: torch.Tensor  # the row position whose hidden state predicts each target
    targets_M: torch.Tensor
    seq_M: torch.Tensor  # each target's rollout, as its place in `rows`
    valid_M: torch.Tensor  # bool: the target is trained
    where: list[list[int]]  # per row, the completion tokens that are targets (their index in the completion)
    logprobs_M: torch.Tensor = field(default=None)  # the sampler's, full distribution, fp32
    sampled_logprobs_M: torch.Tensor = field(default=None)  # under the distribution sampled (truncation)

    def forward_kwargs(self) -> dict[str, torch.Tensor]:
        return {"cu_seqlens": self.cu_seqlens, "parents": self.parents}

    def hidden(self, model) -> torch.Tensor:
        """The final hidden states [M, H] that predict the targets: one forward of the packed row."""
        hidden = model(self.ids_1N, return_hidden=True, **self.forward_kwargs())
        return hidden[0].index_select(0, self.predict_M)

    def place(self, values: Sequence[Sequence[float]]) -> torch.Tensor:
        """values[r][j] (one per completion token of rollout r) on the targets, [M] fp32."""
        flat = [values[r][j] for r, where in zip(self.rows, self.where) for j in where]
        return torch.tensor(flat, dtype=torch.float32).to(self.targets_M.device)

    def take(self, values_M: torch.Tensor, rollouts: Sequence[Rollout]) -> dict[int, list[float]]:
        """The inverse of `place`: {rollout index: one value per completion token, 0 off the targets}."""
        flat, out, m = values_M.cpu().tolist(), {}, 0
        for r, where in zip(self.rows, self.where):
            out[r] = [0.0] * len(rollouts[r].completion_ids)
            for j in where:
                out[r][j], m = flat[m], m + 1
        return out


def rollout_micro_batches(rollouts: Sequence[Rollout], size: int, pad_id: int, device: torch.device | str,
                          count: int, masked: Sequence[bool] | None = None,
                          rows: Sequence[int] | None = None) -> list[RolloutMicroBatch]:
    """`count` micro-batches of this rank's rollouts (of those at `rows`, default all: at most `size` each,
    in order, then empty ones); rollouts with `masked[r]` have targets but none trained (truncated
    completions when those are masked)."""
    rows = list(range(len(rollouts))) if rows is None else list(rows)
    chunks = [rows[s:s + size] for s in range(0, len(rows), size)]
    out = [_packed(rollouts, chunk, masked, device) for chunk in chunks]
    empty = [_packed(rollouts, [], masked, device, pad_id) for _ in range(count - len(out))]
    for mb in out + empty:
        mb.logprobs_M = mb.place([r.logprobs for r in rollouts])
        mb.sampled_logprobs_M = mb.place([r.sampled_logprobs for r in rollouts])
    return out + empty


def prompt_groups(rollouts: Sequence[Rollout], rows: list[int]) -> list[list[int]]:
    """The places in `rows` of the rollouts that share one prompt computation: equal prompt ids."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, r in enumerate(rows):
        groups.setdefault(tuple(rollouts[r].prompt_ids), []).append(b)
    return list(groups.values())


def _packed(rollouts: Sequence[Rollout], rows: list[int], masked: Sequence[bool] | None, device,
            pad_id: int = 0) -> RolloutMicroBatch:
    ids, lengths, parents, predict, targets, seq, valid = [], [], [], [], [], [], []
    where: list[list[int]] = [[] for _ in rows]
    for members in prompt_groups(rollouts, rows):
        prompt = rollouts[rows[members[0]]].prompt_ids
        if not prompt:
            raise ValueError(f"rollout {rows[members[0]]} has an empty prompt: nothing predicts its first token")
        parent, last = len(lengths), len(ids) + len(prompt) - 1
        ids += prompt
        lengths.append(len(prompt))
        parents.append(-1)
        for b in members:
            rollout = rollouts[rows[b]]
            if not rollout.completion_ids:  # no token to score: no sequence
                continue
            start = len(ids)
            ids += rollout.completion_ids
            lengths.append(len(rollout.completion_ids))
            parents.append(parent)
            trained = not (masked is not None and masked[rows[b]])
            for j, token in enumerate(rollout.completion_ids):
                if rollout.mask is None or rollout.mask[j]:
                    predict.append(last if j == 0 else start + j - 1)
                    targets.append(token)
                    seq.append(b)
                    valid.append(trained)
                    where[b].append(j)
    # the targets in the rows' order (place / take walk rows in order)
    order = sorted(range(len(targets)), key=lambda m: seq[m])
    if not rows:  # an empty micro-batch: one pad token, no target (every rank still runs a forward)
        ids, lengths, parents = [pad_id], [1], [-1]

    def tensor(values, dtype=torch.long):
        return torch.tensor(values, dtype=dtype, device=device)

    return RolloutMicroBatch(
        tensor([ids]), tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], torch.int32), tensor(parents), rows,
        tensor([predict[m] for m in order]), tensor([targets[m] for m in order]), tensor([seq[m] for m in order]),
        tensor([valid[m] for m in order], torch.bool), where)
