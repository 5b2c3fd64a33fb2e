"""Stream sessions from the runtime's JSONL export (`.jsonl`, or gzip-compressed `.jsonl.gz`).

One line is one session record; lines are read one at a time, so memory does not grow with the file.
A line that is not valid JSON, or not a valid session record (see schema.py), raises `ValueError`
naming the file and the 1-based line number; with `on_error="skip"` it is counted under "malformed"
in the report instead, and the first few messages are kept for diagnosis. Whitespace-only lines are
not records: they are counted (`blank_lines`) and ignored.

Left out: JSON arrays of sessions and plain `.json` files (the SDK never writes them).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from atlas.data.gating import LoadReport, ReadOptions, SessionFilter
from atlas.data.schema import Session, parse_session

__all__ = ["iter_jsonl"]


def iter_jsonl(path: Path, filters: SessionFilter, report: LoadReport, options: ReadOptions) -> Iterator[Session]:
    """Yield the sessions of `path` that pass `filters`, recording every exclusion in `report`."""
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as lines:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    report.blank_lines += 1
                    continue
                try:
                    session = parse_session(
                        json.loads(line), include_events=options.include_events, include_audit=options.include_audit
                    )
                # JSONDecodeError and UnicodeDecodeError are ValueErrors; absurd nesting is a RecursionError.
                except (ValueError, RecursionError) as exc:
                    hint = " (the line is cut short: truncated file?)" if not line.endswith(b"\n") else ""
                    report.malformed(f"{path}:{lineno}: {_describe(exc)}{hint}", options.on_error,
                                     "fix or remove the line, or pass on_error='skip' to skip and count it")
                    continue
                if report.admit(session, filters, options.limit):
                    yield session
                    if report.limit_reached:
                        return
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(
            f"{path}: the gzip stream is truncated or corrupt after line {lineno} ({exc}); re-export the file"
        ) from None
    except GeneratorExit:
        report.stopped_early = True
        raise


def _describe(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    return str(exc)
