"""Which sessions `load_sessions` keeps: the filters, written once, evaluated in Python and rendered to SQL.

A filter is an entry of `_FILTERS` (operator, reasons) reading a field of `_FIELDS`. A field is written
twice side by side: the reader schema.py's parser uses, over an export record, and the same value in SQL
over a `sessions` row `s`, with the SQL condition under which that reader raises. The operators are
likewise written in both languages side by side (`_OPS`). `Filters.reason` walks the active filters over
a record (JSONL); `Filters.sql` renders the same walk as one CASE expression (Postgres). Both give:

    None        the session passes every filter;
    a reason    the first active filter that rejects it, in the order review_status -> status ->
                learning_key -> created_after -> min_reward: "review_status:<value>" | "review_status:missing",
                "status:<value>" | "status:missing", "learning_key", "created_after", "reward:missing",
                "reward:below_min";
    malformed   a field a filter reads is unusable (a non-numeric score, a learning key that is not a
                string; first of all, the record/metadata must be an object): Python raises the reader's
                ValueError, SQL says 'malformed'.

In SQL each JSON field is guarded by its malformed condition first (a CASE takes its branches in order),
so a bad value is one malformed session, never a cast error that aborts the query. A filter reads only
its own field: a session it rejects is not parsed further, on both sources alike. `created_after` reads
the creation time: the `created_at` column in Postgres, its export copy `session_metadata.created_at` in
JSONL (postgres.py builds the record's copy from the column, so `Session.created_at` is what was filtered).

Left out: filters on other fields (filter the yielded sessions yourself).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from atlas.data.schema import created_at_of, learning_key_of, metadata_of, review_status_of, reward_of, status_of

__all__ = ["Filters"]


@dataclass(frozen=True)
class _Field:
    read: Callable[[dict[str, Any]], Any]  # from an export record; ValueError when the value is unusable
    sql: str  # the same value over the sessions row `s`, NULL when absent
    sql_malformed: str | None = None  # when `read` raises; None where the column cannot hold a bad value


_SCORE = "(s.reward_stats->'score')"
_FIELDS = {
    "review_status": _Field(review_status_of, "s.review_status"),
    "status": _Field(status_of, "s.status"),
    "learning_key": _Field(
        learning_key_of,
        "CASE WHEN jsonb_typeof(s.metadata->'learning_key') = 'string' THEN s.metadata->>'learning_key' END",
        "jsonb_typeof(s.metadata->'learning_key') NOT IN ('string', 'null')",
    ),
    "created_after": _Field(created_at_of, "s.created_at"),
    # A JSON number is read as Python reads it: as the nearest float (rounded through numeric, so a value
    # below float8's range, 1e-400, becomes 0.0 instead of a range error); 1e400 is not finite there.
    "min_reward": _Field(
        reward_of,
        f"round({_SCORE}::numeric, 300)::float8",
        f"CASE WHEN jsonb_typeof(s.reward_stats) NOT IN ('object', 'null') THEN true"
        f" WHEN coalesce(jsonb_typeof({_SCORE}), 'null') = 'null' THEN false"
        f" WHEN jsonb_typeof({_SCORE}) <> 'number' THEN true"
        f" WHEN abs({_SCORE}::numeric) > 1e300 THEN true"
        f" ELSE NOT round({_SCORE}::numeric, 300)::float8 BETWEEN 0 AND 1 END",
    ),
}
_RECORD_MALFORMED = "jsonb_typeof(s.metadata) NOT IN ('object', 'null')"  # metadata_of raises

# operator: (Python test, SQL test over {value} and the parameter %({name})s)
_OPS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "in": (lambda value, allowed: value in allowed, "{value} = ANY(%({name})s)"),
    "=": (operator.eq, "{value} = %({name})s"),
    ">=": (operator.ge, "{value} >= %({name})s"),
}
# filter: (operator, reason when the field is absent, reason when the test fails; "{}" takes the value)
_FILTERS = {
    "review_status": ("in", "review_status:missing", "review_status:{}"),
    "status": ("in", "status:missing", "status:{}"),
    "learning_key": ("=", "learning_key", "learning_key"),
    "created_after": (">=", "created_after", "created_after"),
    "min_reward": (">=", "reward:missing", "reward:below_min"),
}


class Filters:
    """The validated filter arguments of `load_sessions`; None for a filter turns it off."""

    def __init__(
        self,
        review_status: str | Sequence[str] | None = ("approved",),
        min_reward: float | None = None,
        learning_key: str | None = None,
        status: str | Sequence[str] | None = None,
        created_after: datetime | str | None = None,
    ) -> None:
        values = {
            "review_status": _names("review_status", review_status),
            "status": _names("status", status),
            "learning_key": _learning_key(learning_key),
            "created_after": _created_after(created_after),
            "min_reward": _min_reward(min_reward),
        }
        self.active = {name: value for name, value in values.items() if value is not None}

    def reason(self, record: Any) -> str | None:
        """Why the export `record` is rejected (None: it passes); ValueError when a field it reads is bad."""
        metadata_of(record)
        for name, param in self.active.items():
            op, missing, fail = _FILTERS[name]
            value = _FIELDS[name].read(record)
            if value is None:
                return missing
            if not _OPS[op][0](value, param):
                return fail.format(value)
        return None

    def sql(self) -> tuple[str, dict[str, Any]]:
        """The same walk over a `sessions` row `s`: a CASE giving NULL, a reason, or 'malformed'; and its
        parameters (values never enter the SQL text)."""
        whens = [f"WHEN {_RECORD_MALFORMED} THEN 'malformed'"]
        for name in self.active:
            op, missing, fail = _FILTERS[name]
            field = _FIELDS[name]
            if field.sql_malformed:
                whens.append(f"WHEN {field.sql_malformed} THEN 'malformed'")
            whens.append(f"WHEN ({field.sql}) IS NULL THEN {_literal(missing)}")
            test = _OPS[op][1].format(value=f"({field.sql})", name=name)
            assert fail.count("{}") == ("{}" in fail) and fail.endswith("{}") == ("{}" in fail)
            reason = f"{_literal(fail[:-2])} || ({field.sql})" if "{}" in fail else _literal(fail)
            whens.append(f"WHEN NOT ({test}) THEN {reason}")
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.active.items()}
        return "CASE " + " ".join(whens) + " END", params

    def describe(self) -> str:
        shown = {"review_status": "any", **self.active}
        return ", ".join(f"{k}={'|'.join(v) if isinstance(v, tuple) else v}" for k, v in shown.items())


def _literal(text: str) -> str:
    assert "'" not in text and "%" not in text, "reasons are fixed identifiers"
    return f"'{text}'"


def _names(arg: str, value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(
            f"{arg} must be a non-empty string or sequence of strings (or None to accept all), got {value!r}"
        )
    return names


def _min_reward(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"min_reward must be a number in [0, 1] (session rewards lie there), got {value!r}")
    return float(value)


def _learning_key(value: str | None) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"learning_key must be a non-empty string (the sha256 hex key), got {value!r}")
    return value


def _created_after(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"created_after must be a datetime or an ISO-8601 string like 2025-01-31T00:00:00+00:00, "
                f"got {value!r}"
            ) from None
    if not isinstance(value, datetime):
        raise ValueError(f"created_after must be a datetime or an ISO-8601 string, got {value!r}")
    # Session timestamps are UTC; a naive bound is read the same way rather than in local time.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
