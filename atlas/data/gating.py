"""Which sessions may be read (`SessionFilter`), and the account of what was not (`LoadReport`).

Both readers apply the same filters in the same order, so an excluded session is counted under the
first reason that rejects it, identically for JSONL (checked here, in Python) and Postgres (checked in
SQL, see postgres.py, which mirrors `SessionFilter.reason` clause by clause):

    review_status -> status -> learning_key -> created_after -> min_reward

Reasons are strings such as "review_status:pending", "review_status:missing", "status:failed",
"learning_key", "created_after", "reward:missing", "reward:below_min", and "malformed" for records
skipped with `on_error="skip"`.

Left out: filters on fields other than these (filter the yielded sessions yourself).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from atlas.data.schema import Session

__all__ = ["LoadReport", "ReadOptions", "SessionFilter"]

# Enough examples of malformed records to diagnose the export without flooding the log.
MAX_ERROR_MESSAGES = 10


@dataclass(frozen=True)
class SessionFilter:
    """Normalised filters; `review_status=None` turns gating off, `status=None` accepts every status."""

    review_status: tuple[str, ...] | None = ("approved",)
    min_reward: float | None = None
    learning_key: str | None = None
    status: tuple[str, ...] | None = None
    created_after: datetime | None = None

    @classmethod
    def from_args(
        cls,
        review_status: str | Sequence[str] | None,
        min_reward: float | None,
        learning_key: str | None,
        status: str | Sequence[str] | None,
        created_after: datetime | str | None,
    ) -> SessionFilter:
        return cls(
            review_status=_names("review_status", review_status),
            min_reward=_min_reward(min_reward),
            learning_key=_learning_key(learning_key),
            status=_names("status", status),
            created_after=_created_after(created_after),
        )

    def reason(self, session: Session) -> str | None:
        """The first filter that rejects `session`, or None when it passes them all."""
        if self.review_status is not None and session.review_status not in self.review_status:
            return f"review_status:{session.review_status or 'missing'}"
        if self.status is not None and session.status not in self.status:
            return f"status:{session.status or 'missing'}"
        if self.learning_key is not None and session.learning_key != self.learning_key:
            return "learning_key"
        if self.created_after is not None and (
            session.created_at is None or session.created_at < self.created_after
        ):
            return "created_after"
        if self.min_reward is not None:
            if session.reward is None:
                return "reward:missing"
            if session.reward < self.min_reward:
                return "reward:below_min"
        return None

    def describe(self) -> str:
        parts = ["review_status=" + ("any" if self.review_status is None else "|".join(self.review_status))]
        if self.status is not None:
            parts.append("status=" + "|".join(self.status))
        if self.learning_key is not None:
            parts.append(f"learning_key={self.learning_key[:12]}...")
        if self.created_after is not None:
            parts.append(f"created_after={self.created_after.isoformat()}")
        if self.min_reward is not None:
            parts.append(f"min_reward={self.min_reward}")
        return ", ".join(parts)


@dataclass(frozen=True)
class ReadOptions:
    """How a reader reads, beyond what it keeps (validated by `load_sessions`)."""

    on_error: str = "raise"
    include_events: bool = False
    include_audit: bool = False
    limit: int | None = None
    batch_size: int = 500


@dataclass
class LoadReport:
    """What one `load_sessions` pass yielded and excluded, by reason; complete once iteration ends.

    With `limit` (or when the caller stops early) the exclusions cover the part of the source that was
    read: the lines before the stop in a file, the sessions up to the last yielded id in Postgres.
    """

    source: str
    filters: SessionFilter
    yielded: int = 0
    excluded: Counter[str] = field(default_factory=Counter)
    blank_lines: int = 0
    errors: list[str] = field(default_factory=list)
    limit_reached: bool = False
    stopped_early: bool = False
    finished: bool = False

    @property
    def total_excluded(self) -> int:
        return sum(self.excluded.values())

    def add_error(self, message: str) -> None:
        self.excluded["malformed"] += 1
        if len(self.errors) < MAX_ERROR_MESSAGES:
            self.errors.append(message)

    def malformed(self, message: str, on_error: str, fix: str) -> None:
        """A record that does not parse: a ValueError saying how to `fix` it, or counted with on_error='skip'."""
        if on_error == "raise":
            raise ValueError(f"{message}; {fix}") from None
        self.add_error(message)

    def admit(self, session: Session, filters: SessionFilter, limit: int | None) -> bool:
        """Count `session` as yielded, or as excluded by its first failing filter (then False)."""
        reason = filters.reason(session)
        if reason is not None:
            self.excluded[reason] += 1
            return False
        self.yielded += 1
        self.limit_reached = limit is not None and self.yielded >= limit
        return True

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.excluded.items())) or "none"
        text = (
            f"{self.source}: yielded {self.yielded} sessions, excluded {self.total_excluded} ({reasons}); "
            f"filters: {self.filters.describe()}"
        )
        if self.blank_lines:
            text += f"; {self.blank_lines} blank lines ignored"
        if self.limit_reached:
            text += "; stopped at the limit"
        if self.stopped_early:
            text += "; stopped early by the caller"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "yielded": self.yielded,
            "excluded": dict(sorted(self.excluded.items())),
            "blank_lines": self.blank_lines,
            "errors": list(self.errors),
            "limit_reached": self.limit_reached,
            "stopped_early": self.stopped_early,
        }


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
