"""Streaming throughput and memory of `atlas.data.load_sessions`, from Postgres and from a JSONL file.

    python bench/traces.py [--sessions 100000] [--batch-size 500] [--repeats 3]

Starts a throwaway PostgreSQL server (tests/data/pgserver.py), loads N generated sessions shaped like
the runtime SDK's (tests/data/records.py: one plan step, judge details, reward audit; about 7 KB of JSON
each, nearly a third of it the judge audit that a default read leaves on the server) with COPY, writes the
same sessions to a JSONL file, then streams every session through `load_sessions(...,
review_status=None)` in a fresh child process per source and reports sessions/s and the peak RSS
growth over the child's RSS before streaming (targets: >= 5,000 sessions/s, < 200 MB).
Also times the default gated pass (approved only, filtered in SQL) from Postgres.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script from anywhere: the repository root holds both atlas and the tests' helpers.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHUNK = 5000


def status_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MiB; VmHWM belongs to this image, unlike ru_maxrss,
    which Linux carries over from the parent across exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(source: str, batch_size: int, gated: bool) -> dict:
    """Stream every session of `source` once; runs in a child so earlier allocations do not count."""
    from atlas.data import load_sessions  # imported first: module code is not streaming memory

    before = status_mb("VmRSS")
    start = time.perf_counter()
    kwargs = {} if gated else {"review_status": None}
    stream = load_sessions(source, batch_size=batch_size, **kwargs)
    n = chars = 0
    for session in stream:
        n += 1
        chars += len(session.task) + len(session.final_answer) + sum(len(s.trace) for s in session.steps)
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    return {"sessions": n, "seconds": seconds, "sessions_per_s": n / seconds, "rss_before_mb": before,
            "peak_rss_growth_mb": peak - before, "excluded": stream.excluded}  # fmt: skip


def child(source: str, batch_size: int, gated: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--measure", source, "--batch-size", str(batch_size)]
    out = subprocess.run(cmd + (["--gated"] if gated else []), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--gated", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.batch_size, args.gated)))
        return

    import psycopg

    from tests.data.pgserver import PostgresServer, copy_records, create_sdk_schema
    from tests.data.records import generate_records

    with PostgresServer() as server, tempfile.TemporaryDirectory() as tmp:
        url = server.create_database("bench")
        create_sdk_schema(url)
        jsonl = Path(tmp) / "traces.jsonl"
        start, json_bytes = time.perf_counter(), 0
        with psycopg.connect(url) as conn, open(jsonl, "w", encoding="utf-8") as f:
            for first in range(1, args.sessions + 1, CHUNK):
                records = generate_records(min(CHUNK, args.sessions - first + 1), seed=first, start_id=first)
                copy_records(conn, records)
                for r in records:
                    line = json.dumps(r) + "\n"
                    json_bytes += len(line)
                    f.write(line)
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE")
            db_mb = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 2**20
        print(f"setup: {args.sessions} sessions in {time.perf_counter() - start:.1f} s; "
              f"{json_bytes / args.sessions / 1024:.1f} KB JSON per session, JSONL {json_bytes / 2**20:.0f} MB, "
              f"database {db_mb:.0f} MB")  # fmt: skip
        print(f"load average before: {os.getloadavg()[0]:.1f} (the machine is shared; figures are medians)")
        cases = {
            "postgres (all sessions)": (url, False),
            "postgres (default gating, in SQL)": (url, True),
            "jsonl (all sessions)": (str(jsonl), False),
        }
        runs: dict[str, list[dict]] = {name: [] for name in cases}
        for _ in range(args.repeats):  # interleaved, so a burst of load elsewhere hits every case alike
            for name, (source, gated) in cases.items():
                runs[name].append(child(source, args.batch_size, gated))
    print(f"{'source':36} {'sessions':>9} {'sessions/s (median, min-max)':>30} {'peak RSS growth (max)':>22}")
    for name, rs in runs.items():
        rates = sorted(r["sessions_per_s"] for r in rs)
        growth = max(r["peak_rss_growth_mb"] for r in rs)
        print(f"{name:36} {rs[0]['sessions']:>9} {statistics.median(rates):>12,.0f} "
              f"({rates[0]:,.0f}-{rates[-1]:,.0f}) {growth:>19.1f} MB")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
