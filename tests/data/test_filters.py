"""The session filters, written once: JSONL and Postgres agree on every combination, a bad value in a
filtered field is one malformed session (never a failed query), and `limit` counts passing sessions."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime

import psycopg
import pytest

from atlas.data import load_sessions
from tests.data.pgserver import copy_records, create_sdk_schema
from tests.data.records import FIXTURES, KEY_B, MALFORMED, generate_records, make_record, write_jsonl

# Record 10 has no review status, which the sessions table cannot hold (NOT NULL, default 'pending').
COMPARABLE = [r for r in FIXTURES if r.get("review_status")] + MALFORMED
_databases = itertools.count()


def postgres(pg_server, records: list[dict]) -> str:
    """A fresh database holding `records`, without the SDK's expression index on the score: that index
    casts every score, so only a store without it (older, or with the index dropped) can hold "high"."""
    url = pg_server.create_database(f"filters_{next(_databases)}")
    create_sdk_schema(url)
    with psycopg.connect(url) as conn:
        conn.execute("DROP INDEX sessions_reward_score_idx")
        copy_records(conn, records)
    return url


@pytest.fixture(scope="module")
def both(pg_server, tmp_path_factory) -> tuple[str, str]:
    return write_jsonl(tmp_path_factory.mktemp("filters") / "both.jsonl", COMPARABLE), postgres(pg_server, COMPARABLE)


@pytest.fixture(params=["jsonl", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    """A function that stores records in the source under test and returns what load_sessions reads."""
    if request.param == "jsonl":
        return lambda records: write_jsonl(tmp_path / "traces.jsonl", records)
    pg_server = request.getfixturevalue("pg_server")
    return lambda records: postgres(pg_server, records)


def ids(sessions) -> list[int]:
    return [s.session_id for s in sessions]


OPTIONS = {
    "review_status": [("approved",), None],
    "min_reward": [None, 0.8],
    "learning_key": [None, KEY_B],
    "status": [None, "succeeded"],
    "created_after": [None, "2025-10-01T12:05:00+00:00"],
}
COMBINATIONS = [dict(zip(OPTIONS, values)) for values in itertools.product(*OPTIONS.values())]


@pytest.mark.postgres
@pytest.mark.parametrize("kwargs", COMBINATIONS,
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items() if v) or "no-filter")
def test_jsonl_and_postgres_agree_on_every_filter_combination(both, kwargs):
    jsonl, url = both
    for limit in (None, 3):
        from_file = load_sessions(jsonl, limit=limit, on_error="skip", **kwargs)
        from_db = load_sessions(url, limit=limit, on_error="skip", **kwargs)
        a, b = list(from_file), list(from_db)
        assert ids(a) == ids(b) and a == b  # every field but `raw`
        assert from_file.excluded == from_db.excluded and len(from_file.errors) == len(from_db.errors)
        if limit is None:  # everything was read: every session is accounted for
            assert from_file.yielded + sum(from_file.excluded.values()) == len(COMPARABLE)
            malformed = from_file.excluded["malformed"]
    # without on_error="skip", a malformed session stops both readers, or neither
    raised = []
    for source in (jsonl, url):
        try:
            list(load_sessions(source, **kwargs))
        except ValueError as exc:
            raised.append(str(exc))
    assert len(raised) in (0, 2) and (len(raised) == 2) == (malformed > 0)


@pytest.mark.postgres
def test_the_agreement_is_not_vacuous(both):
    """What the combinations above compare, checked once against the records themselves."""
    jsonl, _ = both
    every = load_sessions(jsonl, review_status=None, on_error="skip")
    assert ids(every) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 15, 19]
    # 12: score "high", 13: plan [1], 14: learning key 5, 16: score 1.5, 17: reward_stats "n/a", 18: 10**400
    assert every.excluded == {"malformed": 6}
    gated = load_sessions(jsonl, min_reward=0.8, learning_key=KEY_B, on_error="skip")
    assert ids(gated) == [11, 19]
    # the key filter rejects 12, 13, 15-18 before their scores are read; 14's key and nothing else is bad
    assert gated.excluded == {"learning_key": 12, "review_status:pending": 1, "review_status:quarantined": 1,
                              "reward:missing": 1, "malformed": 1}  # fmt: skip


def test_a_non_numeric_score_is_one_malformed_session(store):
    records = copy.deepcopy(FIXTURES[:3])
    records[1]["reward_stats"]["score"] = "high"
    source = store(records)
    for kwargs in ({}, {"min_reward": 0.5}):  # parsed after the filters, or read by a filter
        with pytest.raises(ValueError, match=r"(session id 2|traces\.jsonl:2): reward_stats\.score must be a "
                                             r"finite number, got 'high'.*on_error='skip'"):
            list(load_sessions(source, **kwargs))
        sessions = load_sessions(source, on_error="skip", **kwargs)
        assert ids(sessions) == [1, 3] and sessions.excluded == {"malformed": 1}
        assert "'high'" in sessions.errors[0]


def test_limit_counts_sessions_that_pass_every_filter(store):
    records = generate_records(60, seed=5)
    for r in records[:12]:  # the first passing sessions lie among the malformed ones
        r["review_status"] = r["session_metadata"]["review_status"] = "approved"
        r["session_metadata"]["status"] = "succeeded"
        r["reward_stats"] = r["session_metadata"]["reward_stats"] = {"score": 0.9}
    records[2]["plan"] = [1]  # passes the filters (in SQL too), then fails to parse
    records[4]["reward_stats"]["score"] = "n/a"  # read by the min_reward filter
    source = store(records)
    # an independent reading of the same records: approved, succeeded, well formed, reward >= 0.5
    want = [r["session_metadata"]["session_id"] for r in records
            if r.get("review_status") == "approved" and r["session_metadata"]["status"] == "succeeded"
            and isinstance(r["plan"], dict) and isinstance((r.get("reward_stats") or {}).get("score"), float)
            and r["reward_stats"]["score"] >= 0.5]  # fmt: skip
    assert len(want) >= 10
    for limit in (5, 10):
        sessions = load_sessions(source, min_reward=0.5, status="succeeded", limit=limit, on_error="skip")
        assert ids(sessions) == want[:limit] and sessions.limit_reached
        assert sessions.excluded["malformed"] == 2


@pytest.mark.postgres
def test_created_at_is_the_column_for_the_filter_and_the_session(pg_server):
    record = make_record(1, "What is 6 times 7?", created_at=datetime(2025, 10, 1, tzinfo=UTC))
    url = postgres(pg_server, [record])
    with psycopg.connect(url) as conn:  # a stale copy in the metadata column
        conn.execute("UPDATE sessions SET metadata = jsonb_set(metadata, '{created_at}', '\"2020-01-01T00:00:00Z\"')")
    (session,) = load_sessions(url, created_after="2025-09-01T00:00:00+00:00")
    assert session.created_at == datetime(2025, 10, 1, tzinfo=UTC)
    assert ids(load_sessions(url, created_after="2025-10-02T00:00:00+00:00")) == []


@pytest.mark.postgres
def test_json_numbers_beyond_float_range_do_not_fail_the_query(pg_server):
    url = postgres(pg_server, [make_record(i, f"task {i}") for i in (1, 2, 3)])
    with psycopg.connect(url) as conn:
        conn.execute("""UPDATE sessions SET reward_stats = '{"score": 1e-400}' WHERE id = 1""")
        conn.execute("""UPDATE sessions SET reward_stats = '{"score": 1e400}' WHERE id = 2""")
        conn.execute("""UPDATE sessions SET metadata = '"a string"' WHERE id = 3""")
    sessions = load_sessions(url, min_reward=0.0, on_error="skip")
    assert [(s.session_id, s.reward) for s in sessions] == [(1, 0.0)]  # 1e-400 reads as 0.0, as in Python
    assert sessions.excluded == {"malformed": 2}
    below = load_sessions(url, min_reward=0.5, on_error="skip")
    assert ids(below) == [] and below.excluded == {"reward:below_min": 1, "malformed": 2}
