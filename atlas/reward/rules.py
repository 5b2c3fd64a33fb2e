"""Rule rewards for verifiable tasks, with the same call shape as RIM: `(prompts, completions, **context)
-> list[float]`, one reward per completion.

- `answer_match`:   1.0 when the completion's final answer equals the reference's final answer, else 0.0
                    (the rules below).
- `exact_match`:    1.0 when the whole completion equals the whole reference, compared as answers are
                    (below, without reading a final answer out of either), else 0.0.
- `tags_present`:   the fraction of required tags (default `<teaching>`) that appear as a non-empty
                    `<tag>...</tag>` pair.
- `length_penalty`: 0.0 up to `target` characters, then falling linearly to -1.0 at `limit` characters
                    and staying there: `clip((target - len) / (limit - target), -1, 0)`.
- `leaks_answer(text, reference)`: whether a text states the reference's final answer (the teaching
                    recipe's leak test), on `numbers_in`: digits ("1,000", "-3.5", "3/4") and English number
                    words ("eighty-five", "one hundred and two"; "five six" is two numbers).

The final answer of a text (a completion, and a reference the same way):
 0. Text from the first end-of-turn token on (`<|im_end|>`, `<|eot_id|>`, any `<|...|>`, `</s>`) is dropped.
 1. Marked answers: every `\\boxed{...}` / `\\fbox{...}` (braces balanced), and the X of every marker:
    "answer is X", "answer: X", "answer = X" (case-insensitive, also with "final" before and markdown
    emphasis around: "The final answer is: X", "**Answer:** X"); "#### X" when X starts with a number
    (GSM8K; "#### Step 1" is a markdown heading). X runs to the end of its sentence (. ! or ? followed by
    a space or the end) or line, or to where a box or the next marker begins; an empty X is the next
    non-empty line. A marker with nothing but formatting and articles before a box or the next marker
    defers to it ("The answer is $\\boxed{42}$", "Final Answer: The final answer is 42"). A box left open
    (the completion was cut off mid-answer) means there is no answer.
 2. Without any marked answer: the last non-empty line, and of that line its last sentence.
Several marked answers must all equal each other, or there is no answer: two boxes, two markers, or a box
and a marker that disagree earn 0 (a policy must not hedge its way to reward). Text before the final
answer, numbers in the reasoning included, is never read. A reference that has no answer, or several
different ones, is a ValueError: scoring every completion of its prompt 0 would silently drop the example.

Two answers are equal when they are equal token by token. Before splitting, LaTeX is cleaned:
`\\text{x}` `\\textbf{x}` `\\mathrm{x}` `\\mathbf{x}` `\\textrm{x}` `\\mbox{x}` -> x, `\\frac{a}{b}` (and
`\\dfrac`, `\\tfrac`) -> a/b, `\\left` `\\right` dropped, `\\,` `\\;` `\\:` `\\!` `\\quad` `~` -> space, `\\%` -> %,
`\\$` -> $, `{,}` -> ",", `^\\circ` -> °, `\\times` `\\cdot` -> ×, `\\div` -> ÷, math delimiters `\\( \\) \\[ \\]`
dropped; the Unicode minus is "-". Tokens are then:
- numbers: an optional sign (a "-" or "+" not right after a letter, digit or closing bracket, so "x-1" is
  x, -, 1), digits with optional thousands separators ("1,000": a comma followed by exactly three digits),
  an optional decimal part ("3.14", ".5"), optionally "/" and an integer denominator ("3/4", "-1/2"; no
  spaces). Two whole numbers are equal only when they are the same (1000000 is neither 1000001 nor
  1000001.0); otherwise two numbers are equal when |a - b| <= tol * max(|a|, |b|), tol = 1e-6 by default
  (3.14 is not 3.15; 0.5 is 1/2; 2.0 is 2);
- words (runs of letters), compared lower-cased; the articles a, an, the are dropped;
- every other visible character is a symbol compared as is (+ - = < > / ^ % ( ) [ ] ° ...), except the
  formatting characters . , ; : ! ? ' " ` * _ $ # \\ { } and typographic quotes, which are dropped
  (an apostrophe inside a word is removed: "it's" is "its").
So a unit must be written on both sides alike ("12 km" is "12km" but neither "12" nor "12 kilometres"),
"5 hours 30 minutes" is not "2 hours 30 minutes", and "x = 3, y = 7" is not "x = 4, y = 7".

References arrive through context as `answers=[...]`, one per completion (a GRPO loop repeats a prompt's
answer for each of its G completions). Prompts are accepted for the common call shape and ignored by all
four rules; other context keys (dataset columns a training loop passes along) are ignored too. Settings
such as `tags` or `target` are keyword arguments: bind them with functools.partial.

Left out: symbolic maths equivalence (x^2 - 1 vs (x-1)(x+1)), unit conversion, mixed numbers ("1 1/2"),
scientific notation, answers written in words ("seven": only leaks_answer reads number words), and
multiple-choice letter parsing ("(B)" is not "B").
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction
from typing import Any

from atlas.reward.judges import as_text

_END_OF_TURN = re.compile(r"<\|[A-Za-z0-9_]+\|>|</s>")
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_MARKER = re.compile(
    # "the answer is 42", "the final answer is: 42", "Answer: 42", "**Final Answer:** 42", "answer = 42"
    r"\b(?:final\s+)?answer(?:\s+is\b\s*:?|[*_ \t]*[:=])"
    r"|####(?=\s*[-+\u2212$]?(?:\.?\d|\\[dt]?frac))",  # GSM8K's "#### 42"; "#### Step 1" is a heading
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
_VISIBLE = re.compile(r"\S")

_LATEX = [
    (re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}"), r" \1 "),
    (re.compile(r"\\[dt]?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*(\d+)\s*\}"), r"\1/\2"),
    (re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"(\1)/(\2)"),
    (re.compile(r"\^\s*\{?\\circ\}?"), "°"),
    (re.compile(r"\\(?:left|right)\b"), ""),
    (re.compile(r"\\[,;:! ]|\\quad\b|~"), " "),
    (re.compile(r"\\(?:times|cdot)\b"), "×"),
    (re.compile(r"\\div\b"), "÷"),
    (re.compile(r"\\[()\[\]]"), " "),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\\$"), "$"),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"(?<=\w)['’](?=\w)"), ""),
]
_TOKEN = re.compile(
    r"(?P<num>(?:(?<![\w)\]])[-+])?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:/\d+)?)"
    r"|(?P<word>[^\W\d_]+)"
    r"|(?P<sym>\S)"
)
_FORMATTING = set(".,;:!?'\"`*_$#\\{}“”‘’")
_ARTICLES = {"a", "an", "the"}
_TOL = Fraction(1, 10**6)

Token = tuple[str, Any]  # ("num", Fraction) | ("text", str)


def _tokens(answer: str) -> tuple[Token, ...]:
    text = answer.replace("\u2212", "-").replace("\u00a0", " ").replace("\u2009", " ")
    for pattern, repl in _LATEX:
        text = pattern.sub(repl, text)
    out: list[Token] = []
    for m in _TOKEN.finditer(text):
        if m.lastgroup == "num":
            number = m.group("num").replace(",", "")
            numerator, _, denominator = number.partition("/")
            if denominator and int(denominator) == 0:  # "3/0" is not a number: keep it as written
                out += [("num", Fraction(numerator)), ("text", "/"), ("num", Fraction(0))]
                continue
            out.append(("num", Fraction(numerator) / (Fraction(denominator) if denominator else 1)))
        elif m.lastgroup == "word":
            word = m.group("word").lower()
            if word not in _ARTICLES:
                out.append(("text", word))
        elif m.group("sym") not in _FORMATTING:
            out.append(("text", m.group("sym")))
    return tuple(out)


def _numbers_equal(x: Fraction, y: Fraction, tol: Fraction) -> bool:
    if x.denominator == 1 and y.denominator == 1:  # a count off by one is wrong at any magnitude
        return x == y
    return abs(x - y) <= tol * max(abs(x), abs(y))


def _same(a: tuple[Token, ...], b: tuple[Token, ...], tol: Fraction) -> bool:
    """Token-by-token equality (see the module docstring); empty token lists are never equal."""
    if not a or len(a) != len(b):
        return False
    for (kind_a, x), (kind_b, y) in zip(a, b):
        if kind_a != kind_b:
            return False
        if not (_numbers_equal(x, y, tol) if kind_a == "num" else x == y):
            return False
    return True


def _boxes(text: str) -> list[str] | None:
    """Contents of every \\boxed{...}, braces balanced; None when a box is left open."""
    found = []
    for m in _BOX.finditer(text):
        depth = 1
        for j in range(m.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                found.append(text[m.end():j])
                break
        else:
            return None
    return found


def _span(text: str, start: int) -> tuple[int, int]:
    """From `start` to the end of its sentence or line; the next non-empty line when nothing is left on this
    one ("Answer:\\n42")."""
    end = _SENTENCE_END.search(text, start)
    stop = end.start() if end else len(text)
    line_end = text.find("\n", start)
    if _tokens(text[start:stop]) or line_end < 0 or _tokens(text[start:line_end]):
        return start, stop
    first = _VISIBLE.search(text, line_end)
    if first is None:
        return start, stop
    end = _SENTENCE_END.search(text, first.start())
    return first.start(), end.start() if end else len(text)


def _marked(text: str) -> list[str]:
    """The answer after each marker, up to a box or a later marker; one with nothing left defers to them."""
    matches = list(_MARKER.finditer(text))
    spans = []
    for k, m in enumerate(matches):
        start, stop = _span(text, m.end())
        box = _BOX.search(text, start, stop)
        stop = min(stop, box.start() if box else stop, matches[k + 1].start() if k + 1 < len(matches) else stop)
        if _tokens(text[start:stop]):
            spans.append(text[start:stop])
    return spans


def _last_sentence(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", lines[-1].strip()) if s.strip()]
    return sentences[-1] if sentences else ""


def _final_answers(text: str) -> list[str] | None:
    """The marked final answers of `text` ([] when it has none; None when a box is left open)."""
    cut = _END_OF_TURN.search(text)
    if cut:
        text = text[:cut.start()]
    boxes = _boxes(text)
    if boxes is None:
        return None
    marked = boxes + _marked(text)
    if marked:
        return marked
    last = _last_sentence(text)
    return [last] if last.strip() else []


def _read(text: str, tol: Fraction) -> tuple[str | None, tuple[Token, ...], str]:
    """(the final answer as written, its tokens, "") or (None, (), why there is none)."""
    answers = _final_answers(text)
    if answers is None:
        return None, (), "a \\boxed{ that is never closed"
    read = [(a.strip(" \t*_:").rstrip("."), t) for a in answers if (t := _tokens(a))]
    if not read:
        return None, (), "no final answer"
    if not all(_same(read[0][1], t, tol) for _, t in read[1:]):
        return None, (), f"several different final answers {[a for a, _ in read]}"
    return read[0][0], read[0][1], ""


def extract_final_answer(text: str) -> str | None:
    """The final answer of `text` as answer_match reads it, as written; None when there is none, when there
    are several different ones, or when a box is left open."""
    return _read(text, _TOL)[0]


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


def _tolerance(tol: float) -> Fraction:
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 <= tol < 1:
        raise ValueError(f"tol is a relative tolerance in [0, 1), got {tol!r}")
    return Fraction(tol)


def _reference(index: int, answer: Any) -> str:
    if isinstance(answer, float) and math.isfinite(answer):
        return format(Decimal(repr(answer)), "f")  # 1e-07 as 0.0000001: scientific notation is not read
    if answer is None or isinstance(answer, bool | float) or not isinstance(answer, str | int):
        raise ValueError(f"answers[{index}] must be a string or a finite number, got {answer!r}")
    return str(answer)


def exact_match(prompts: list, completions: list, answers: list | None = None, **context: Any) -> list[float]:
    answers = _require_answers(answers, "exact_match")
    _check(prompts, completions, answers)
    return [float(_same(_tokens(as_text(c)), _tokens(_reference(i, a)), _TOL))
            for i, (c, a) in enumerate(zip(completions, answers))]


def answer_match(
    prompts: list, completions: list, answers: list | None = None, tol: float = 1e-6, **context: Any
) -> list[float]:
    answers = _require_answers(answers, "answer_match")
    _check(prompts, completions, answers)
    tolerance = _tolerance(tol)
    references = [_reference(i, a) for i, a in enumerate(answers)]
    wants = {}
    for i, text in enumerate(references):
        if text not in wants:
            written, wants[text], why = _read(text, tolerance)
            if written is None:
                raise ValueError(
                    f"answers[{i}] = {text[:80]!r} has {why}; pass the answer itself (e.g. '42' or 'Paris')")
    out = []
    for completion, text in zip(completions, references):
        written, got, _ = _read(as_text(completion), tolerance)
        out.append(float(written is not None and _same(got, wants[text], tolerance)))
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


_UNITS = {w: i for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
     "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"])}
_TENS = {w: 10 * i for i, w in enumerate(
    ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]) if i > 1}
_SCALES = {"thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}


def numbers_in(text: str) -> list[float]:
    """Every number in `text`: digits ("1,000", "-3.5", "3/4") and English number words ("eighty-five",
    "one hundred and two", "three thousand"; "five six" is two numbers, punctuation ends one)."""
    out: list[float] = []
    for m in re.finditer(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?", text):
        try:
            out.append(float(Fraction(m.group().replace(",", ""))))
        except (ValueError, ZeroDivisionError):
            continue
    words = re.findall(r"[a-z]+|[^a-z\s]", re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text.lower()))
    total = current = 0
    last = None  # the previous number word, None outside a number

    def close():
        nonlocal total, current, last
        if last is not None:
            out.append(float(total + current))
        total = current = 0
        last = None

    for w in [*words, None]:
        if w in _UNITS:
            if last in _UNITS or (last in _TENS and _UNITS[w] >= 10):
                close()
            current += _UNITS[w]
        elif w in _TENS:
            if last in _UNITS or last in _TENS:
                close()
            current += _TENS[w]
        elif w == "hundred" and last in _UNITS:
            current *= 100
        elif w in _SCALES and last is not None:
            total, current = total + current * _SCALES[w], 0
        elif w == "and" and last in ("hundred", *_SCALES):
            continue
        else:
            close()
            continue
        last = w
    return out


def leaks_answer(text: str, reference: str) -> bool:
    """Whether `text` (a teaching, a hint) states the reference's final answer: a one-number answer found
    among `numbers_in(text)` as a number ("eighty-five" and "85.0" state 85; "185" does not), any other
    answer as a whole run of normalised words; never a raw substring test."""
    answer = extract_final_answer(reference) or reference
    numbers = numbers_in(answer)
    if len(numbers) == 1 and re.fullmatch(r"[^A-Za-z]*", answer):
        return any(abs(n - numbers[0]) <= 1e-9 * max(1.0, abs(numbers[0])) for n in numbers_in(text))
    norm = lambda t: " ".join(re.findall(r"[a-z0-9]+", t.lower()))  # noqa: E731
    return bool(norm(answer)) and f" {norm(answer)} " in f" {norm(text)} "
