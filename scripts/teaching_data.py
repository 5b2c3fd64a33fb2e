"""The embedded teaching task's SFT data (scripts/build_embedded.py): a student that adds better with the
right hint, and a teacher that must learn which hint to give (for examples/teacher.py and the teaching
recipe, atlas.rl.teacher).

The questions are task.py's (two-digit addition, the same train/eval split). The prompts are the teaching
recipe's default templates (TeacherConfig), so the embedded models speak the recipe's own format:
- the student was trained (SFT) on the plain question -> "The answer is N.", on the diagnostic prompt ->
  DIAGNOSTIC (its approach, one sentence), and on the taught prompt with either hint style -> the answer;
  it stopped inside the learning transition, so alone it is weak, and with the useful hint it is better;
- the useful hint is a correct partial result, the sum of the ones digits ("7 + 8 = 15": it settles the
  carry, and is not the answer); the useless one is encouragement (USELESS);
- the teacher was trained on the teacher prompt -> "<thinking>..</thinking><teaching>..</teaching>" with
  the useful hint in USEFUL_SHARE of its examples and the useless one otherwise: it writes well-formed
  teaching but mostly the wrong kind, and GRPO on the student's improvement must move it to the useful
  kind (and keep its partial sums right).
`student_examples` / `teacher_examples` are the SFT data; `corpus` is what their tokenizer is trained on.

Left out: hints of other kinds (the tens digits, an estimate), several-sentence diagnostics.
"""

from __future__ import annotations

import hashlib

from atlas.embedded import task
from atlas.rl.teacher import DIAGNOSTIC_PROMPT, TAUGHT_PROMPT, TEACHER_PROMPT

DIAGNOSTIC = "I add the tens, then the ones, and carry if needed."
USELESS = "Add the numbers carefully."
USEFUL_SHARE = 0.3
THINK_USEFUL = "The ones digits decide the carry."
THINK_USELESS = "Encourage the student."


def useful_hint(a: int, b: int) -> str:
    return f"{a % 10} + {b % 10} = {a % 10 + b % 10}"


def teaching(a: int, b: int, useful: bool) -> str:
    thought, hint = (THINK_USEFUL, useful_hint(a, b)) if useful else (THINK_USELESS, USELESS)
    return f"<thinking>{thought}</thinking><teaching>{hint}</teaching>"


def _coin(a: int, b: int, salt: str) -> float:
    return int.from_bytes(hashlib.sha256(f"{salt}:{a}:{b}".encode()).digest()[:8], "big") / 2**64


def _pairs(split: str) -> list[tuple[int, int]]:
    return [(e.meta["a"], e.meta["b"]) for e in task.examples(split)]


def _chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def student_examples() -> list[dict]:
    """Per training question: the plain, diagnostic and both taught conversations."""
    out = []
    for a, b in _pairs("train"):
        q, answer = task.question(a, b), task.completion(a, b)
        out += [_chat(q, answer), _chat(DIAGNOSTIC_PROMPT.format(question=q), DIAGNOSTIC),
                _chat(TAUGHT_PROMPT.format(question=q, teaching=useful_hint(a, b)), answer),
                _chat(TAUGHT_PROMPT.format(question=q, teaching=USELESS), answer)]
    return out


def teacher_examples() -> list[dict]:
    out = []
    for a, b in _pairs("train"):
        prompt = TEACHER_PROMPT.format(question=task.question(a, b), diagnostic=DIAGNOSTIC)
        out.append(_chat(prompt, teaching(a, b, _coin(a, b, "useful") < USEFUL_SHARE)))
    return out


def corpus() -> list[str]:
    texts = []
    for a, b in _pairs("train") + _pairs("eval"):
        q = task.question(a, b)
        texts += [q, task.completion(a, b), DIAGNOSTIC_PROMPT.format(question=q), DIAGNOSTIC,
                  TAUGHT_PROMPT.format(question=q, teaching=useful_hint(a, b)),
                  TAUGHT_PROMPT.format(question=q, teaching=USELESS),
                  TEACHER_PROMPT.format(question=q, diagnostic=DIAGNOSTIC), teaching(a, b, True), teaching(a, b, False)]
    return texts
