"""Read the runtime's JSONL export (`.jsonl`, or gzip-compressed `.jsonl.gz`) one line at a time.

One line is one session record; memory does not grow with the file. `read_jsonl` only decodes: it yields
each line's record (or, for a line that is not a JSON document, a ValueError naming the file and the
1-based line, with a hint when the last line is cut short), and None for a whitespace-only line. What to
keep, and what a malformed record means, is decided by traces.py for both sources alike. A gzip stream
that is truncated or corrupt is a ValueError of its own: nothing after it can be read.

Left out: JSON arrays of sessions and plain `.json` files (the SDK never writes them).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["read_jsonl"]


def read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) per line: the decoded JSON, a ValueError for an undecodable line, None for a blank one."""
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as lines:
            for lineno, line in enumerate(lines, 1):
                where = f"{path}:{lineno}"
                if not line.strip():
                    yield where, None
                    continue
                try:
                    yield where, json.loads(line)
                # JSONDecodeError and UnicodeDecodeError are ValueErrors; absurd nesting is a RecursionError.
                except (ValueError, RecursionError) as exc:
                    hint = " (the line is cut short: truncated file?)" if not line.endswith(b"\n") else ""
                    yield where, ValueError(_describe(exc) + hint)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(
            f"{path}: the gzip stream is truncated or corrupt after line {lineno} ({exc}); re-export the file"
        ) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    return str(exc)
