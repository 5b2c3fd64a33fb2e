"""Fixtures for the traces tests: the SDK fixture records as a JSONL file and in a real PostgreSQL server.

The server is started once per test session from the local initdb/pg_ctl (see pgserver.py) and removed
afterwards. Without the binaries the postgres-marked tests skip with the reason, unless
ATLAS_REQUIRE_POSTGRES=1 (as in CI), where they fail instead.
"""

from __future__ import annotations

import os

import psycopg
import pytest

from tests.data.pgserver import PostgresServer, copy_records, create_sdk_schema, unavailable_reason
from tests.data.records import FIXTURES, write_jsonl


@pytest.fixture
def jsonl_path(tmp_path) -> str:
    return write_jsonl(tmp_path / "traces.jsonl", FIXTURES)


@pytest.fixture(scope="session")
def pg_server():
    reason = unavailable_reason()
    if reason:
        if os.environ.get("ATLAS_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"ATLAS_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    server = PostgresServer(log_statements=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server) -> str:
    """A database holding FIXTURES, owned by the superuser; tests must not modify it."""
    url = pg_server.create_database("traces")
    create_sdk_schema(url, reader="reader")
    with psycopg.connect(url) as conn:
        copy_records(conn, FIXTURES)
    return url


@pytest.fixture(scope="session")
def reader_url(pg_server, pg_url) -> str:
    """The same database through a role that has only SELECT."""
    return pg_server.url("traces", user="reader")
