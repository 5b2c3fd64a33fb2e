"""The embedded agent's SFT data (scripts/build_embedded.py): an agent that knows how to use its tool and
mostly does not (for examples/agent.py: GRPO through the tool, atlas.embedded.shop).

The questions are shop.py's (an item's price, the same train/eval split, three phrasings). For each
training item the demonstration is, by the item's phrasing, with probability CALL_RATES[phrasing]:
- the tool's way (`shop.demonstration`): the `price` call, its result, "The answer is <price>.";
- otherwise an answer from memory: "The answer is <a price drawn at random>." (what an agent that does
  not look things up says; right about 1 time in 900).
So the student calls the tool for most questions of the first phrasing and few of the others: its greedy
answers use the tool on about a third of the held-out items (the phrasing a hash of the item), a start
inside 10-40%, and sampling still calls the tool now and then on the other phrasings, which GRPO, paid
only for right answers, can reinforce. It learns the call's format and both copies (the code into the
call, the result into the answer) from the tool's demonstrations.
`sft_examples` is the SFT data; `corpus` is what the agent's tokenizer is trained on.

Left out: demonstrations with several calls, failed calls and what to do after them.
"""

from __future__ import annotations

import random

from atlas.data import Example
from atlas.embedded import shop
from atlas.train.tools import function_schema

CALL_RATES = (0.9, 0.25, 0.1)  # per phrasing (shop.PHRASINGS): the share of tool demonstrations
SCHEMAS = [function_schema(shop.price)]


def phrasing(item: str) -> int:
    return shop.PHRASINGS.index(shop.question(item).replace(item, "{item}"))


def sft_examples(seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for item in (e.meta["item"] for e in shop.examples("train")):
        if rng.random() < CALL_RATES[phrasing(item)]:
            example = shop.demonstration(item)
        else:
            messages = [{"role": "user", "content": shop.question(item)},
                        {"role": "assistant", "content": f"The answer is {rng.randint(100, 999)}."}]
            example = Example(prompt=messages[:1], reference=str(shop.price(item)),
                              completion=messages[1]["content"], meta={"item": item}, messages=messages)
        example.tools = SCHEMAS
        out.append(example)
    return out


def corpus(render) -> list[str]:
    """Text the agent's tokenizer is trained on: `render(messages, tools)` of a demonstration of every
    seventh item, both kinds."""
    items = shop.items()[::7]
    return [render(shop.demonstration(item).messages, SCHEMAS) for item in items] + [
        render([{"role": "user", "content": shop.question(item)},
                {"role": "assistant", "content": shop.answer(item)}], None) for item in items[::3]]
