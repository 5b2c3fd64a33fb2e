"""Parsing export records into Session/Step/TrajectoryEvent (and assembling them from Postgres rows): bad input."""

from __future__ import annotations

import contextlib
import copy
import json
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas.data import Session, Step, TrajectoryEvent
from atlas.data.postgres import _record
from atlas.data.schema import parse_session
from tests.data.records import FIXTURES, KEY_A, make_record

BY_ID = {r["session_metadata"]["session_id"]: r for r in FIXTURES}


def test_fields_of_a_full_record():
    s = parse_session(BY_ID[3])
    assert isinstance(s, Session) and s.session_id == 3
    assert s.task == "Find the invoice total for ACME in March."
    assert s.final_answer == "Answer to session 3: 42"
    assert s.reward == 0.6 and s.review_status == "approved" and s.status == "succeeded"
    assert s.execution_mode == "coach" and s.learning_key == KEY_A
    assert s.plan["execution_mode"] == "single_shot" and len(s.plan["steps"]) == 1
    assert s.teacher_notes == ("student confused months",)
    assert s.student_learning == "Check units before answering."
    assert s.created_at == datetime(2025, 10, 1, 12, 3, tzinfo=UTC)
    assert s.completed_at == datetime(2025, 10, 1, 12, 3, 30, tzinfo=UTC)
    assert s.metadata["tenant"] == "acme" and "trajectory_events" not in s.metadata
    assert s.events is None  # not asked for
    (step,) = s.steps
    assert isinstance(step, Step) and step.step_id == 1 and step.tool == "calculator"
    assert step.trace.startswith("HUMAN: ") and json.loads(step.output)["result"]["deliverable"] == s.final_answer
    assert step.guidance == ("Use the March ledger, not February.", "Include VAT.") and step.attempts == 3
    assert step.validation["valid"] is True and step.metadata["runtime"] == {"seconds": 1.5}


def test_reward_is_the_session_score_not_the_step_placeholder():
    s = parse_session(BY_ID[1])
    assert s.raw["steps"][0]["reward"]["score"] == 0.0  # the runtime's deferred placeholder
    assert s.reward == 0.95
    assert not hasattr(s.steps[0], "reward")


def test_judge_audit_dropped_unless_asked():
    s = parse_session(BY_ID[2])
    assert "reward_audit" not in s.raw and "reward_audit" not in s.metadata and "reward_audit" in BY_ID[2]
    s = parse_session(BY_ID[2], include_audit=True)
    assert s.raw is BY_ID[2] and len(s.metadata["reward_audit"]) == 2


def test_escalated_reward_and_execution_modes():
    assert parse_session(BY_ID[2]).escalated and not parse_session(BY_ID[1]).escalated
    assert {parse_session(r).execution_mode for r in FIXTURES} == {"auto", "paired", "coach", None}


def test_missing_optional_fields_are_normal():
    unscored = parse_session(BY_ID[7])
    assert unscored.reward is None and not unscored.escalated
    old = parse_session(BY_ID[8])
    assert old.execution_mode is None and old.learning_key is None and old.student_learning is None
    assert parse_session(BY_ID[10]).review_status is None
    minimal = parse_session({"task": "t", "final_answer": "", "plan": {}, "steps": [], "session_metadata": {}})
    assert minimal.session_id is None and minimal.steps == () and minimal.created_at is None


def test_review_status_and_reward_copies_in_metadata_are_not_trusted():
    # A stale copy inside session_metadata must not approve or score a session.
    record = make_record(50, "stale", review_status=None, reward=None)
    record["session_metadata"]["review_status"] = "approved"
    record["session_metadata"]["reward_stats"] = {"score": 1.0}
    s = parse_session(record)
    assert s.review_status is None and s.reward is None


def test_events_actor_is_nested_in_the_payload_and_event_may_be_a_json_string():
    s = parse_session(BY_ID[3], include_events=True)
    assert [e.actor for e in s.events] == ["student", "teacher", "reward"]
    assert all(isinstance(e, TrajectoryEvent) and e.event_type == "LLM_END" for e in s.events)
    assert isinstance(BY_ID[3]["trajectory_events"][1]["event"], str)
    assert s.events[1].event["payload"]["name"] == "teacher-llm"
    assert parse_session(BY_ID[1], include_events=True).events == ()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("task"), "task"),
        (lambda r: r.update(task="   "), "task"),
        (lambda r: r.update(steps={"step_id": 1}), "steps"),
        (lambda r: r["steps"][0].update(step_id="one"), "step_id"),
        (lambda r: r["steps"][0].update(trace=["a"]), "trace"),
        (lambda r: r["steps"][0].update(guidance="not a list"), "guidance"),
        (lambda r: r["reward_stats"].update(score="high"), "reward_stats.score"),
        (lambda r: r["reward_stats"].update(score=1.5), "[0, 1]"),
        (lambda r: r["reward_stats"].update(score=float("nan")), "finite"),
        (lambda r: r["session_metadata"].update(created_at="yesterday"), "created_at"),
        (lambda r: r["session_metadata"].update(session_id="7"), "session_id"),
        (lambda r: r.update(plan=[1]), "plan"),
        (lambda r: r.update(review_status=3), "review_status"),
    ],
)
def test_malformed_records_raise_value_error_naming_the_field(mutate, message):
    record = copy.deepcopy(BY_ID[1])
    mutate(record)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        parse_session(record)


def test_malformed_event_raises():
    record = copy.deepcopy(BY_ID[3])
    record["trajectory_events"][0]["event"] = "{not json"
    with pytest.raises(ValueError, match=r"trajectory_events\[0\]\.event"):
        parse_session(record, include_events=True)
    parse_session(record)  # events are not parsed unless asked for


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["task", "final_answer", "plan", "steps", "session_metadata", "review_status", "reward_stats",
          "execution_mode", "learning_key", "teacher_notes", "student_learning", "trajectory_events"]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_junk_values_never_crash_with_anything_but_value_error(value):
    with contextlib.suppress(ValueError):
        parse_session(value, include_events=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURES), st.lists(st.tuples(st.sampled_from(FIELDS), json_values), min_size=1, max_size=3),
       st.sampled_from(["review_status", "session_id", "status", "created_at", "trajectory_events"]), json_values)
def test_junk_fields_in_real_records_never_crash_with_anything_but_value_error(record, edits, meta_key, meta_value):
    record = copy.deepcopy(record)
    for key, value in edits:
        record[key] = value
    if isinstance(record.get("session_metadata"), dict):
        record["session_metadata"][meta_key] = meta_value
    if isinstance(record.get("steps"), list) and record["steps"] and isinstance(record["steps"][0], dict):
        record["steps"][0][edits[0][0]] = edits[0][1]
    with contextlib.suppress(ValueError):
        parse_session(record, include_events=True)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({}, optional={k: json_values for k in ("metadata", "reward", "reward_stats", "plan",
                                                                     "evaluation", "step_metadata", "event")}))
def test_junk_row_values_never_crash_with_anything_but_value_error(values):
    # The assembly from rows, without a server: every JSON column holding anything JSON can hold.
    row = (1, "task", "succeeded", values.get("metadata"), "answer", values.get("reward"),
           values.get("reward_stats"), None, None, None, "approved", None, None, None, values.get("plan"))
    steps = {1: [(1, 1, "trace", "out", values.get("evaluation"), 1, values.get("step_metadata"))]}
    events = {1: [{"id": 1, "event": values.get("event"), "created_at": None}]}
    with contextlib.suppress(ValueError):
        parse_session(_record(row, steps, {}, events), include_events=True)
