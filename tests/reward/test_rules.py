"""Rule rewards: a table of answers as real completions write them, properties, and the call shape."""

import functools
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.reward import answer_match, exact_match, extract_final_answer, length_penalty, tags_present

# (completion, reference, expected reward), each written the way math and QA completions look
CASES = [
    # boxed (MATH-style), LaTeX inside the box
    ("We add the two parts: 17 + 25 = 42.\nSo the total is $\\boxed{42}$.", "42", 1),
    ("Thus $x = \\boxed{\\frac{3}{4}}$.", "0.75", 1),
    ("The probability is $\\boxed{\\dfrac{1}{2}}$.", "1/2", 1),
    ("Hence the angle is $\\boxed{30^\\circ}$.", "30°", 1),
    ("So the answer is \\boxed{\\text{Paris}}.", "Paris", 1),
    ("The area is $\\boxed{12\\text{ cm}^2}$", "12 cm^2", 1),
    ("The area is $\\boxed{12\\text{ cm}^2}$", "12", 0),  # a unit on one side only
    ("Final answer: $\\boxed{-\\frac{1}{2}}$", "-0.5", 1),
    ("$\\boxed{1{,}000}$", "1000", 1),
    ("The sum is \\boxed{41}.", "42", 0),
    ("First \\boxed{12}, but rechecking gives \\boxed{14}.", "14", 0),  # two different boxed answers
    ("\\boxed{14} and to confirm: \\boxed{14.0}", "14", 1),  # boxed twice, the same answer
    ("Computing carefully, the result is $\\boxed{4", "4", 0),  # cut off inside the box
    # an explicit marker (GSM8K, chat models)
    ("Natalia sold 48 clips in April and half as many, 24, in May. 48 + 24 = 72.\nThe answer is 72.", "72", 1),
    ("Janet has 16 eggs, eats 3 and bakes with 4, so she sells 9 at $2 each.\nThe answer is $18.", "18", 1),
    ("Each box holds 12, and 12 * 5 = 60.\n#### 60", "60", 1),
    ("Step 1: 3 * 4 = 12.\nStep 2: 12 + 30 = 42.\nAnswer: 42", "42", 1),
    ("**Final Answer:** 1,250", "1250", 1),
    ("Final Answer: The final answer is 7. I hope it is correct.", "7", 1),
    ("The answer is: 3.5", "7/2", 1),
    ("So the answer is 42.<|im_end|>", "42", 1),  # the end-of-turn token left in the decoded text
    ("The answer is 42.<|im_end|>\n<|im_start|>user\nThe answer is 41.", "42", 1),  # nothing after it counts
    ("The answer is 42. Let me double-check: 6 * 7 = 42, and 40 + 2 = 42.", "42", 1),  # prose after it
    ("The answer is 1000.", "1,000", 1),
    ("The answer is 0.5.", "1/2", 1),
    ("The answer is -5.", "-5", 1),
    ("The temperature drops 5 degrees, so the answer is 5.", "-5", 0),  # the sign matters
    ("The answer is 3.14.", "3.15", 0),
    ("The answer is 3.14159265.", "3.141592653589793", 1),  # within the relative tolerance of 1e-6
    ("The answer is 1000001.", "1000000", 0),  # whole numbers compare exactly
    ("The answer is 1000001.0", "1,000,000", 0),
    ("The answer is 2.0", "2", 1),
    ("The answer is 5 hours 30 minutes.", "2 hours 30 minutes", 0),
    ("The answer is 2 hours 30 minutes.", "2 hours 30 minutes", 1),
    ("The answer is x = 3, y = 7.", "x = 4, y = 7", 0),
    ("Solving the system: the answer is x = 4, y = 7.", "x = 4, y = 7", 1),
    ("The answer is 12 km.", "12 km", 1),
    ("The answer is 12 km.", "12 miles", 0),
    ("The answer is 25%.", "25%", 1),
    ("The answer is 25%.", "0.25", 0),
    ("The answer is x - 1.", "x + 1", 0),
    ("The answer is 41. Wait, I made an error: the answer is 42.", "42", 0),  # two different marked answers
    ("The answer is 42. To restate, the answer is 42.", "42", 1),
    ("The answer is 4", "42", 0),  # cut off mid-number
    ("The answer is", "42", 0),  # cut off before the answer
    ("Answer:\n\n42", "42", 1),
    # numbers in the reasoning are not answers
    ("There are 42 students; 7 are absent, so 35 remain. The answer is 35.", "42", 0),
    ("I first thought 42, but I forgot the tax.\nThe answer is 45.", "42", 0),
    ("The train leaves at 3 pm and travels 120 km at 60 km/h, arriving 2 hours later.", "2", 0),
    # no marker: the last line (its last sentence) is the answer, read whole
    ("42", "42", 1),
    ("Let me think.\n6 * 7\n42", "42", 1),
    ("6 times 7 is 42.", "42", 0),  # an unmarked sentence is compared whole
    # plain-text answers
    ("Paris", "Paris", 1),
    ("The answer is Paris.", "paris", 1),
    ("The capital of France is Paris.", "Paris", 0),
    ("The answer is the Pacific Ocean.", "Pacific Ocean", 1),
    ("The answer is Lyon.", "Paris", 0),
    ("The answer is Paris, France.", "Paris", 0),
    ("The answer is the Eiffel Tower!", "Eiffel Tower", 1),
    ("Answer: It's Shakespeare.", "its shakespeare", 1),
    # references are read like completions (a session's final answer is full text)
    ("\\boxed{42}", "The answer is 42.", 1),
    ("The answer is 42.", "#### 42", 1),
    ("\\boxed{41}", "The answer is 42.", 0),
    ("Answer: Paris", "\\boxed{\\text{Paris}}", 1),
    ("", "42", 0),
    ("I don't know.", "42", 0),
]


@pytest.mark.parametrize("completion, reference, expected", CASES)
def test_answer_cases(completion, reference, expected):
    assert answer_match(["q"], [completion], answers=[reference]) == [float(expected)]


def test_the_table_covers_what_the_issue_lists():
    assert len(CASES) >= 40
    assert sum(expected for *_, expected in CASES) not in (0, len(CASES))


@pytest.mark.parametrize("text, want", [
    ("so the answer is \\boxed{42}.", "42"),
    ("\\boxed{1} then corrected: \\boxed{\\frac{1}{2}}", None),  # two different answers
    ("I get 3 apples, then 1,250 more", "I get 3 apples, then 1,250 more"),
    ("The answer is -0.5.", "-0.5"),
    ("**Answer:** Paris", "Paris"),
    ("", None),
    ("\\boxed{unfinished", None),
])
def test_extract_final_answer(text, want):
    assert extract_final_answer(text) == want


def test_references_without_a_single_answer_are_rejected():
    with pytest.raises(ValueError, match=r"answers\[1\] .* several different final answers"):
        answer_match(["q"] * 2, ["a", "b"], answers=["1", "\\boxed{1} or \\boxed{2}"])
    with pytest.raises(ValueError, match=r"answers\[0\] .* no final answer"):
        answer_match(["q"], ["a"], answers=["  "])
    with pytest.raises(ValueError, match=r"answers\[0\] must be a string or a finite number"):
        answer_match(["q"], ["a"], answers=[None])
    with pytest.raises(ValueError, match="relative tolerance"):
        answer_match(["q"], ["a"], answers=["1"], tol=2)
    assert answer_match(["q"] * 3, ["The answer is 7.", "\\boxed{7.5}", "0.0000001"], answers=[7, 7.5, 1e-7]) == [1] * 3


# --- properties ----------------------------------------------------------------------------------------------

# An answer is a template over numbers {n0}, {n1} and words {w0}; formatting renders each part.
TEMPLATES = ["{n0}", "{n0} hours {n1} minutes", "x = {n0}, y = {n1}", "{n0} km", "{w0}", "{n0} {w0}",
             "{w0} {w1}"]
WORDS = ["Paris", "Lyon", "photosynthesis", "mitochondria", "blue", "whale", "Everest", "apples", "oranges"]
REASONING = ["Let me work through this step by step.", "First, {a} + {b} = {c}.", "We multiply by {a} to get {c}.",
             "I first thought it was {right}, but that ignores the second step.", "There are {a} cases in all."]


def numbers(draw) -> tuple[Fraction, bool]:
    """(value, written as an integer)"""
    kind = draw(st.sampled_from(["int", "decimal", "fraction"]))
    if kind == "int":
        return Fraction(draw(st.integers(-10**9, 10**9))), True
    if kind == "decimal":
        places = draw(st.integers(1, 3))
        return Fraction(draw(st.integers(-10**6, 10**6)), 10**places), False
    return Fraction(draw(st.integers(-200, 200)), draw(st.integers(2, 12))), False


def terminating(value: Fraction) -> bool:
    q = value.denominator
    for p in (2, 5):
        while q % p == 0:
            q //= p
    return q == 1


def decimal(value: Fraction) -> str:
    sign, value = ("-" if value < 0 else ""), abs(value)
    places = 0
    while (value * 10**places).denominator != 1:
        places += 1
    digits = str(int(value * 10**places)).rjust(places + 1, "0")
    return sign + (digits[:-places] + "." + digits[-places:] if places else digits)


def render_number(draw, number: tuple[Fraction, bool]) -> str:
    value, integer = number
    if integer and value.denominator == 1:
        n = int(value)
        forms = [str(n), f"{n:,}", f"{n}.0", f"{n}.00"] + ([f"+{n}"] if n > 0 else [f"\u2212{-n}"] if n < 0 else [])
        return draw(st.sampled_from(forms))
    p, q = value.numerator, value.denominator
    forms = [f"{p}/{q}", f"\\frac{{{p}}}{{{q}}}", ("-" if p < 0 else "") + f"\\dfrac{{{abs(p)}}}{{{q}}}"]
    if terminating(value):
        forms += [decimal(value), decimal(value) + "0"]
        if q == 1:
            forms = [decimal(value), decimal(value) + ".0"]
    return draw(st.sampled_from(forms))


def render_word(draw, word: str) -> str:
    forms = [word, word.lower(), word.upper(), word.title(), f"\\text{{{word}}}"]
    return draw(st.sampled_from(forms))


def render(draw, template: str, nums: list, words: list) -> str:
    text = template.format(**{f"n{i}": render_number(draw, n) for i, n in enumerate(nums)},
                           **{f"w{i}": render_word(draw, w) for i, w in enumerate(words)})
    return text.replace(" ", draw(st.sampled_from([" ", "  "])))


def wrap(draw, answer: str, after: str = "", marked: bool = False) -> str:
    """`answer` as a completion ends with it; `marked`: only in forms that mark it as the final answer."""
    forms = [f"$\\boxed{{{answer}}}$.", f"\\boxed{{{answer}}}", f"The answer is {answer}.{after}",
             f"So the final answer is: {answer}.{after}", f"Answer: {answer}", f"**Answer:** {answer}",
             f"Final Answer: The final answer is {answer}. I hope it is correct."]
    if not marked or answer[0] in "+-\u22120123456789":
        forms.append(f"#### {answer}")
    if not marked:
        forms.append(f"\n{answer}")
    return draw(st.sampled_from(forms))


@st.composite
def answers(draw):
    template = draw(st.sampled_from(TEMPLATES))
    nums = [numbers(draw) for _ in range(template.count("{n"))]
    words = draw(st.lists(st.sampled_from(WORDS), min_size=template.count("{w"),
                          max_size=template.count("{w"), unique_by=str.lower))
    return template, nums, words


def reasoning(draw, right: str) -> str:
    picks = draw(st.lists(st.sampled_from(REASONING), max_size=3))
    a, b = draw(st.integers(0, 999)), draw(st.integers(0, 999))
    return " ".join(p.format(a=a, b=b, c=a + b, right=right) for p in picks)


def differ(a: tuple[Fraction, bool], b: tuple[Fraction, bool]) -> bool:
    """The reward's number rule, written independently: whole numbers exactly, others beyond 1e-6 relative."""
    if a[0].denominator == 1 and b[0].denominator == 1:
        return a[0] != b[0]
    return abs(a[0] - b[0]) > Fraction(1, 10**6) * max(abs(a[0]), abs(b[0]))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_different_final_answer_never_scores(data):
    draw = data.draw
    template, nums, words = draw(answers())
    wrong_nums, wrong_words, wrong_template = list(nums), list(words), template
    change = draw(st.sampled_from(["number", "word", "unit"] if nums and words else
                                  ["number", "unit"] if nums else ["word"]))
    if change == "number":
        i = draw(st.integers(0, len(nums) - 1))
        value, integer = nums[i]
        if integer:
            wrong_nums[i] = (value + draw(st.sampled_from([-3, -1, 1, 2, 10])), True)
        else:
            r = draw(st.sampled_from([Fraction(1, 1000), Fraction(1, 100), Fraction(1, 2), Fraction(3)]))
            wrong_nums[i] = (value + draw(st.sampled_from([-1, 1])) * max(abs(value), 1) * r, False)
        assert differ(nums[i], wrong_nums[i])
    elif change == "word":
        i = draw(st.integers(0, len(words) - 1))
        wrong_words[i] = draw(st.sampled_from([w for w in WORDS if w.lower() not in map(str.lower, words)]))
    else:
        wrong_template = template + " " + draw(st.sampled_from(["km", "hours", "%"]))
    right = render(draw, template, nums, words)
    wrong = render(draw, wrong_template, wrong_nums, wrong_words)
    completion = reasoning(draw, right) + " "
    if draw(st.booleans()):  # hedging: the right answer marked too, before or after the wrong one
        pair = [wrap(draw, right, marked=True), wrap(draw, wrong, marked=True)]
        completion += " Or maybe ".join(pair if draw(st.booleans()) else pair[::-1])
    else:
        completion += wrap(draw, wrong)
    reference = draw(st.sampled_from(["{}", "The answer is {}.", "\\boxed{{{}}}"])).format(
        render(draw, template, nums, words))
    assert answer_match(["q"], [completion], answers=[reference]) == [0.0], (completion, reference)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_formatting_a_right_answer_never_scores_zero(data):
    draw = data.draw
    template, nums, words = draw(answers())
    right = render(draw, template, nums, words)
    after = draw(st.sampled_from(["", " I hope this helps!", " Let me know if you need anything else."]))
    completion = reasoning(draw, right) + " " + wrap(draw, right, after)
    completion += draw(st.sampled_from(["", "<|im_end|>", "\n", "<|eot_id|>"]))
    reference = draw(st.sampled_from(["{}", "The answer is {}.", "\\boxed{{{}}}", "#### {}"])).format(
        render(draw, template, nums, words))
    assert answer_match(["q"], [completion], answers=[reference]) == [1.0], (completion, reference)


# --- the other rules -----------------------------------------------------------------------------------------

def test_exact_match_normalises():
    completions = ["The Eiffel Tower.", "eiffel   tower", "Eiffel Tower, Paris", "  AN eiffel tower!"]
    assert exact_match(["q"] * 4, completions, answers=["Eiffel Tower"] * 4) == [1.0, 1.0, 0.0, 1.0]
    assert exact_match(["q"] * 2, ["1,000 km", "x - 1"], answers=["1000 km", "x + 1"]) == [1.0, 0.0]


def test_tags_present_fraction():
    completions = [
        "<thinking>x</thinking><teaching>try parity</teaching>",
        "<teaching>hint</teaching><solution>4</solution>",
        "<teaching>   </teaching>",
        "<teaching>unclosed",
    ]
    assert tags_present([""] * 4, completions) == [1.0, 1.0, 0.0, 0.0]
    both = functools.partial(tags_present, tags=("teaching", "solution"))
    assert both([""] * 4, completions) == [0.5, 1.0, 0.0, 0.0]


def test_length_penalty_is_linear_between_target_and_limit():
    completions = ["a" * n for n in (10, 100, 150, 200, 500)]
    assert length_penalty([""] * 5, completions, target=100, limit=200) == [0.0, 0.0, -0.5, -1.0, -1.0]


def test_rules_take_extra_context_and_chat_messages():
    msgs = [[{"role": "assistant", "content": "\\boxed{5}"}]]
    assert answer_match([[{"role": "user", "content": "2+3?"}]], msgs, answers=["5"], task_id=["t1"]) == [1.0]


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError, match="answers=\\[...\\]"):
        exact_match(["q"], ["a"])
    with pytest.raises(ValueError, match="1 answers for 2 completions"):
        answer_match(["q", "q"], ["a", "b"], answers=["a"])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        tags_present(["q", "q"], ["a"])
    with pytest.raises(ValueError, match="target < limit"):
        length_penalty(["q"], ["a"], target=10, limit=10)
    with pytest.raises(ValueError, match="at least one tag"):
        tags_present(["q"], ["a"], tags=())
