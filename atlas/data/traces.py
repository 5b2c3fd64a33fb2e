"""`load_sessions`: the one entry point that reads runtime sessions, from a JSONL export or Postgres.

    stream = load_sessions("traces.jsonl.gz", min_reward=0.8, status="succeeded")
    for session in stream:
        ...
    stream.report.excluded   # Counter({"review_status:pending": 12, "reward:below_min": 3, ...})

Review gating is on by default on both paths: only `review_status == "approved"` passes unless the
caller asks for other statuses (or `review_status=None`, no gating). Everything not yielded is counted by
reason in `stream.report` (see gating.py) and the summary is logged at INFO on logger "atlas.data" when
the iteration ends; skipped malformed records are logged at WARNING.

The returned `SessionStream` is a one-pass iterator and a context manager: leaving the `with` block (or
`close()`) releases the file or the database connection when the caller stops before the end.

Left out: other sources (object stores, the SDK's HTTP API) and random access; read a JSONL export of
those, or materialise with `list(...)` when random access is needed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType

from atlas.data.gating import LoadReport, ReadOptions, SessionFilter
from atlas.data.jsonl import iter_jsonl
from atlas.data.postgres import iter_postgres, redact_url
from atlas.data.schema import Session

__all__ = ["SessionStream", "load_sessions"]

logger = logging.getLogger("atlas.data")

_URL_SCHEMES = ("postgresql://", "postgres://")


class SessionStream:
    """An iterator of `Session`s with the account of what was excluded (`report`, `excluded`)."""

    def __init__(self, sessions: Generator[Session, None, None], report: LoadReport) -> None:
        self._sessions = sessions
        self.report = report

    @property
    def excluded(self) -> dict[str, int]:
        """Sessions not yielded, by reason (complete once the iteration has ended)."""
        return dict(self.report.excluded)

    def __iter__(self) -> SessionStream:
        return self

    def __next__(self) -> Session:
        return next(self._sessions)

    def close(self) -> None:
        """Stop reading and release the file or connection; the report then covers what was read."""
        self._sessions.close()

    def __enter__(self) -> SessionStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


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
) -> SessionStream:
    """Stream the sessions of `source` that pass every filter, in source order (session id in Postgres).

    source: a `.jsonl` / `.jsonl.gz` path, or a `postgresql://user:pass@host:port/db` URL.
    review_status: accepted review statuses; None disables gating (a missing status never matches).
    min_reward: keep sessions whose reward (`reward_stats.score`) is >= this; unscored ones are excluded.
    learning_key / status / created_after: exact key, accepted statuses, earliest creation time (inclusive).
    limit: stop after this many sessions. include_events: also read the trajectory events.
    include_audit: keep the judge audit (`reward_audit`, every judge prompt and response) in `raw` and
        `metadata`; off by default because it is the bulk of a record and not training data.
    on_error: "raise" (ValueError naming the line or session id) or "skip" (count under "malformed").
    batch_size: Postgres rows fetched per round trip (memory is proportional to it).
    """
    filters = SessionFilter.from_args(review_status, min_reward, learning_key, status, created_after)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    options = ReadOptions(on_error, bool(include_events), bool(include_audit), limit, batch_size)
    if isinstance(source, str) and source.startswith(_URL_SCHEMES):
        report = LoadReport(source=redact_url(source), filters=filters)
        sessions = iter_postgres(source, filters, report, options)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.name.endswith((".jsonl", ".jsonl.gz")):
            raise ValueError(
                f"unsupported trace source {str(source)!r}: pass a .jsonl or .jsonl.gz export "
                "(arc-atlas --output traces.jsonl) or a postgresql:// URL"
            )
        if not path.is_file():
            raise ValueError(f"trace file {str(path)!r} does not exist (or is not a file)")
        report = LoadReport(source=str(path), filters=filters)
        sessions = iter_jsonl(path, filters, report, options)
    else:
        raise ValueError(f"source must be a path or a postgresql:// URL string, got {type(source).__name__}")
    return SessionStream(_reported(sessions, report), report)


def _reported(sessions: Iterator[Session], report: LoadReport) -> Generator[Session, None, None]:
    """Log the report once the reader is done, however it ended (exhausted, limit, closed, error)."""
    failed = True
    try:
        yield from sessions
        failed = False
    except GeneratorExit:
        failed = False
        raise
    finally:
        report.finished = not failed
        for message in report.errors:
            logger.warning("skipped malformed record: %s", message)
        if report.excluded["malformed"] > len(report.errors):
            logger.warning("... and %d more malformed records", report.excluded["malformed"] - len(report.errors))
        if not failed:
            logger.info("%s", report.summary())
