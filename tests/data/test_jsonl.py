"""load_sessions over JSONL exports: gating, filters, limit, malformed/truncated lines, gzip, the report."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas.data import Sessions, load_sessions
from tests.data.records import FIXTURES, KEY_B, write_jsonl


def ids(stream) -> list[int]:
    return [s.session_id for s in stream]


def test_default_gating_yields_approved_only_and_counts_the_rest(jsonl_path):
    stream = load_sessions(jsonl_path)
    assert isinstance(stream, Sessions)
    assert ids(stream) == [1, 2, 3, 6, 7, 8, 9, 11]
    assert stream.excluded == {"review_status:pending": 1, "review_status:quarantined": 1,
                               "review_status:missing": 1}  # fmt: skip
    assert stream.yielded == 8 and not stream.limit_reached


def test_other_review_statuses_only_when_asked(jsonl_path):
    assert ids(load_sessions(jsonl_path, review_status="pending")) == [4]
    assert ids(load_sessions(jsonl_path, review_status=("approved", "quarantined"))) == [1, 2, 3, 5, 6, 7, 8, 9, 11]
    assert ids(load_sessions(jsonl_path, review_status=None)) == list(range(1, 12))


def test_min_reward_uses_the_session_reward_and_excludes_unscored(jsonl_path):
    stream = load_sessions(jsonl_path, min_reward=0.8)
    assert ids(stream) == [1, 2, 8, 11]
    assert stream.excluded["reward:below_min"] == 3 and stream.excluded["reward:missing"] == 1


def test_gkd_recipe_filters(jsonl_path):
    sessions = list(load_sessions(jsonl_path, min_reward=0.8, status="succeeded"))
    assert all(s.reward >= 0.8 and s.status == "succeeded" and s.review_status == "approved" for s in sessions)


def test_learning_key_status_and_created_after(jsonl_path):
    assert ids(load_sessions(jsonl_path, learning_key=KEY_B)) == [7, 11]
    stream = load_sessions(jsonl_path, status="failed")
    assert ids(stream) == [6] and stream.excluded["status:succeeded"] == 7
    after = datetime(2025, 10, 1, 12, 8, tzinfo=UTC)
    assert ids(load_sessions(jsonl_path, created_after=after)) == [8, 9, 11]
    assert ids(load_sessions(jsonl_path, created_after="2025-10-01T12:08:00")) == [8, 9, 11]  # naive = UTC


def test_limit_stops_reading(jsonl_path):
    stream = load_sessions(jsonl_path, limit=2)
    assert ids(stream) == [1, 2]
    assert stream.limit_reached and stream.excluded == {}
    stream = load_sessions(jsonl_path, limit=4)
    assert ids(stream) == [1, 2, 3, 6]
    assert stream.excluded == {"review_status:pending": 1, "review_status:quarantined": 1}


def test_early_close_and_context_manager(jsonl_path):
    with load_sessions(jsonl_path, review_status=None) as stream:
        assert next(stream).session_id == 1
    assert stream.yielded == 1 and not stream.limit_reached
    with pytest.raises(StopIteration):
        next(stream)


def test_events_only_when_asked(jsonl_path):
    (s,) = [s for s in load_sessions(jsonl_path) if s.session_id == 3]
    assert s.events is None
    (s,) = [s for s in load_sessions(jsonl_path, include_events=True) if s.session_id == 3]
    assert [e.actor for e in s.events] == ["student", "teacher", "reward"]


def test_malformed_line_names_file_and_line(tmp_path):
    lines = [json.dumps(r) for r in FIXTURES[:3]]
    lines.insert(1, '{"task": "broken", ')
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    stream = load_sessions(path)
    assert next(stream).session_id == 1
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON .*on_error='skip'"):
        next(stream)


def test_record_without_task_is_malformed(tmp_path):
    record = dict(FIXTURES[0])
    del record["task"]
    path = write_jsonl(tmp_path / "notask.jsonl", [FIXTURES[1], record])
    with pytest.raises(ValueError, match=r"notask\.jsonl:2: missing or empty 'task'"):
        list(load_sessions(path))


def test_truncated_last_line(tmp_path):
    text = "".join(json.dumps(r) + "\n" for r in FIXTURES[:3])
    path = tmp_path / "cut.jsonl"
    path.write_text(text[: len(text) - 40])
    with pytest.raises(ValueError, match=r"cut\.jsonl:3: invalid JSON .*truncated file"):
        list(load_sessions(path))


def test_skip_counts_malformed_lines_and_logs_them(tmp_path, caplog):
    lines = [json.dumps(FIXTURES[0]), "not json", "", json.dumps([1, 2]), json.dumps(FIXTURES[1]), "\xff{"]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff"))
    with caplog.at_level(logging.INFO, logger="atlas.data"):
        stream = load_sessions(path, on_error="skip")
        assert ids(stream) == [1, 2]
    assert stream.excluded == {"malformed": 3}
    assert stream.blank_lines == 1
    assert [e.split(": ")[0] for e in stream.errors] == [f"{path}:2", f"{path}:4", f"{path}:6"]
    assert "JSON object" in stream.errors[1] and "not UTF-8" in stream.errors[2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3 and "mixed.jsonl:2" in warnings[0]
    (info,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "yielded 2 sessions, excluded 3 (malformed: 3)" in info


def test_gzip_and_truncated_gzip(tmp_path):
    data = "".join(json.dumps(r) + "\n" for r in FIXTURES).encode()
    path = tmp_path / "traces.jsonl.gz"
    path.write_bytes(gzip.compress(data))
    assert ids(load_sessions(path)) == [1, 2, 3, 6, 7, 8, 9, 11]
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(data)[:-300])
    with pytest.raises(ValueError, match=r"cut\.jsonl\.gz"):
        list(load_sessions(cut, review_status=None))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"review_status": ()}, "review_status"),
        ({"review_status": [None]}, "review_status"),
        ({"min_reward": 2}, "min_reward"),
        ({"min_reward": "0.5"}, "min_reward"),
        ({"learning_key": ""}, "learning_key"),
        ({"limit": 0}, "limit"),
        ({"on_error": "ignore"}, "on_error"),
        ({"created_after": "last week"}, "created_after"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise_value_error_at_call_time(jsonl_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_sessions(jsonl_path, **kwargs)


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="unsupported trace source"):
        load_sessions(tmp_path / "traces.csv")
    with pytest.raises(ValueError, match="does not exist"):
        load_sessions(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="source must be"):
        load_sessions(42)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=40) | st.text(max_size=40).map(str.encode), min_size=1, max_size=5))
def test_junk_lines_never_crash_with_anything_but_value_error(tmp_path, lines):
    path = tmp_path / "junk.jsonl"
    data = b"\n".join(line.replace(b"\n", b" ") for line in lines)
    path.write_bytes(data)
    n_lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    with contextlib.suppress(ValueError):
        list(load_sessions(path, review_status=None))
    stream = load_sessions(path, review_status=None, on_error="skip")
    list(stream)
    assert stream.yielded + sum(stream.excluded.values()) + stream.blank_lines == n_lines
