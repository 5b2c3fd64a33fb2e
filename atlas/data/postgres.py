"""Read sessions from the runtime's Postgres store: read-only, filtered in SQL, in batches.

How it reads (psycopg 3):
- one READ ONLY, REPEATABLE READ transaction: the database cannot be written through this connection,
  and every query below sees the same snapshot, so the exclusion counts match the streamed sessions;
- the filters are filters.py's CASE expression over each `sessions` row (its values bound as parameters):
  only sessions that pass it, or that it finds malformed, leave the server, so gated sessions never do;
  there is no SQL LIMIT, because a session that passes the filters can still fail to parse (traces.py
  stops reading once it has yielded `limit` sessions);
- a server-side (named) cursor over `sessions JOIN plans`, fetched `batch_size` rows at a time, so memory
  stays flat however many sessions match;
- per batch, one query each for step results, guidance notes and (only with `include_events=True`)
  trajectory events, with `session_id = ANY(batch ids)`: four queries per batch, never one per session;
- each session is assembled into the SDK export's record shape (the columns are the truth for id,
  status, review status and timestamps), which traces.py parses with the parser the JSONL path uses, so
  both sources give the same `Session` for the same data;
- the judge audit (`reward_audit`, with its copy in the metadata column) is only sent with
  `include_audit=True`: it is the bulk of a session's bytes and never training data;
- the sessions the filters excluded are counted by reason in one GROUP BY over the same CASE when the
  reading ends: all of them, or, when the caller stopped early, those up to the last session read.
Only SELECT is needed. A connection failure raises `ConnectionError` naming host, port, database and
user; the password never appears in messages or logs (`redact_url`).

Left out: `step_attempts` and `learning_registry` (not needed to train), writing anything, and the SDK's
expression indexes (the guarded filter expressions are not the indexed ones; a training read scans the
table anyway).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import psycopg

from atlas.data.filters import Filters

__all__ = ["read_postgres", "redact_url"]

# Per batch: step rows by session id, guidance notes by (session id, step id), events by session id.
_Children = tuple[
    dict[int, list[tuple[Any, ...]]], dict[tuple[int, int], list[str]], dict[int, list[dict[str, Any]]] | None
]

# Fields the SDK keeps in the metadata column and its export lifts to the top level of the record.
_LIFTED = (
    "execution_mode", "adaptive_summary", "triage_dossier", "learning_key", "learning_history",
    "teacher_notes", "reward_summary", "drift", "drift_alert",
)  # fmt: skip

# The reward audit (every judge prompt and response) is the largest field and not training data: unless
# asked for, neither the column nor the metadata column's copy of it leaves the server.
_SESSIONS = """
SELECT s.id, s.task, s.status, {metadata}, s.final_answer, s.reward, s.reward_stats, {audit},
       s.student_learning, s.teacher_learning, s.review_status, s.review_notes, s.created_at, s.completed_at,
       p.plan, s.atlas_reason
FROM (SELECT *, {reason} AS atlas_reason FROM sessions s) s LEFT JOIN plans p ON p.session_id = s.id
WHERE s.atlas_reason IS NULL OR s.atlas_reason = 'malformed'
ORDER BY s.id
"""
# Not "metadata - 'reward_audit'" alone: on a metadata column that holds a scalar, that is a query error.
_METADATA_WITHOUT_AUDIT = (
    "CASE WHEN jsonb_typeof(s.metadata) = 'object' THEN s.metadata - 'reward_audit' ELSE s.metadata END")
_STEPS = """
SELECT session_id, step_id, trace, output, evaluation, attempts, metadata FROM step_results
WHERE session_id = ANY(%s::int[]) ORDER BY session_id, step_id
"""
_GUIDANCE = """
SELECT session_id, step_id, note FROM guidance_notes
WHERE session_id = ANY(%s::int[]) ORDER BY session_id, step_id, sequence
"""
_EVENTS = """
SELECT session_id, id, event, created_at FROM trajectory_events
WHERE session_id = ANY(%s::int[]) ORDER BY session_id, created_at, id
"""


def redact_url(url: str) -> str:
    """`url` with its password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def read_postgres(
    url: str, filters: Filters, excluded: Counter[str], *, include_events: bool, include_audit: bool,
    batch_size: int,
) -> Iterator[tuple[str, Any, bool]]:
    """(where, record, malformed in SQL) for each session that passes `filters` in SQL or that SQL finds
    malformed, ordered by id; `record` is a ValueError when the row cannot be assembled. When the reading
    ends or is closed, adds the sessions SQL excluded to `excluded`, by reason."""
    conn, name = _connect(url), redact_url(url)
    reason, params = filters.sql()
    audit = ("s.metadata", "s.reward_audit") if include_audit else (_METADATA_WITHOUT_AUDIT, "NULL")
    query = _SESSIONS.format(metadata=audit[0], audit=audit[1], reason=reason)
    last_id: int | None = None
    ended = False  # exhausted, or closed by the caller; not an error (the transaction may be aborted then)
    try:
        with closing(_batches(conn, query, params, batch_size, include_events)) as batches:
            for rows, children in batches:
                for row in rows:
                    last_id = row[0]
                    try:
                        record: Any = _record(row[:-1], *children)
                    except ValueError as exc:
                        record = exc
                    yield f"{name}: session id {row[0]}", record, row[-1] == "malformed"
        ended, last_id = True, None
    except GeneratorExit:
        ended = True
        raise
    finally:
        try:
            if ended:
                excluded.update(_count_excluded(conn, reason, params, last_id))
        finally:
            conn.close()


def _batches(
    conn: psycopg.Connection, query: str, params: dict[str, Any], batch_size: int, include_events: bool
) -> Iterator[tuple[list[tuple[Any, ...]], _Children]]:
    """Session rows from the server-side cursor, `batch_size` at a time, each with its batch's children."""
    with conn.cursor(name="atlas_load_sessions") as cursor:
        cursor.execute(query, params)
        while rows := cursor.fetchmany(batch_size):
            yield rows, _fetch_children(conn, [row[0] for row in rows], include_events)


def _count_excluded(
    conn: psycopg.Connection, reason: str, params: dict[str, Any], through_id: int | None
) -> dict[str, int]:
    """Sessions the filters exclude, by reason (all, or those with id <= through_id)."""
    bound = "" if through_id is None else " WHERE s.id <= %(through_id)s"
    query = (f"SELECT reason, count(*) FROM (SELECT {reason} AS reason FROM sessions s{bound}) r "
             "WHERE reason <> 'malformed' GROUP BY reason")
    return dict(conn.execute(query, {**params, "through_id": through_id}).fetchall())


def _connect(url: str) -> psycopg.Connection:
    # imported here, when a database is opened: reading JSONL and training need no Postgres driver
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.types.json import set_json_loads

    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"not a valid PostgreSQL URL: {redact_url(url)} ({exc})") from None
    where = (
        f"database {info.get('dbname') or '(default)'!r} at host {info.get('host') or 'localhost'} "
        f"port {info.get('port') or 5432} as user {info.get('user') or '(default)'!r}"
    )
    extra = {} if "connect_timeout" in info else {"connect_timeout": 15}
    try:
        conn = psycopg.connect(url, **extra)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip()
        password = info.get("password")
        if password:
            reason = reason.replace(str(password), "***")
        raise ConnectionError(f"could not connect to PostgreSQL {where}: {reason}") from None
    # psycopg hands JSON over as bytes and json.loads then sniffs their encoding on every value; the
    # server sends UTF-8, so decode directly (a measurable share of the time per session).
    set_json_loads(_json_loads, conn)
    # Set before the first statement, so the implicit BEGIN opens a read-only snapshot transaction.
    conn.read_only = True
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    # Timestamps render as UTC, like the SDK's export; SET LOCAL is allowed in a read-only transaction.
    conn.execute("SET LOCAL TIME ZONE 'UTC'")
    return conn


def _fetch_children(conn: psycopg.Connection, ids: list[int], include_events: bool) -> _Children:
    """Step results, guidance notes and (optionally) events of a batch of sessions: one query each."""
    steps: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
    for row in conn.execute(_STEPS, (ids,)):
        steps[row[0]].append(row)
    guidance: dict[tuple[int, int], list[str]] = defaultdict(list)
    for session_id, step_id, note in conn.execute(_GUIDANCE, (ids,)):
        guidance[session_id, step_id].append(note)
    if not include_events:
        return steps, guidance, None
    events: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for session_id, event_id, event, created_at in conn.execute(_EVENTS, (ids,)):
        events[session_id].append({"id": event_id, "event": event, "created_at": _iso(created_at)})
    return steps, guidance, events


def _record(
    row: tuple[Any, ...],
    steps: dict[int, list[tuple[Any, ...]]],
    guidance: dict[tuple[int, int], list[str]],
    events: dict[int, list[dict[str, Any]]] | None,
) -> dict[str, Any]:
    """One session row and its children in the SDK export's record shape."""
    (session_id, task, status, metadata, final_answer, reward, reward_stats, reward_audit,
     student_learning, teacher_learning, review_status, review_notes, created_at, completed_at, plan) = row  # fmt: skip
    meta = _object(metadata, "the metadata column")  # freshly decoded for this row: ours to complete
    # As the SDK's export: the columns are the truth for id, status and review; timestamps only fill gaps.
    meta["session_id"] = session_id
    meta["status"] = status
    if created_at is not None:  # the column the SQL filter reads: Session.created_at must be the same value
        meta["created_at"] = _iso(created_at)
    if completed_at is not None:
        meta["completed_at"] = _iso(completed_at)
    meta["review_status"] = review_status
    if reward_stats is not None:
        meta["reward_stats"] = reward_stats
    if reward_audit is not None:
        meta["reward_audit"] = reward_audit

    plan = _object(plan, "plans.plan")
    plan_steps = plan.get("steps")
    by_id = (
        {p["id"]: p for p in plan_steps if isinstance(p, dict) and isinstance(p.get("id"), int)}
        if isinstance(plan_steps, list)
        else {}
    )
    record: dict[str, Any] = {
        "task": task,
        "final_answer": final_answer or "",
        "plan": plan,
        "steps": [
            _step(r, by_id.get(r[1]) or {}, guidance.get((session_id, r[1]), [])) for r in steps.get(session_id, [])
        ],
        "session_metadata": meta,
        "review_status": review_status,
    }
    if reward_stats is not None:  # even when empty or of the wrong type: the filter's SQL reads it as it is
        record["reward_stats"] = reward_stats
    for key, value in (
        ("review_notes", review_notes), ("session_reward", reward), ("reward_audit", reward_audit),
        ("student_learning", student_learning), ("teacher_learning", teacher_learning),
    ):  # fmt: skip
        if value not in (None, "", [], {}):
            record[key] = value
    for key in _LIFTED:
        value = meta.get(key)
        if value is not None and value not in ("", [], {}):
            record[key] = value
    if events is not None:
        record["trajectory_events"] = events.get(session_id, [])
    return record


def _step(row: tuple[Any, ...], plan_step: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    _, step_id, trace, output, evaluation, attempts, metadata = row
    evaluation = _object(evaluation, f"step_results.evaluation of step {step_id}")
    metadata = _object(metadata, f"step_results.metadata of step {step_id}")
    step = {
        "step_id": step_id,
        "description": plan_step.get("description") or "",
        "trace": trace or "",
        "output": output or "",
        "reward": evaluation.get("reward") or {},
        "tool": plan_step.get("tool"),
        "tool_params": plan_step.get("tool_params") or {},
        "validation": evaluation.get("validation") or {},
        "attempts": attempts,
        "guidance": notes,
        "metadata": metadata,
    }
    # The SDK's export copies the step metadata's keys onto the step (deliverable, runtime, usage, ...).
    for key, value in metadata.items():
        step.setdefault(key, value)
    return step


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what} must hold a JSON object, got {type(value).__name__}")
    return value


_decode_json = json.JSONDecoder().decode


def _json_loads(data: bytes | memoryview) -> Any:
    return _decode_json(str(data, "utf-8"))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
