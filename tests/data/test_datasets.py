"""Sessions -> examples: prompts with context, GKD conversations, dedup, a stable train/eval split."""

from __future__ import annotations

import random

import pytest

from atlas.data import gkd_examples, grpo_examples, load_sessions
from atlas.data.datasets import build_prompt, split_of, task_key
from atlas.data.schema import parse_session
from atlas.train.data import as_conversation
from tests.data.records import FIXTURES, generate_records, make_record, write_jsonl

SESSIONS = [parse_session(r) for r in FIXTURES if r.get("review_status") == "approved"]


def test_grpo_prompt_is_the_task_and_reference_the_final_answer():
    split = grpo_examples(SESSIONS, eval_fraction=0.0)
    first = split.train[0]
    assert first.prompt == [{"role": "user", "content": "What is 6 times 7?"}]
    assert first.reference == "Answer to session 1: 42" and first.completion is None
    assert first.meta["session_id"] == 1 and first.meta["split"] == "train" and first.meta["reward"] == 0.95
    with pytest.raises(ValueError, match="no completion"):
        as_conversation(first)  # what SFT reads an Example as


def test_context_sections_in_the_system_message_and_missing_ones_counted():
    (coach,) = [s for s in SESSIONS if s.session_id == 3]
    messages, missing = build_prompt(coach, ("student_learning", "plan", "guidance", "teacher_notes"), "Be brief.")
    assert [m["role"] for m in messages] == ["system", "user"] and messages[1]["content"] == coach.task
    system = messages[0]["content"]
    assert system.startswith("Be brief.\n\n## Playbook learned from earlier sessions\nCheck units before answering.")
    assert "## Plan\n1. Solve: Find the invoice total for ACME in March. (tool: calculator)" in system
    assert "## Teacher guidance\n- Use the March ledger, not February.\n- Include VAT." in system
    assert "## Teacher notes\n- student confused months" in system and missing == []
    split = grpo_examples(SESSIONS, context=("student_learning", "guidance"))
    assert split.counts["context_missing:student_learning"] == 1  # session 8, an older export
    assert split.counts["context_missing:guidance"] == len(SESSIONS) - 1  # only session 3 has guidance
    with pytest.raises(ValueError, match="context must be"):
        grpo_examples(SESSIONS, context=("playbook",))
    with pytest.raises(ValueError, match="context must be"):
        build_prompt(SESSIONS[0], "plan")


def test_gkd_conversations_and_sessions_without_answer_dropped():
    sessions = [*SESSIONS, parse_session({**make_record(70, "No answer here"), "final_answer": "  "})]
    split = gkd_examples(sessions, eval_fraction=0.0)
    assert split.counts["dropped:no_final_answer"] == 1
    convo = as_conversation(split.train[0])
    assert convo == [{"role": "user", "content": "What is 6 times 7?"},
                     {"role": "assistant", "content": "Answer to session 1: 42"}]  # fmt: skip


def test_duplicates_of_a_task_collapse_to_the_highest_reward():
    split = grpo_examples(SESSIONS, eval_fraction=0.0)
    # Sessions 1 (0.95) and 9 (0.7) have the same task up to whitespace.
    assert split.counts["duplicates_collapsed"] == 1 and split.counts["sessions"] == len(SESSIONS)
    kept = [e for e in split.train if e.meta["task_key"] == task_key("What is 6 times 7?")]
    assert [e.meta["session_id"] for e in kept] == [1]
    reversed_split = grpo_examples(list(reversed(SESSIONS)), eval_fraction=0.0)
    assert {e.meta["session_id"] for e in reversed_split.train} == {e.meta["session_id"] for e in split.train}
    unscored_first = [parse_session(make_record(80, "dup", reward=None)),
                      parse_session(make_record(81, "dup", reward=0.1))]  # fmt: skip
    assert [e.meta["session_id"] for e in grpo_examples(unscored_first, eval_fraction=0).train] == [81]
    tie = [parse_session(make_record(82, "tie", reward=0.5)), parse_session(make_record(83, "tie", reward=0.5))]
    assert [e.meta["session_id"] for e in grpo_examples(tie, eval_fraction=0).train] == [82]


def test_split_is_stable_across_runs_and_order_and_keeps_duplicates_together():
    assert task_key("What is 6 times 7?") == task_key("  What is 6   times 7? ")
    keys = [task_key(f"task {i}") for i in range(40)]
    assert [split_of(k, 0.5) for k in keys] != [split_of(k, 0.5, salt="reshuffle") for k in keys]
    sessions = [parse_session(r) for r in generate_records(400, seed=3)]
    a = grpo_examples(sessions, eval_fraction=0.2)
    shuffled = sessions[:]
    random.Random(0).shuffle(shuffled)
    b = grpo_examples(shuffled, eval_fraction=0.2)
    assert {e.meta["session_id"] for e in a.eval} == {e.meta["session_id"] for e in b.eval}
    assert 0.1 < len(a.eval) / (len(a.eval) + len(a.train)) < 0.3
    assert not {e.meta["task_key"] for e in a.eval} & {e.meta["task_key"] for e in a.train}
    with pytest.raises(ValueError, match="eval_fraction"):
        grpo_examples(sessions, eval_fraction=1.0)


def test_known_split_assignments_do_not_drift():
    # Pinned so a change of hashing (which would silently reshuffle users' eval sets) fails loudly.
    assert task_key("What is 6 times 7?").startswith("388ba6637d7cc48d")
    tasks = ("What is 6 times 7?", "Summarise the refund policy for order 1182.", "a", "b")
    assert [split_of(task_key(t), 0.5) for t in tasks] == ["train", "train", "eval", "eval"]


def test_end_to_end_from_a_file(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", FIXTURES)
    split = gkd_examples(load_sessions(path, min_reward=0.8, status="succeeded"), eval_fraction=0.0)
    assert sorted(e.meta["session_id"] for e in split.train) == [1, 2, 8, 11]
