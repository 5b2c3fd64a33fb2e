"""Fixtures for the traces tests: the SDK fixture records as a JSONL file (the PostgreSQL server and its
fixture database are in tests/conftest.py, shared with the training tests)."""

from __future__ import annotations

import pytest

from tests.data.records import FIXTURES, write_jsonl


@pytest.fixture
def jsonl_path(tmp_path) -> str:
    return write_jsonl(tmp_path / "traces.jsonl", FIXTURES)
