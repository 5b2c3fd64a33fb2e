"""load_sessions over a real PostgreSQL server holding the SDK's tables (started by conftest.py)."""

from __future__ import annotations

import copy

import psycopg
import pytest

from atlas.data import load_sessions
from tests.data.pgserver import copy_records, create_sdk_schema, table_digest
from tests.data.records import FIXTURES, KEY_B, generate_records, write_jsonl

pytestmark = pytest.mark.postgres

# Record 10 has no review status, which the sessions table cannot hold (NOT NULL, default 'pending').
COMPARABLE = [r for r in FIXTURES if r.get("review_status")]


def ids(stream) -> list[int]:
    return [s.session_id for s in stream]


def test_default_gating_in_sql(reader_url):
    stream = load_sessions(reader_url)
    assert ids(stream) == [1, 2, 3, 6, 7, 8, 9, 11]
    # Session 10 went in as 'pending', the column's default.
    assert stream.excluded == {"review_status:pending": 2, "review_status:quarantined": 1}
    assert ids(load_sessions(reader_url, review_status="quarantined")) == [5]
    assert ids(load_sessions(reader_url, review_status=None)) == list(range(1, 12))


def test_filters_min_reward_learning_key_status_created_after_limit(reader_url):
    stream = load_sessions(reader_url, min_reward=0.8)
    assert ids(stream) == [1, 2, 8, 11]
    assert stream.excluded["reward:below_min"] == 3 and stream.excluded["reward:missing"] == 1
    assert ids(load_sessions(reader_url, learning_key=KEY_B)) == [7, 11]
    assert ids(load_sessions(reader_url, status="failed")) == [6]
    assert ids(load_sessions(reader_url, created_after="2025-10-01T12:08:00+00:00")) == [8, 9, 11]
    stream = load_sessions(reader_url, limit=4)
    assert ids(stream) == [1, 2, 3, 6] and stream.limit_reached
    # Exclusions cover what was read up to the last yielded session, as on the JSONL path.
    assert stream.excluded == {"review_status:pending": 1, "review_status:quarantined": 1}


# The filters' combinations are compared in test_filters.py; these are the reading options.
@pytest.mark.parametrize(
    "kwargs",
    [{"review_status": None, "include_events": True}, {"include_audit": True, "review_status": None},
     {"review_status": None, "batch_size": 2, "limit": 7}],
)  # fmt: skip
def test_jsonl_and_postgres_give_the_same_sessions(tmp_path, comparable_url, kwargs):
    jsonl = write_jsonl(tmp_path / "same.jsonl", COMPARABLE)
    from_file, from_db = load_sessions(jsonl, **kwargs), load_sessions(comparable_url, **kwargs)
    a, b = list(from_file), list(from_db)
    assert a, "every case yields something"
    assert [s.session_id for s in a] == [s.session_id for s in b]
    assert a == b  # every field but `raw`, including steps, metadata, timestamps and (when asked) events
    assert from_file.excluded == from_db.excluded


@pytest.fixture(scope="module")
def comparable_url(pg_server) -> str:
    url = pg_server.create_database("comparable")
    create_sdk_schema(url)
    with psycopg.connect(url) as conn:
        copy_records(conn, COMPARABLE)
    return url


def test_judge_audit_only_when_asked(reader_url):
    (s,) = [s for s in load_sessions(reader_url) if s.session_id == 2]
    assert "reward_audit" not in s.raw and "reward_audit" not in s.metadata and s.escalated
    (s,) = [s for s in load_sessions(reader_url, include_audit=True) if s.session_id == 2]
    assert [a["stage"] for a in s.raw["reward_audit"]] == ["tier1", "arbiter"]
    assert s.metadata["reward_audit"] == s.raw["reward_audit"]


def test_events_only_when_asked_with_actor_from_the_payload(reader_url):
    (s,) = [s for s in load_sessions(reader_url) if s.session_id == 3]
    assert s.events is None
    (s,) = [s for s in load_sessions(reader_url, include_events=True) if s.session_id == 3]
    assert [e.actor for e in s.events] == ["student", "teacher", "reward"]
    assert [e.id for e in s.events] == [10, 11, 12]


def test_select_only_role_and_database_unchanged(pg_server, pg_url, reader_url):
    before = table_digest(pg_url)
    with psycopg.connect(reader_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM sessions")
    for kwargs in ({}, {"review_status": None, "include_events": True, "batch_size": 2}, {"limit": 1}):
        list(load_sessions(reader_url, **kwargs))
    # Even with a role that could write, the loader's transaction is read-only.
    list(load_sessions(pg_url, review_status=None))
    assert table_digest(pg_url) == before
    log = pg_server.log_path.read_text(errors="replace")
    assert "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" in log
    assert "DECLARE" in log and "FETCH FORWARD 2" in log


def test_filters_are_parameters_not_sql(pg_server, reader_url):
    hostile = "x' OR '1'='1"
    log_before = pg_server.log_path.read_text(errors="replace")
    assert ids(load_sessions(reader_url, learning_key=hostile, review_status=None)) == []
    assert ids(load_sessions(reader_url, review_status=[hostile])) == []
    lines = pg_server.log_path.read_text(errors="replace")[len(log_before):].splitlines()
    bound = [line for line in lines if "DETAIL:  parameters:" in line]
    # The value reaches the server only as a bound parameter, never inside a statement's text.
    assert sum("x'' OR ''1''=''1" in line for line in bound) == 4  # 2 loads x (cursor + exclusion count)
    assert not any("OR '1'" in line or "OR ''1''" in line for line in lines if line not in bound)


def test_batches_fetch_children_in_bulk(pg_server, reader_url):
    log_before = pg_server.log_path.read_text(errors="replace")
    sessions = list(load_sessions(reader_url, review_status=None, batch_size=4, include_events=True))
    assert len(sessions) == 11 and all(len(s.steps) == 1 for s in sessions)
    new = pg_server.log_path.read_text(errors="replace")[len(log_before):]
    # 11 sessions in batches of 4: three batches, one query per child table per batch, never per session.
    assert new.count("FROM step_results") == 3 and new.count("FROM guidance_notes") == 3
    assert new.count("FROM trajectory_events") == 3


def test_stopping_early_releases_the_connection(pg_url, reader_url):
    def reader_connections() -> int:
        with psycopg.connect(pg_url) as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'reader'").fetchone()[0]

    with load_sessions(reader_url, review_status=None, batch_size=2) as stream:
        assert next(stream).session_id == 1
        assert reader_connections() == 1
    assert reader_connections() == 0 and stream.yielded == 1


def test_malformed_row_names_the_session(pg_server):
    url = pg_server.create_database("malformed")
    create_sdk_schema(url)
    good, bad = copy.deepcopy(FIXTURES[0]), copy.deepcopy(FIXTURES[1])
    # A non-numeric score cannot be stored (the SDK's expression index casts it); an out-of-range one can.
    bad["reward_stats"]["score"] = 1.5
    with psycopg.connect(url) as conn:
        copy_records(conn, [good, bad])
    with pytest.raises(ValueError, match=r"session id 2: reward_stats\.score must lie in \[0, 1\]"):
        list(load_sessions(url))
    stream = load_sessions(url, on_error="skip")
    assert ids(stream) == [1] and stream.excluded == {"malformed": 1}


def test_junk_in_json_columns_is_a_value_error(pg_server):
    url = pg_server.create_database("junk")
    create_sdk_schema(url)
    with psycopg.connect(url) as conn:
        copy_records(conn, FIXTURES[:1])
        conn.execute("INSERT INTO sessions (id, task, review_status, metadata) VALUES (2, 't', 'approved', '[1, 2]')")
        conn.execute("INSERT INTO sessions (id, task, review_status) VALUES (3, 't', 'approved')")
        conn.execute("INSERT INTO plans VALUES (3, '\"a plan as a string\"')")
        conn.execute("INSERT INTO sessions (id, task, review_status) VALUES (4, 't', 'approved')")
        conn.execute("INSERT INTO step_results (session_id, step_id, evaluation) VALUES (4, 1, '7')")
        conn.execute("INSERT INTO sessions (id, task, review_status) VALUES (5, 't', 'approved')")
        conn.execute("INSERT INTO trajectory_events (session_id, event) VALUES (5, '[\"not an object\"]')")
        conn.execute("INSERT INTO sessions (id, task, review_status) VALUES (6, 't', 'approved')")
        conn.execute("INSERT INTO plans VALUES (6, '{\"steps\": [{\"id\": [1]}, 3]}')")
    stream = load_sessions(url, on_error="skip", include_events=True)
    assert ids(stream) == [1, 6]
    assert stream.excluded == {"malformed": 4}
    assert [e.split(": ")[1] for e in stream.errors] == [f"session id {i}" for i in (2, 3, 4, 5)]


def test_connection_failure_names_host_port_database_not_password(pg_server):
    url = f"postgresql://atlas:s3cret-pw@127.0.0.1:{pg_server.port}/no_such_db"
    with pytest.raises(ConnectionError) as info:
        next(load_sessions(url))
    message = str(info.value)
    assert "'no_such_db'" in message and "127.0.0.1" in message and str(pg_server.port) in message
    assert "s3cret-pw" not in message and "s3cret-pw" not in repr(info.value.__cause__)
    stream = load_sessions(url)
    assert "s3cret-pw" not in stream.source and "***" in stream.source


def test_many_sessions_stream_in_batches(pg_server):
    url = pg_server.create_database("many")
    create_sdk_schema(url)
    records = generate_records(600, seed=1)
    with psycopg.connect(url) as conn:
        copy_records(conn, records)
    stream = load_sessions(url, review_status=None, batch_size=64)
    assert ids(stream) == list(range(1, 601))
    approved = sum(r["review_status"] == "approved" for r in records)
    assert len(list(load_sessions(url))) == approved
