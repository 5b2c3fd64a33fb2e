"""Training data as the trainers consume it: conversations to token ids with the assistant's tokens marked,
the global order of examples, and micro-batches (padded or packed).

Which tokens are the assistant's is decided by the checkpoint's own chat template, with the conversation's
tool schemas (`tools=`) when it has them. Every assistant turn is trained (tool calls included; user,
tool and system turns are context), or only the last with `last_turn_only`. For each assistant turn k,
P_k is the rendering of the turns before it with the generation prompt (the context the model wrote the
turn in) and U_k the rendering through turn k:
- when every P_k is a prefix of U_k and every U_k a prefix of the whole rendering, the conversation is
  one sequence: the template's `{% generation %}` blocks mark the assistant's tokens (transformers'
  return_assistant_tokens_mask; atlas.model.Tokenizer computes the same mask), or, without blocks, the
  characters U_k[len(P_k):] up to and including the last end-of-turn token in them
  (`tokenizer.stop_token_ids`: the eos or the template's end of turn), so the model learns to stop where
  the sampler stops, and the separator after the turn is not trained;
- a template that rewrites earlier turns (Qwen3 drops earlier turns' reasoning and thinks anew in the
  last) breaks that: each turn is then its own sequence, U_k with turn k marked, the turn in exactly the
  context the template gave it when it was the last (counted as `per_turn`).
A text is tokenized once and a token counts when its characters overlap an assistant span, so token
boundaries are the rendering's, exactly what the model sees. Reasoning (`reasoning_content`) goes to the
key the template renders it from (`Tokenizer.reasoning_key`), or is dropped and counted
(`reasoning_dropped`) when it renders none; tool calls need a template that renders them.

Order: `DataOrder` draws a permutation of the examples per epoch from (seed, epoch), the same on every
rank; a step takes the next `batch_size` indices (crossing epoch ends) and each rank then takes its share
(`shard`), so the world size never changes which examples a step trains on. Its state (epoch, position)
is part of the resume state.

Micro-batches: `micro_batches` turns a rank's sequences into batches of at most `size` sequences, right-
padded ([B, T] with an attention mask) or packed into one row with `cu_seqlens` (positions restart per
sequence and attention never crosses a boundary, so the loss is the unpacked one, with no compute spent
on padding). Targets are next tokens at assistant positions, -100 elsewhere. Under FSDP2 every rank must
run the same number of forward/backward passes: `micro_batch_count` (the one place every trainer asks)
says how many the rank with the most sequences needs, and `micro_batches` adds empty ones (no target)
up to that count.

Left out: dynamic batching by token budget, multimodal content, tool-call schemas in messages.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

import atlas.distributed as ad
from atlas.model.tokenizer import Tokenizer, has_generation_blocks

IGNORE = -100


def as_conversation(example: Any) -> list[dict[str, Any]]:
    """Chat messages of an example: an atlas.data.Example (its trajectory's messages, or prompt +
    completion), or a dict with "messages", or with "prompt" (a string or messages) and "completion"."""
    if getattr(example, "messages", None) is not None:  # a trajectory: the whole conversation
        return list(example.messages)
    if hasattr(example, "prompt") and hasattr(example, "completion"):
        if example.completion is None:
            raise ValueError("this Example has no completion (GRPO examples do not) and so nothing to learn from: "
                             "SFT needs prompt + completion; build examples with atlas.data.gkd_examples or pass "
                             "conversations")
        return [*example.prompt, {"role": "assistant", "content": example.completion}]
    if isinstance(example, dict) and "messages" in example:
        messages = example["messages"]
    elif isinstance(example, dict) and "prompt" in example and "completion" in example:
        prompt = example["prompt"]
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        messages = [*prompt, {"role": "assistant", "content": example["completion"]}]
    else:
        raise ValueError(f"an example must be an atlas.data.Example, a dict with 'messages', or a dict with "
                         f"'prompt' and 'completion'; got {str(example)[:120]!r}")
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ValueError(f"messages must be a list of {{'role', 'content'}} dicts, got {str(messages)[:120]!r}")
    return messages


def prompt_messages(example: Any) -> list[dict[str, Any]]:
    """The prompt of an example as chat messages: Example.prompt, or a dict's "prompt" (a string is one
    user message), or a dict's "messages" without the final assistant turn."""
    if hasattr(example, "prompt"):
        return list(example.prompt)
    if isinstance(example, dict) and "prompt" in example:
        prompt = example["prompt"]
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if isinstance(example, dict) and "messages" in example:
        messages = list(example["messages"])
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        if messages:
            return messages
    raise ValueError(f"an example needs a prompt (an atlas.data.Example, or a dict with 'prompt' or 'messages'); "
                     f"got {str(example)[:120]!r}")


def turn_prompts(example: Any) -> list[Any]:
    """A trajectory (an Example with `messages`) as one prompt per assistant turn: the recorded
    conversation before the turn, with the example's tools; any other example as itself."""
    messages = getattr(example, "messages", None)
    if messages is None:
        return [example]
    return [{"prompt": messages[:k], "tools": example.tools} for k, m in enumerate(messages)
            if m["role"] == "assistant"]


def tools_of(example: Any) -> list[dict[str, Any]] | None:
    """The tool schemas an example's template renders: Example.tools, or a dict's "tools"."""
    return example.get("tools") if isinstance(example, dict) else getattr(example, "tools", None)


def prompt_ids(tokenizer: Tokenizer, example: Any) -> list[int]:
    """The ids a model is prompted with for an example: its prompt messages (and tool schemas) through the
    chat template, the generation prompt added (what sampling, evaluation and the log-probabilities after
    it all use)."""
    return tokenizer.apply_chat_template(prompt_messages(example), add_generation_prompt=True, tokenize=True,
                                         tools=tools_of(example))


def reference_of(example: Any) -> str | None:
    """The reference answer of an example: Example.reference, or a dict's "reference" / "answer"."""
    if hasattr(example, "reference"):
        return example.reference
    if isinstance(example, dict):
        return example.get("reference", example.get("answer"))
    return None


def reward_inputs(examples: Sequence[Any]) -> tuple[list[Any], dict[str, list[Any]]]:
    """The reward functions' `(prompts, **columns)` for one entry per completion, at training and at
    evaluation alike (a prompt-sensitive judge must score the same completion the same way in both): each
    prompt as the example gives it (a dict's "prompt", a string or chat messages; an Example's messages);
    an Example's reference as `answers` (the rule rewards' keyword); a dict's other keys under their own
    names (TRL's convention: a dataset column reaches the reward function by its name)."""
    prompts = [example["prompt"] if isinstance(example, dict) and "prompt" in example else prompt_messages(example)
               for example in examples]
    if examples and isinstance(examples[0], dict):
        keys = [k for k in examples[0] if k != "prompt"]
        return prompts, {k: [e.get(k) for e in examples] for k in keys}
    references = [reference_of(e) for e in examples]
    return prompts, {"answers": references} if any(r is not None for r in references) else {}


def encode_conversation(tokenizer: Tokenizer, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                        last_turn_only: bool = False, counts: Counter[str] | None = None,
                        ) -> list[tuple[list[int], list[int]]]:
    """The sequences that train a conversation's assistant turns, each (token ids, 0/1 mask of the trained
    tokens): one, or one per turn for a template that rewrites earlier turns; see the module docstring.
    `counts` (optional) is told what was adapted: per_turn, reasoning_dropped."""
    messages = _for_template(tokenizer, messages, counts)
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise ValueError("a training conversation needs at least one assistant turn")
    if turns[0] == 0:
        raise ValueError("a conversation cannot open with an assistant turn: there is no prompt to condition on")

    def render(upto: int, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages[:upto], add_generation_prompt=generation_prompt, tools=tools)

    full = render(len(messages), False)
    context = {k: render(k, True) for k in turns}
    through = {k: render(k + 1, False) for k in turns}
    for k in turns:
        if not through[k].startswith(context[k]):
            raise ValueError(f"the chat template renders assistant turn {k} so that it does not continue the "
                             "context it was generated in (with the generation prompt): no span of it can be "
                             "told the assistant's; use a template whose turns follow their generation prompt")
    trained = turns[-1:] if last_turn_only else turns
    blocks = has_generation_blocks(tokenizer.chat_template)
    closers = [tokenizer.decode([i]) for i in tokenizer.stop_token_ids]
    if all(full.startswith(through[k]) for k in turns):
        if blocks:
            out = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tools=tools,
                                                return_assistant_tokens_mask=True)
            ids, mask = out["input_ids"], out["assistant_masks"]
            mask = _last_run(mask) if last_turn_only else mask
        else:
            ids, mask = tokenizer.encode_with_spans(full, [(len(context[k]), _turn_end(through[k], len(context[k]),
                                                                                   closers)) for k in trained])
        if not any(mask):
            raise ValueError("the chat template marked no token of this conversation as the assistant's")
        return [(ids, mask)]
    if counts is not None:
        counts["per_turn"] += 1
    out = []
    for k in trained:
        if blocks:
            enc = tokenizer.apply_chat_template(messages[:k + 1], add_generation_prompt=False, tools=tools,
                                                return_assistant_tokens_mask=True)
            out.append((enc["input_ids"], _last_run(enc["assistant_masks"])))
        else:
            out.append(tokenizer.encode_with_spans(through[k], [(len(context[k]), _turn_end(
                through[k], len(context[k]), closers))]))
    return out


def _for_template(tokenizer: Tokenizer, messages: list[dict[str, Any]],
                  counts: Counter[str] | None) -> list[dict[str, Any]]:
    """The messages as the template reads them: reasoning under the template's key or dropped (counted);
    tool calls only for a template that renders them."""
    if any("tool_calls" in m for m in messages) and not tokenizer.renders_tool_calls:
        raise ValueError("this conversation has tool calls but the chat template does not render them (training "
                         "on it would teach the turns without their calls): choose a template that renders "
                         "tool_calls (chat_template=...)")
    if not any("reasoning_content" in m for m in messages):
        return messages
    key = tokenizer.reasoning_key
    out = []
    for m in messages:
        if "reasoning_content" in m and key != "reasoning_content":
            m = {k: v for k, v in m.items() if k != "reasoning_content"}
            if key is None:
                if counts is not None:
                    counts["reasoning_dropped"] += 1
            else:
                m[key] = messages[len(out)]["reasoning_content"]
        out.append(m)
    return out


def _turn_end(text: str, start: int, closers: list[str]) -> int:
    """End of an assistant turn rendered at text[start:]: after its last end-of-turn token, else the text
    without trailing whitespace."""
    ends = [at + len(c) for c in closers if c and (at := text.rfind(c, start)) >= 0]
    return max(ends) if ends else len(text.rstrip())


def _last_run(mask: list[int]) -> list[int]:
    """Only the last contiguous run of 1s (the final assistant turn)."""
    out = [0] * len(mask)
    i = len(mask) - 1
    while i >= 0 and not mask[i]:
        i -= 1
    while i >= 0 and mask[i]:
        out[i] = 1
        i -= 1
    return out


class DataOrder:
    """The global order of examples: a seeded permutation per epoch; see the module docstring."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("there are no training examples")
        self.n, self.seed = n, seed
        self.epoch, self.pos = 0, 0
        self._perm: tuple[int, list[int]] | None = None

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            perm = self._permutation()
            take = min(k - len(out), self.n - self.pos)
            out += perm[self.pos:self.pos + take]
            self.pos += take
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def _permutation(self) -> list[int]:
        if self._perm is None or self._perm[0] != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = (self.epoch, torch.randperm(self.n, generator=g).tolist())
        return self._perm[1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "n": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["n"] != self.n:
            raise ValueError(f"the resume state was saved with {state['n']} training examples, this run has "
                             f"{self.n}: resume needs the same data")
        self.epoch, self.pos = state["epoch"], state["pos"]


def shard(items: Sequence[Any], rank: int, world: int) -> list[Any]:
    """This rank's share of a global batch (rank-strided)."""
    return list(items[rank::world])


@dataclass
class MicroBatch:
    input_ids_BT: torch.Tensor
    targets_BT: torch.Tensor
    attention_mask_BT: torch.Tensor | None  # padded batches
    cu_seqlens: torch.Tensor | None  # packed batches (B = 1)

    def forward_kwargs(self) -> dict[str, torch.Tensor]:
        if self.cu_seqlens is not None:
            return {"cu_seqlens": self.cu_seqlens}
        return {"attention_mask_BT": self.attention_mask_BT} if self.attention_mask_BT is not None else {}


def targets_of(ids: list[int], mask: list[int]) -> list[int]:
    """Next-token targets at the positions whose next token is the assistant's; IGNORE elsewhere."""
    return [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


def micro_batch_count(local: int, size: int) -> int:
    """Micro-batches every rank runs when this rank has `local` sequences: enough for the rank with the most
    (every rank must call it: a max over ranks)."""
    most = ad.all_reduce(torch.tensor([local], device=ad.device()), "max").item()
    return max(1, math.ceil(most / size))


def micro_batches(sequences: Sequence[tuple[list[int], list[int]]], size: int, pack: bool, pad_id: int,
                  device: torch.device | str = "cpu", count: int = 0) -> list[MicroBatch]:
    """Micro-batches of at most `size` (ids, assistant mask) sequences, in order, then empty ones (one pad
    token, no target) up to `count`; see the module docstring."""
    out = []
    for s in range(0, len(sequences), size):
        group = sequences[s:s + size]
        if pack:
            ids = [t for ids, _ in group for t in ids]
            targets = [t for ids, mask in group for t in targets_of(ids, mask)]
            bounds = [0]
            for ids_, _ in group:
                bounds.append(bounds[-1] + len(ids_))
            out.append(MicroBatch(torch.tensor([ids], device=device), torch.tensor([targets], device=device), None,
                                  torch.tensor(bounds, dtype=torch.int32, device=device)))
            continue
        T = max(len(ids) for ids, _ in group)
        ids_BT = torch.full((len(group), T), pad_id, dtype=torch.long)
        targets_BT = torch.full((len(group), T), IGNORE, dtype=torch.long)
        mask_BT = torch.zeros((len(group), T), dtype=torch.long)
        for b, (ids, mask) in enumerate(group):
            ids_BT[b, :len(ids)] = torch.tensor(ids)
            targets_BT[b, :len(ids)] = torch.tensor(targets_of(ids, mask))
            mask_BT[b, :len(ids)] = 1
        padded = not bool(mask_BT.all())
        out.append(MicroBatch(ids_BT.to(device), targets_BT.to(device), mask_BT.to(device) if padded else None, None))
    empty = MicroBatch(torch.full((1, 1), pad_id, device=device), torch.full((1, 1), IGNORE, device=device), None,
                       None)
    return out + [empty] * (count - len(out))
