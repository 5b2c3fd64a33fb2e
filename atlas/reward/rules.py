"""Rule rewards for verifiable tasks, with the same call shape as RIM: `(prompts, completions, **context)
-> list[float]`, one reward per completion.

- `exact_match`:  1.0 when the completion equals its reference after normalisation (lower case, no
                  punctuation, no articles a/an/the, whitespace collapsed), else 0.0.
- `answer_match`: 1.0 when the completion's final answer (the last `\\boxed{...}`, else the last number)
                  equals the reference's, extracted the same way (a reference with neither is taken whole);
                  numbers compare as numbers (|a - b| <= tol * max(1, |b|),
                  "1,000" = 1000, "3/4" = 0.75), anything else after normalisation.
- `tags_present`: the fraction of required tags (default `<teaching>`) that appear as a non-empty
                  `<tag>...</tag>` pair.
- `length_penalty`: 0.0 up to `target` characters, then falling linearly to -1.0 at `limit` characters
                  and staying there: `clip((target - len) / (limit - target), -1, 0)`.

References arrive through context as `answers=[...]`, one per completion (a GRPO loop repeats a prompt's
answer for each of its G completions). Prompts are accepted for the common call shape and ignored by all
four rules; other context keys (dataset columns a training loop passes along) are ignored too. Settings
such as `tags` or `target` are keyword arguments: bind them with functools.partial.

Left out: symbolic maths equivalence (x^2 - 1 vs (x-1)(x+1)), units, and multiple-choice letter parsing.
"""

from __future__ import annotations

import math
import re
import string
from fractions import Fraction
from typing import Any

from atlas.reward.judges import as_text

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def normalize_answer(text: str) -> str:
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def _boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced (\\boxed{\\frac{1}{2}} works)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j].strip()
    return None  # unbalanced: the model stopped mid-answer


def extract_final_answer(text: str) -> str | None:
    """The last \\boxed{} content, else the last number in the text, else None."""
    boxed = _boxed(text)
    if boxed is not None:
        return boxed
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _as_number(text: str) -> float | None:
    cleaned = text.strip().strip("$").replace(",", "").rstrip(".")
    frac = re.fullmatch(r"\\d?frac\{(-?\d+)\}\{(\d+)\}", cleaned)
    if frac:
        cleaned = f"{frac.group(1)}/{frac.group(2)}"
    try:
        value = float(Fraction(cleaned))
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def _check(prompts: list, completions: list, answers: list | None) -> None:
    if len(prompts) != len(completions):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(completions)} completions; pass one prompt per completion")
    if answers is not None and len(answers) != len(completions):
        raise ValueError(
            f"got {len(answers)} answers for {len(completions)} completions; pass answers=[...] with one "
            "reference per completion (repeat a prompt's answer for each of its completions)"
        )


def _require_answers(answers: list | None, rule: str) -> list:
    if answers is None:
        raise ValueError(f"{rule} needs the references: call it with answers=[...], one per completion")
    return answers


def exact_match(prompts: list, completions: list, answers: list | None = None, **context: Any) -> list[float]:
    answers = _require_answers(answers, "exact_match")
    _check(prompts, completions, answers)
    return [float(normalize_answer(as_text(c)) == normalize_answer(str(a)))
            for c, a in zip(completions, answers)]


def answer_match(
    prompts: list, completions: list, answers: list | None = None, tol: float = 1e-6, **context: Any
) -> list[float]:
    answers = _require_answers(answers, "answer_match")
    _check(prompts, completions, answers)
    out = []
    for completion, answer in zip(completions, answers):
        got = extract_final_answer(as_text(completion))
        # a reference is read like a completion ("The answer is 42." -> 42); one with neither a box nor a
        # number ("Paris") is compared whole
        want = extract_final_answer(str(answer)) or str(answer)
        if got is None:
            out.append(0.0)
            continue
        a, b = _as_number(got), _as_number(want)
        if a is not None and b is not None:
            out.append(float(abs(a - b) <= tol * max(1.0, abs(b))))
        else:
            out.append(float(normalize_answer(got) == normalize_answer(want)))
    return out


def tags_present(
    prompts: list, completions: list, tags: tuple[str, ...] = ("teaching",), **context: Any
) -> list[float]:
    if not tags:
        raise ValueError("tags_present needs at least one tag name, e.g. tags=('teaching', 'solution')")
    _check(prompts, completions, None)
    patterns = [re.compile(rf"<{re.escape(t)}>\s*\S.*?</{re.escape(t)}>", re.DOTALL) for t in tags]
    return [sum(bool(p.search(as_text(c))) for p in patterns) / len(patterns) for c in completions]


def length_penalty(
    prompts: list, completions: list, target: int = 2000, limit: int = 4000, **context: Any
) -> list[float]:
    if not 0 <= target < limit:
        raise ValueError(
            f"length_penalty needs 0 <= target < limit (characters), got target={target}, limit={limit}")
    _check(prompts, completions, None)
    return [max(-1.0, min(0.0, (target - len(as_text(c))) / (limit - target))) for c in completions]
