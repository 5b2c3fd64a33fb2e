"""`load_sessions`: the one entry point that reads runtime sessions, from a JSONL export or Postgres.

    sessions = load_sessions("traces.jsonl.gz", min_reward=0.8, status="succeeded")
    for session in sessions:
        ...
    sessions.yielded, sessions.excluded   # 412, Counter({"review_status:pending": 12, "malformed": 1, ...})

Review gating is on by default: only `review_status == "approved"` passes unless other statuses are asked
for (`review_status=None`: no gating). The filters are filters.py's single definition, in Python over
each JSONL record and in SQL over each Postgres row; then every record takes the same steps on both:

    not a JSON object, or a field a filter reads is unusable  -> malformed
    rejected by a filter                                      -> excluded[reason]
    does not parse into a Session (schema.py)                 -> malformed
    otherwise                                                 -> yielded, until `limit` have been

A malformed record raises ValueError naming the file and line or the session id (on_error="raise"); with
on_error="skip" it is counted in excluded["malformed"], its message kept in `errors` (the first 10) and
logged at WARNING. `limit` counts yielded sessions, so `limit` come back whenever the source has them.

The returned `Sessions` is a one-pass iterator and a context manager (leaving the `with` block, or
`close()`, releases the file or connection). Once iterated, `yielded`, `excluded` (by reason) and
`blank_lines` are complete, `as_dict()` gives them for a report (`atlas traces stats`, a training run's
provenance) and the summary is logged at INFO on logger "atlas.data". With `limit`, or when the caller
stops early, they cover what was read: the lines before the stop, or the sessions up to the last one read
(an export lists sessions in id order, so the two agree).

Left out: other sources (object stores, the SDK's HTTP API) and random access; read a JSONL export of
those, or materialise with `list(...)` when random access is needed.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from atlas.data.filters import Filters
from atlas.data.jsonl import read_jsonl
from atlas.data.postgres import read_postgres, redact_url
from atlas.data.schema import Session, parse_session

__all__ = ["Sessions", "load_sessions"]

logger = logging.getLogger("atlas.data")

_URL_SCHEMES = ("postgresql://", "postgres://")
MAX_ERRORS = 10  # messages kept of skipped records: enough to diagnose an export without flooding a log


class Sessions:
    """An iterator of `Session`s that keeps the account of what it did not yield (see the module docstring)."""

    def __init__(self, source: str, filters: Filters, rows: Iterator[tuple], excluded: Counter[str], *,
                 limit: int | None, on_error: str, include_events: bool, include_audit: bool) -> None:
        self.source = source
        self.filters = filters
        self.yielded = 0
        self.excluded = excluded
        self.errors: list[str] = []
        self.blank_lines = 0
        self.limit_reached = False
        self._rows = rows
        self._limit, self._on_error = limit, on_error
        self._parse = {"include_events": include_events, "include_audit": include_audit}
        self._sessions = self._read()

    def __iter__(self) -> Sessions:
        return self

    def __next__(self) -> Session:
        return next(self._sessions)

    def close(self) -> None:
        """Stop reading and release the file or connection; the counts then cover what was read."""
        self._sessions.close()

    def __enter__(self) -> Sessions:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _read(self) -> Iterator[Session]:
        try:
            # a row: (where, record | ValueError | None for a blank line[, whether SQL found it malformed])
            for where, record, *sql_malformed in self._rows:
                if record is None:
                    self.blank_lines += 1
                    continue
                try:
                    if isinstance(record, ValueError):
                        raise record
                    reason = self.filters.reason(record)
                    # SQL already applied the same filters: getting here, it must have let the row through
                    assert not sql_malformed or (reason, sql_malformed[0]) == (None, False), (
                        f"{where}: the SQL filters and the Python ones disagree ({reason})")
                    if reason is not None:
                        self.excluded[reason] += 1
                        continue
                    session = parse_session(record, **self._parse)
                except ValueError as exc:
                    self._malformed(f"{where}: {exc}")
                    continue
                self.yielded += 1
                yield session
                if self.yielded == self._limit:
                    self.limit_reached = True
                    return
        finally:
            self._rows.close()  # the Postgres reader counts what SQL excluded as it closes
            logger.info("%s", self.summary())

    def _malformed(self, message: str) -> None:
        if self._on_error == "raise":
            raise ValueError(
                f"{message}; fix or remove the record, or pass on_error='skip' to skip and count it") from None
        self.excluded["malformed"] += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)
            logger.warning("skipped malformed record: %s", message)
        elif self.excluded["malformed"] == MAX_ERRORS + 1:
            logger.warning("more malformed records skipped: see the 'malformed' count")

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.excluded.items())) or "none"
        return (f"{self.source}: yielded {self.yielded} sessions, excluded {sum(self.excluded.values())} "
                f"({reasons}); filters: {self.filters.describe()}; {self.blank_lines} blank lines"
                + ("; stopped at the limit" if self.limit_reached else ""))

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "filters": self.filters.describe(),
            "yielded": self.yielded,
            "excluded": dict(sorted(self.excluded.items())),
            "blank_lines": self.blank_lines,
            "errors": list(self.errors),
            "limit_reached": self.limit_reached,
        }


def load_sessions(
    source: str | os.PathLike[str],
    review_status: str | Sequence[str] | None = ("approved",),
    min_reward: float | None = None,
    learning_key: str | None = None,
    status: str | Sequence[str] | None = None,
    limit: int | None = None,
    *,
    created_after: datetime | str | None = None,
    include_events: bool = False,
    include_audit: bool = False,
    on_error: str = "raise",
    batch_size: int = 500,
) -> Sessions:
    """Stream the sessions of `source` that pass every filter, in source order (session id in Postgres).

    source: a `.jsonl` / `.jsonl.gz` path, or a `postgresql://user:pass@host:port/db` URL.
    review_status: accepted review statuses; None disables gating (a missing status never matches).
    min_reward: keep sessions whose reward (`reward_stats.score`) is >= this; unscored ones are excluded.
    learning_key / status / created_after: exact key, accepted statuses, earliest creation time (inclusive).
    limit: stop once this many sessions have been yielded. include_events: also read the trajectory events.
    include_audit: keep the judge audit (`reward_audit`, every judge prompt and response) in `raw` and
        `metadata`; off by default because it is the bulk of a record and not training data.
    on_error: "raise" (ValueError naming the line or session id) or "skip" (count under "malformed").
    batch_size: Postgres rows fetched per round trip (memory is proportional to it).
    """
    filters = Filters(review_status, min_reward, learning_key, status, created_after)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    excluded: Counter[str] = Counter()
    if isinstance(source, str) and source.startswith(_URL_SCHEMES):
        name = redact_url(source)
        rows: Iterator[tuple] = read_postgres(source, filters, excluded, include_events=bool(include_events),
                                              include_audit=bool(include_audit), batch_size=batch_size)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.name.endswith((".jsonl", ".jsonl.gz")):
            raise ValueError(
                f"unsupported trace source {str(source)!r}: pass a .jsonl or .jsonl.gz export "
                "(arc-atlas --output traces.jsonl) or a postgresql:// URL"
            )
        if not path.is_file():
            raise ValueError(f"trace file {str(path)!r} does not exist (or is not a file)")
        name, rows = str(path), read_jsonl(path)
    else:
        raise ValueError(f"source must be a path or a postgresql:// URL string, got {type(source).__name__}")
    return Sessions(name, filters, rows, excluded, limit=limit, on_error=on_error,
                    include_events=bool(include_events), include_audit=bool(include_audit))
