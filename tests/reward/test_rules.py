"""Rule rewards: hand-checked cases, and the call shape shared with RIM."""

import functools

import pytest

from atlas.reward import answer_match, exact_match, extract_final_answer, length_penalty, tags_present


def test_exact_match_normalises():
    completions = ["The Eiffel Tower.", "eiffel   tower", "Eiffel Tower, Paris", "  AN eiffel tower!"]
    assert exact_match(["q"] * 4, completions, answers=["Eiffel Tower"] * 4) == [1.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("text, want", [
    ("so the answer is \\boxed{42}.", "42"),
    ("\\boxed{1} then corrected: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("I get 3 apples, then 1,250 more", "1,250"),
    ("x = -0.5", "-0.5"),
    ("no number", None),
    ("\\boxed{unfinished", None),
])
def test_extract_final_answer(text, want):
    assert extract_final_answer(text) == want


def test_answer_match_numbers_boxed_and_text():
    completions = [
        "so \\boxed{\\frac{3}{4}}", "the total is 1,000.", "half: -1/2", "it is 41", "no answer",
        "\\boxed{Paris}", "\\boxed{42}", "#### 7",
    ]
    answers = ["0.75", "1000", "-0.5", "42", "3", "paris", "\\boxed{42}", 7]
    assert answer_match([""] * 8, completions, answers=answers) == [1, 1, 1, 0, 0, 1, 1, 1]
    # references written as full answers (a session's final_answer) are read like completions
    full = ["The answer is 42.", "So x = 3/4 overall.", "Paris"]
    assert answer_match([""] * 3, ["\\boxed{42}", "x is 0.75", "\\boxed{paris}"], answers=full) == [1, 1, 1]
    assert answer_match([""], ["\\boxed{41}"], answers=["The answer is 42."]) == [0]


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
