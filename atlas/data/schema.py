"""Runtime sessions as typed records: `Session`, `Step`, `TrajectoryEvent`, parsed from one export record.

The runtime SDK's JSONL export writes one session per line (its fields: `Session` and `Step` below); the
Postgres reader assembles the very same shape from the SDK's tables, so this one parser serves both sources and
they cannot drift apart. Every field a parser touches is type-checked: a record that does not match the
interface raises `ValueError` saying which field is wrong, never `KeyError`/`TypeError` from deep inside.

Choices worth knowing:
- `Session.reward` is `reward_stats.score` (the session reward, in [0, 1]); the per-step `reward` is a
  placeholder the runtime writes before judging and is deliberately not exposed on `Step`.
- Review status and reward are read from the top-level fields only, never from the copies inside
  `session_metadata`: the copies can be stale (the reviewer updates the column), and gating must not be
  loosened by a stale copy. A record without a top-level `review_status` counts as not approved.
- Missing optional fields are normal (older exports); a missing or empty `task` is an error.
- The fields the session filters read (filters.py) have their own readers here (`review_status_of`,
  `status_of`, `learning_key_of`, `created_at_of`, `reward_of`), used by the parser too: a filter and the
  parsed `Session` read the same value, and a filter can read its field without parsing the rest.

Left out: the adaptive summary, triage dossier and learning history are not given typed fields; they
stay available in `Session.raw`, the record as read. The judge audit is dropped unless asked for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Session", "Step", "TrajectoryEvent", "created_at_of", "learning_key_of", "metadata_of", "parse_session",
    "review_status_of", "reward_of", "status_of",
]  # fmt: skip


@dataclass(frozen=True)
class TrajectoryEvent:
    """One runtime telemetry event; `actor` is "student" | "teacher" | "reward" (or None when unset)."""

    id: int | None
    created_at: datetime | None
    actor: str | None
    event_type: str | None
    name: str | None
    event: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Step:
    """One executed plan step: the student's transcript, its output and the teacher's verdict."""

    step_id: int | None
    description: str
    trace: str
    output: str
    tool: str | None
    tool_params: dict[str, Any]
    validation: dict[str, Any]
    guidance: tuple[str, ...]
    attempts: int | None
    metadata: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Session:
    """One agent session as training needs it; `raw` is the whole record for anything else.

    `reward` is the session score or None when the session was never scored. `execution_mode` is the
    runtime's supervision lane (auto | paired | coach), not `plan["execution_mode"]`. `events` is None
    unless trajectory events were asked for (`include_events=True`).
    """

    session_id: int | None
    task: str
    final_answer: str
    reward: float | None
    review_status: str | None
    status: str | None
    execution_mode: str | None
    learning_key: str | None
    plan: dict[str, Any]
    steps: tuple[Step, ...]
    teacher_notes: tuple[str, ...]
    student_learning: str | None
    teacher_learning: str | None
    review_notes: str | None
    created_at: datetime | None
    completed_at: datetime | None
    metadata: dict[str, Any] = field(repr=False)
    events: tuple[TrajectoryEvent, ...] | None = field(default=None, repr=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def escalated(self) -> bool:
        """Whether any session judge escalated to the arbiter (a sign the tier-1 judges disagreed)."""
        reward = self.raw.get("session_reward")
        judges = reward.get("judges") if isinstance(reward, dict) else None
        return isinstance(judges, list) and any(isinstance(j, dict) and j.get("escalated") for j in judges)


def parse_session(record: Any, *, include_events: bool = False, include_audit: bool = False) -> Session:
    """Parse one export-shaped record; `ValueError` names the offending field.

    Without `include_audit` the judge audit (`reward_audit`: every judge prompt and response, often the
    largest part of a record and never training data) is left out of `raw` and `metadata`.
    """
    meta = metadata_of(record)
    task = record.get("task")
    if not isinstance(task, str) or not task.strip():
        raise ValueError("missing or empty 'task' (every session record needs the task text)")

    session_id = meta.get("session_id")
    if session_id is not None and (not isinstance(session_id, int) or isinstance(session_id, bool)):
        raise ValueError(f"session_metadata.session_id must be an integer, got {session_id!r}")

    events = None
    if include_events:
        raw_events = record.get("trajectory_events", meta.get("trajectory_events"))
        if raw_events is None:
            raw_events = []
        if not isinstance(raw_events, list):
            raise ValueError("'trajectory_events' must be a list")
        events = tuple(_parse_event(e, i) for i, e in enumerate(raw_events))

    raw_steps = record.get("steps")
    if raw_steps is None:
        raw_steps = []
    if not isinstance(raw_steps, list):
        raise ValueError("'steps' must be a list of step records")

    return Session(
        session_id=session_id,
        task=task,
        final_answer=_str(record, "final_answer") or "",
        reward=reward_of(record),
        review_status=review_status_of(record),
        status=status_of(record),
        execution_mode=_str(record, "execution_mode") or _str(meta, "execution_mode", "session_metadata."),
        learning_key=learning_key_of(record),
        plan=_dict(record, "plan"),
        steps=tuple(_parse_step(s, i) for i, s in enumerate(raw_steps)),
        teacher_notes=_str_list(record, "teacher_notes"),
        student_learning=_str(record, "student_learning"),
        teacher_learning=_str(record, "teacher_learning"),
        review_notes=_str(record, "review_notes"),
        created_at=created_at_of(record),
        completed_at=_time(meta, "completed_at", "session_metadata."),
        # The events are a field of their own (and absent from the Postgres metadata column).
        metadata=_without(meta, ("trajectory_events",) if include_audit else ("trajectory_events", "reward_audit")),
        events=events,
        raw=record if include_audit else _without(record, ("reward_audit",)),
    )


def metadata_of(record: Any) -> dict[str, Any]:
    """`session_metadata` of a record that must be a JSON object ({} when absent)."""
    if not isinstance(record, dict):
        raise ValueError(f"a session record must be a JSON object, got {type(record).__name__}")
    return _dict(record, "session_metadata")


def review_status_of(record: dict[str, Any]) -> str | None:
    return _str(record, "review_status")


def status_of(record: dict[str, Any]) -> str | None:
    return _str(metadata_of(record), "status", "session_metadata.")


def learning_key_of(record: dict[str, Any]) -> str | None:
    return _str(record, "learning_key") or _str(metadata_of(record), "learning_key", "session_metadata.")


def created_at_of(record: dict[str, Any]) -> datetime | None:
    return _time(metadata_of(record), "created_at", "session_metadata.")


def reward_of(record: dict[str, Any]) -> float | None:
    """The session reward, `reward_stats.score`: None when unscored, a finite number in [0, 1] otherwise."""
    stats = record.get("reward_stats")
    if stats is None:
        return None
    if not isinstance(stats, dict):
        raise ValueError(f"'reward_stats' must be an object, got {type(stats).__name__}")
    score = stats.get("score")
    if score is None:
        return None
    if isinstance(score, bool) or not isinstance(score, int | float) or (
            isinstance(score, float) and not math.isfinite(score)):
        raise ValueError(f"reward_stats.score must be a finite number, got {str(score)[:40]!r}")
    if not 0.0 <= score <= 1.0:  # compared as is: a JSON integer can exceed float's range
        raise ValueError(f"reward_stats.score must lie in [0, 1], got {str(score)[:40]}")
    return float(score)


def _parse_step(step: Any, index: int) -> Step:
    if not isinstance(step, dict):
        raise ValueError(f"steps[{index}] must be an object, got {type(step).__name__}")
    where = f"steps[{index}]."
    step_id = step.get("step_id")
    if step_id is not None and (not isinstance(step_id, int) or isinstance(step_id, bool)):
        raise ValueError(f"{where}step_id must be an integer, got {step_id!r}")
    attempts = step.get("attempts")
    if attempts is not None and (not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0):
        raise ValueError(f"{where}attempts must be a non-negative integer, got {attempts!r}")
    return Step(
        step_id=step_id,
        description=_str(step, "description", where) or "",
        trace=_str(step, "trace", where) or "",
        output=_str(step, "output", where) or "",
        tool=_str(step, "tool", where),
        tool_params=_dict(step, "tool_params", where),
        validation=_dict(step, "validation", where),
        guidance=_str_list(step, "guidance", where),
        attempts=attempts,
        metadata=_dict(step, "metadata", where),
    )


def _parse_event(entry: Any, index: int) -> TrajectoryEvent:
    where = f"trajectory_events[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be an object, got {type(entry).__name__}")
    event = entry.get("event")
    if isinstance(event, str):
        # Older SDK versions stored the event JSON-encoded inside the JSON document.
        try:
            event = json.loads(event)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}.event is a string but not valid JSON ({exc.msg})") from None
    if event is None:
        event = {}
    if not isinstance(event, dict):
        raise ValueError(f"{where}.event must be an object or a JSON string of one")
    event_id = entry.get("id")
    if event_id is not None and (not isinstance(event_id, int) or isinstance(event_id, bool)):
        raise ValueError(f"{where}.id must be an integer, got {event_id!r}")
    payload = event.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    payload_meta = payload.get("metadata")
    payload_meta = payload_meta if isinstance(payload_meta, dict) else {}
    # The actor is nested in the payload's metadata; the top of `event` has no actor field.
    actor = payload_meta.get("actor")
    return TrajectoryEvent(
        id=event_id,
        created_at=_time(entry, "created_at", where + "."),
        actor=actor if isinstance(actor, str) else None,
        event_type=_as_str_or_none(payload.get("event_type")),
        name=_as_str_or_none(payload.get("name")),
        event=event,
    )


def _without(d: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """`d` minus `keys`: `d` itself when it has none of them (the common case: no copy)."""
    if not any(k in d for k in keys):
        return d
    return {k: v for k, v in d.items() if k not in keys}


def _str(d: dict[str, Any], key: str, where: str = "") -> str | None:
    value = d.get(key)
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"'{where}{key}' must be a string, got {type(value).__name__}")


def _dict(d: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = d.get(key)
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise ValueError(f"'{where}{key}' must be an object, got {type(value).__name__}")


def _str_list(d: dict[str, Any], key: str, where: str = "") -> tuple[str, ...]:
    value = d.get(key)
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"'{where}{key}' must be a list of strings")


def _as_str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _time(d: dict[str, Any], key: str, where: str = "") -> datetime | None:
    value = d.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"'{where}{key}' is not an ISO-8601 timestamp: {value[:40]!r}") from None
    else:
        raise ValueError(f"'{where}{key}' must be an ISO-8601 string, got {type(value).__name__}")
    # The SDK writes aware UTC timestamps; a naive one can only mean UTC as well.
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
