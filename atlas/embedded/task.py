"""The embedded default task: two-digit addition asked in chat form, with one exact answer.

    user:       What is 47 + 38?          (or "Compute 47 + 38." / "Add 47 and 38.")
    assistant:  The answer is 85.

Every (a, b) with 10 <= a, b <= 99 is one question (8,100 in all). A stable hash of the pair puts 10% of
them in the held-out split, so no held-out question (in any phrasing) is ever trained on. The phrasing of
a question is a function of the pair too, so an example is the same wherever it is built. The reference
is the sum as digits; the task's reward is the rule reward atlas.reward.answer_match, which reads the
completion's marked final answer ("The answer is 85.") and pays 1.0 only when it equals the reference
exactly.

Why this task: it is verifiable exactly, fast to learn on a CPU (one token per digit), and learning it is a
sharp transition (measured when the task was chosen, on a 2-core CPU at lr 1e-3: held-out accuracy went
from 7% to 76% between ~300 and ~900 pre-training steps), so a
checkpoint taken inside the transition is "weak but not hopeless", where GRPO gets a signal.

Left out: carries as a separate skill, longer numbers, other operations.
"""

from __future__ import annotations

import hashlib

from atlas.data import Example

PHRASINGS = ("What is {a} + {b}?", "Compute {a} + {b}.", "Add {a} and {b}.")
EVAL_FRACTION = 0.1
LOW, HIGH = 10, 99


def _unit(a: int, b: int, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{a}:{b}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(a: int, b: int) -> str:
    return "eval" if _unit(a, b, "split") < EVAL_FRACTION else "train"


def question(a: int, b: int) -> str:
    return PHRASINGS[int(_unit(a, b, "phrasing") * len(PHRASINGS))].format(a=a, b=b)


def completion(a: int, b: int) -> str:
    return f"The answer is {a + b}."


def example(a: int, b: int) -> Example:
    return Example(prompt=[{"role": "user", "content": question(a, b)}], reference=str(a + b),
                   completion=completion(a, b), meta={"a": a, "b": b})


def examples(split: str) -> list[Example]:
    """Every question of a split ("train": 90%, "eval": 10%), in a fixed order."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return [example(a, b) for a in range(LOW, HIGH + 1) for b in range(LOW, HIGH + 1) if split_of(a, b) == split]
