"""Throwaway PostgreSQL servers for the traces tests and bench/traces.py, and the runtime SDK's tables.

`PostgresServer` runs `initdb` + `pg_ctl` from the local PostgreSQL binaries into a temporary directory,
on a free loopback port (no Unix socket outside that directory), with durability off because the data
is disposable. Run as root (as CI is), the binaries run as the `postgres` user, which owns the data
directory. `stop()` stops the server and deletes the directory.

`create_sdk_schema` creates the SDK's tables and indexes from the DDL in docs/runtime-traces.md, and
`copy_records` stores export-shaped records in them with COPY, the way the SDK's storage lays them out
(the inverse of the export), so tests and the benchmark can load the same data into JSONL and Postgres.

This module does not import atlas: it is the independent side of the tests.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

SDK_DDL = """
CREATE TABLE sessions (id SERIAL PRIMARY KEY, task TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'running',
    metadata JSONB, final_answer TEXT, reward JSONB, reward_stats JSONB, reward_audit JSONB, student_learning TEXT,
    teacher_learning TEXT, review_status TEXT NOT NULL DEFAULT 'pending', review_notes TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(), completed_at TIMESTAMPTZ);
CREATE TABLE plans (session_id INTEGER PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE, plan JSONB NOT NULL);
CREATE TABLE step_results (session_id INTEGER REFERENCES sessions(id) ON DELETE CASCADE, step_id INTEGER NOT NULL,
    trace TEXT, output TEXT, evaluation JSONB, attempts INTEGER, metadata JSONB, PRIMARY KEY (session_id, step_id));
CREATE TABLE step_attempts (session_id INTEGER REFERENCES sessions(id) ON DELETE CASCADE, step_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL, evaluation JSONB, PRIMARY KEY (session_id, step_id, attempt));
CREATE TABLE guidance_notes (session_id INTEGER REFERENCES sessions(id) ON DELETE CASCADE, step_id INTEGER NOT NULL,
    sequence INTEGER NOT NULL, note TEXT NOT NULL, PRIMARY KEY (session_id, step_id, sequence));
CREATE TABLE trajectory_events (id SERIAL PRIMARY KEY, session_id INTEGER REFERENCES sessions(id) ON DELETE CASCADE,
    event JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT NOW());
CREATE TABLE learning_registry (learning_key TEXT PRIMARY KEY, student_learning TEXT, teacher_learning TEXT,
    metadata JSONB, updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW());
CREATE INDEX sessions_learning_key_idx ON sessions ((metadata->>'learning_key'));
CREATE INDEX sessions_reward_score_idx ON sessions (((reward_stats->>'score')::float));
CREATE INDEX sessions_created_at_idx ON sessions (created_at DESC);
CREATE INDEX trajectory_events_session_idx ON trajectory_events (session_id);
"""

TABLES = ("sessions", "plans", "step_results", "step_attempts", "guidance_notes", "trajectory_events",
          "learning_registry")  # fmt: skip

# Top-level export fields that the SDK keeps inside the sessions.metadata column.
_LIFTED = ("execution_mode", "adaptive_summary", "triage_dossier", "learning_key", "learning_history",
           "teacher_notes", "reward_summary", "drift", "drift_alert")  # fmt: skip


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: a versioned Debian install first, then PATH."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if os.access(os.path.join(candidate, "initdb"), os.X_OK):
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def unavailable_reason() -> str | None:
    """Why a server cannot be started here, or None when it can."""
    if find_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found; install them, e.g. apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' user to run the server as"
    return None


class PostgresServer:
    """A disposable PostgreSQL server; use as a context manager or call start()/stop()."""

    def __init__(self, *, log_statements: bool = False) -> None:
        self.log_statements = log_statements
        self.port = 0
        self.root: Path | None = None

    @property
    def log_path(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "server.log"

    def url(self, dbname: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> PostgresServer:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        bin_dir = find_bin_dir()
        assert bin_dir is not None
        self.root = Path(tempfile.mkdtemp(prefix="atlas-pg-"))
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        data = self.root / "data"
        self._run(bin_dir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        options = [
            "-c listen_addresses=127.0.0.1", f"-k {self.root}",
            # Disposable data: skip durability work, which dominates bulk loads on a small machine.
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
        ]  # fmt: skip
        if self.log_statements:
            options.append("-c log_statement=all")
        for _ in range(3):  # another process may take the free port between probing and binding
            self.port = _free_port()
            try:
                self._run(bin_dir / "pg_ctl", "-D", data, "-l", self.log_path, "-w", "-t", "60",
                          "-o", " ".join([f"-p {self.port}", *options]), "start")  # fmt: skip
                return self
            except subprocess.CalledProcessError:
                continue
        log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        self.stop()
        raise RuntimeError(f"PostgreSQL did not start; server log tail:\n{log}")

    def stop(self) -> None:
        if self.root is None:
            return
        bin_dir = find_bin_dir()
        if bin_dir is not None and (self.root / "data" / "postmaster.pid").exists():
            self._run(bin_dir / "pg_ctl", "-D", self.root / "data", "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, *args: Any, check: bool = True) -> None:
        cmd = [str(a) for a in args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, cmd, result.stdout, result.stderr)


def create_sdk_schema(url: str, reader: str | None = None) -> None:
    """Create the SDK's tables; with `reader`, also a login role that may only SELECT them."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SDK_DDL)
        if reader:
            dbname = conn.info.dbname
            conn.execute(f'CREATE ROLE "{reader}" LOGIN')
            conn.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO "{reader}"')
            conn.execute(f'GRANT USAGE ON SCHEMA public TO "{reader}"')
            conn.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{reader}"')


def copy_records(conn: psycopg.Connection, records: Iterable[dict[str, Any]]) -> int:
    """Store export-shaped records (each with session_metadata.session_id) in the SDK's tables via COPY."""
    sessions, plans, steps, notes, events = [], [], [], [], []
    for record in records:
        meta = dict(record.get("session_metadata") or {})
        sid = meta["session_id"]
        meta.pop("trajectory_events", None)
        for key in _LIFTED:
            if key in record:
                meta[key] = record[key]
        sessions.append((
            sid, record["task"], meta.get("status") or "running", Jsonb(meta), record.get("final_answer"),
            _jsonb(record.get("session_reward")), _jsonb(record.get("reward_stats")),
            _jsonb(record.get("reward_audit")), record.get("student_learning"), record.get("teacher_learning"),
            record.get("review_status") or "pending", record.get("review_notes"),
            meta.get("created_at") or datetime.now(UTC), meta.get("completed_at"),
        ))  # fmt: skip
        if record.get("plan"):
            plans.append((sid, Jsonb(record["plan"])))
        for step in record.get("steps") or []:
            evaluation = {"validation": step.get("validation") or {}, "reward": step.get("reward") or {}}
            steps.append((sid, step["step_id"], step.get("trace"), step.get("output"), Jsonb(evaluation),
                          step.get("attempts"), Jsonb(step.get("metadata") or {})))  # fmt: skip
            notes.extend((sid, step["step_id"], i, n) for i, n in enumerate(step.get("guidance") or []))
        for event in record.get("trajectory_events") or []:
            events.append((event["id"], sid, Jsonb(event["event"]), event.get("created_at") or datetime.now(UTC)))
    with conn.cursor() as cur:
        for table, columns, rows in (
            ("sessions", "id, task, status, metadata, final_answer, reward, reward_stats, reward_audit, "
             "student_learning, teacher_learning, review_status, review_notes, created_at, completed_at", sessions),
            ("plans", "session_id, plan", plans),
            ("step_results", "session_id, step_id, trace, output, evaluation, attempts, metadata", steps),
            ("guidance_notes", "session_id, step_id, sequence, note", notes),
            ("trajectory_events", "id, session_id, event, created_at", events),
        ):  # fmt: skip
            with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        # Explicit ids bypass the sequences; move them past the data as the SDK's own inserts would.
        cur.execute("SELECT setval('sessions_id_seq', GREATEST((SELECT max(id) FROM sessions), 1))")
        cur.execute("SELECT setval('trajectory_events_id_seq', GREATEST((SELECT max(id) FROM trajectory_events), 1))")
    conn.commit()
    return len(sessions)


def table_digest(url: str) -> dict[str, str]:
    """An md5 of every table's full contents, to show that reading changed nothing."""
    digests = {}
    with psycopg.connect(url) as conn:
        for table in TABLES:
            row = conn.execute(f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t")
            digests[table] = row.fetchone()[0]
    return digests


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0
