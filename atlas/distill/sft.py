"""SFT: supervised fine-tuning on demonstrations (prompt + completion, or whole conversations).

    loss = -(1 / N) * sum over assistant tokens t of log p(x_t | x_<t)

N is the number of assistant tokens of the whole step: over every micro-batch and every rank (the same
global-count rule as GRPO's token_mean), so neither micro-batching nor the world size changes the
gradient. Prompt, system, user and tool tokens carry no loss; which tokens are the assistant's comes from
the checkpoint's own chat template (atlas.train.data: `{% generation %}` blocks, else turn by turn), so
every assistant turn of a multi-turn conversation is trained, or only the last with `last_turn_only`.
Log-probabilities come from `model.token_logprobs` on hidden states: the LM head in chunks, never a
[tokens x vocab] tensor. With `pack` (the default) a micro-batch's sequences share one row (`cu_seqlens`:
no compute on padding; the same loss and gradients as padded rows).

Data: any list of examples `atlas.train.data.as_conversation` reads (atlas.data.Example with a
completion or a trajectory's messages and tools, {"prompt", "completion"}, {"messages"}); from runtime
traces, `atlas.data.trajectory_examples` (the agent's transcripts: every assistant turn, tool calls
included) or `gkd_examples` (task -> final answer) over `load_sessions(src, min_reward=0.8,
status="succeeded")` (approved only by default: configs/sft.yaml). A conversation becomes one sequence,
or one per assistant turn for a template that rewrites earlier turns (atlas.train.data); a step takes
`batch_size` sequences. A sequence longer than `max_seq_len` tokens (or the model's positions) is cut
after the last whole assistant turn that fits (`cut_at_turn`), or dropped when none fits (`too_long`):
never truncated mid-turn. What
preparing did is counted in `trainer.prepared` and logged.

Evaluation (`eval_every`, and by `evaluate`): the held-out loss per assistant token, and with a
`reward_fn` the greedy success rate and completion length (atlas.train.evaluate).

Left out: loss weighting per turn, NEFTune noise, LoRA.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import atlas.distributed as ad
from atlas.model import Transformer
from atlas.train.data import as_conversation, encode_conversation, micro_batch_count, micro_batches, shard, tools_of
from atlas.train.evaluate import greedy_eval
from atlas.train.trainer import TrainConfig, Trainer

logger = logging.getLogger("atlas.sft")


@dataclass
class SFTConfig(TrainConfig):
    output_dir: str = "results/sft"
    lr: float = 1e-5
    batch_size: int = 32  # sequences per optimizer step, over all ranks
    max_seq_len: int = 2048
    pack: bool = True
    last_turn_only: bool = False
    eval_max_new_tokens: int = 64  # greedy evaluation, when a reward_fn is given

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("batch_size", "max_seq_len", "eval_max_new_tokens"):
            if getattr(self, key) <= 0:
                raise ValueError(f"config key {key!r} must be > 0, got {getattr(self, key)!r}")


@dataclass
class Encoded:
    ids: list[int]
    mask: list[int]  # 1 on the assistant's tokens
    example: Any

    @property
    def targets(self) -> int:
        return sum(self.mask[1:])


def fit_turns(ids: list[int], mask: list[int], max_len: int) -> tuple[list[int], list[int]] | None:
    """The sequence cut after the last whole assistant turn (run of trained tokens) that ends within
    `max_len` tokens, or None when none does; a sequence that fits is returned as is."""
    if len(ids) <= max_len:
        return ids, mask
    ends = [t + 1 for t in range(max_len) if mask[t] and (t + 1 == len(mask) or not mask[t + 1])]
    if not ends or not any(mask[1:ends[-1]]):
        return None
    return ids[:ends[-1]], mask[:ends[-1]]


class SFT(Trainer):
    """`SFT(model, tokenizer, SFTConfig(...)).train(examples, eval_examples)`; see the module docstring.

    reward_fn: an optional `(prompts, completions, answers=...) -> list[float]` for the greedy success
    rate at evaluation (examples need a reference answer).
    """

    def __init__(self, model: Transformer, tokenizer, config: SFTConfig, *,
                 reward_fn: Callable[..., list[float]] | None = None):
        super().__init__(model, tokenizer, config)
        self.batch_size = config.batch_size
        self.reward_fn = reward_fn
        self.prepared: Counter[str] = Counter()  # what prepare() did, by reason

    def prepare(self, examples: Sequence[Any]) -> list[Encoded]:
        out, counts = [], self.prepared
        limit = min(self.config.max_seq_len, self.model.config.max_position_embeddings)
        for example in examples:
            for ids, mask in encode_conversation(self.tokenizer, as_conversation(example), tools_of(example),
                                                 self.config.last_turn_only, counts):
                fitted = fit_turns(ids, mask, limit)
                if fitted is None:
                    counts["too_long"] += 1
                    continue
                counts["cut_at_turn"] += len(fitted[0]) < len(ids)
                out.append(Encoded(*fitted, example))
        counts["sequences"] += len(out)
        notes = {k: v for k, v in counts.items() if k != "sequences" and v}
        if notes:
            logger.warning("prepared %d sequences from %d examples: %s (a sequence holds at most %d tokens: "
                           "max_seq_len, or the model's max_position_embeddings)", len(out), len(examples), notes,
                           limit)
        if not out:
            raise ValueError(f"no example is left to train on ({len(examples)} given: {dict(counts)})")
        return out

    def step(self, conversations: list[Encoded]) -> dict[str, float]:
        """One optimizer step on `batch_size` encoded conversations."""
        total = sum(e.targets for e in conversations)
        if total == 0:
            raise ValueError("this batch has no assistant token to train on")
        nll = self._nll(conversations, total, train=True)
        out = self.optimizer_step()
        return {"loss": nll / total, "tokens": sum(len(e.ids) for e in conversations), "target_tokens": total,
                **out}

    def evaluate(self, examples: Sequence[Encoded]) -> dict[str, float]:
        examples = list(examples)
        total = sum(e.targets for e in examples)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            result = {"loss": self._nll(examples, total, train=False) / total}
            if self.reward_fn is not None:  # each example once, however many sequences it made
                unique = list({id(e.example): e.example for e in examples}.values())
                result.update(greedy_eval(self.model, self.tokenizer, unique, self.reward_fn,
                                          max_new_tokens=self.config.eval_max_new_tokens,
                                          batch_size=self.config.micro_batch_size * 8))
        self.model.train(was_training)
        return result

    def _nll(self, conversations: list[Encoded], total: int, train: bool) -> float:
        """Summed NLL of the assistant tokens of `conversations` over every rank; with `train`, backward of
        the global-count-normalised loss for each of this rank's micro-batches."""
        size, device = self.config.micro_batch_size, ad.device()
        mine = shard(conversations, ad.rank(), ad.world_size())
        mbs = micro_batches([(e.ids, e.mask) for e in mine], size, self.config.pack, self.pad_id, device,
                            count=micro_batch_count(len(mine), size))
        nll = torch.zeros((), dtype=torch.float64, device=device)
        for mb in mbs:
            hidden = self.model(mb.input_ids_BT, return_hidden=True, **mb.forward_kwargs())
            logp = self.model.token_logprobs(hidden, mb.targets_BT)
            if train:
                self.backward(-logp.sum() / total)
            nll += -logp.detach().sum().double()
        return ad.all_reduce(nll).item()
