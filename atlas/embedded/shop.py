"""The embedded agent task: a shop's prices, which only its tool knows.

    user:       How much is item KQW?
    assistant:  <tool_call>{"name": "price", "arguments": {"item": "KQW"}}</tool_call>
    tool:       417
    assistant:  The answer is 417.

Every three-letter code is an item (17,576 in all); its price is a keyed hash of the code, 100-999. A
stable hash of the code puts 10% of the items in the held-out split. The reference is the price; the
reward is the rule reward atlas.reward.answer_match on the final answer.

Why this task: nothing about a price can be learnt from its code (a hash is as good as a fresh draw
for every item), so a policy that never calls the tool is at chance: the best it can do is guess the
likeliest price, right for about 1 item in 900 (`no_tool_ceiling` measures that guess on the held-out
split). With the tool the task is two copies: the item's code into the call, the tool's answer into the
reply. A tiny model learns the call's format quickly and the copying slowly (the letters and digits are
single tokens), so a checkpoint taken early in that transition calls its tool and is often wrong about
what it read: where GRPO gets a signal, and where it can only get the reward through the tool.

Two forms of the same tool, as GRPO takes them: `price` (a function: `tools=[price]`) and `Shop` (a
TRL-style environment: `environment_factory=Shop`, its `price` method; `reset` keeps the example's fields).
Both give the same prices, so the same trajectories and the same rewards; `Shop` has no `get_reward`
(the rule reward is the task's).

Left out: items with several attributes, tools that must be combined, prices that change.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from atlas.data import Example

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PHRASINGS = ("How much is item {item}?", "What does item {item} cost?", "Price of item {item}?")
EVAL_FRACTION = 0.1


def _unit(item: str, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{item}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def price(item: str) -> int:
    """Look up the price of an item in the shop's catalogue.

    Args:
        item: The item's three-letter code.
    """
    code = item.strip().upper()
    if len(code) != 3 or any(c not in LETTERS for c in code):
        raise ValueError(f"no item {item!r}: an item is a three-letter code")
    return 100 + int(_unit(code, "price") * 900)


class Shop:
    """The task as a TRL-style environment: one instance per trajectory, `reset` with the example's fields."""

    def reset(self, **fields) -> None:
        self.fields = fields  # the prompt and the reference (TRL passes every column)
        self.looked_up: list[str] = []

    def price(self, item: str) -> int:
        """Look up the price of an item in the shop's catalogue.

        Args:
            item: The item's three-letter code.
        """
        self.looked_up.append(item)
        return price(item)


def items() -> list[str]:
    return [a + b + c for a in LETTERS for b in LETTERS for c in LETTERS]


def split_of(item: str) -> str:
    return "eval" if _unit(item, "split") < EVAL_FRACTION else "train"


def question(item: str) -> str:
    return PHRASINGS[int(_unit(item, "phrasing") * len(PHRASINGS))].format(item=item)


def answer(item: str) -> str:
    return f"The answer is {price(item)}."


def example(item: str) -> Example:
    return Example(prompt=[{"role": "user", "content": question(item)}], reference=str(price(item)),
                   completion=answer(item), meta={"item": item})


def examples(split: str) -> list[Example]:
    """Every item of a split ("train": 90%, "eval": 10%), in a fixed order."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return [example(item) for item in items() if split_of(item) == split]


def demonstration(item: str) -> Example:
    """An example with the whole trajectory the agent is taught: the call, the tool's result, the answer."""
    call = {"type": "function", "function": {"name": "price", "arguments": {"item": item}}}
    messages = [{"role": "user", "content": question(item)}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "name": "price", "content": str(price(item))},
                {"role": "assistant", "content": answer(item)}]
    return Example(prompt=messages[:1], reference=str(price(item)), completion=answer(item), meta={"item": item},
                   messages=messages)


def no_tool_ceiling(split: str = "eval") -> float:
    """The held-out success of the best policy without the tool: always answering the split's likeliest
    price (an upper bound: no policy that sees only the code can know which price that is)."""
    prices = Counter(price(e.meta["item"]) for e in examples(split))
    return prices.most_common(1)[0][1] / sum(prices.values())
