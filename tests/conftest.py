"""Suite-wide settings: CPU by default, Triton through its interpreter, GPU tests skipped without CUDA; and
a real PostgreSQL server holding the SDK fixture records (tests/data/records.py), started once per session
from the local initdb/pg_ctl (tests/data/pgserver.py) and removed afterwards. Without the binaries the
postgres-marked tests skip with the reason, unless ATLAS_REQUIRE_POSTGRES=1 (as in CI): then they fail."""

import os

import pytest
import torch

# Triton reads this when a kernel is decorated, so it must be set before atlas.kernels is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def pg_server():
    # imported here: a machine without psycopg (the GPU machine) still runs the other tests
    from tests.data.pgserver import PostgresServer, unavailable_reason

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
    import psycopg

    from tests.data.pgserver import copy_records, create_sdk_schema
    from tests.data.records import FIXTURES

    url = pg_server.create_database("traces")
    create_sdk_schema(url, reader="reader")
    with psycopg.connect(url) as conn:
        copy_records(conn, FIXTURES)
    return url


@pytest.fixture(scope="session")
def reader_url(pg_server, pg_url) -> str:
    """The same database through a role that has only SELECT."""
    return pg_server.url("traces", user="reader")


@pytest.fixture(scope="session")
def taught_agent(tmp_path_factory):
    """The tiny tool-calling agent of tests/agent.py, taught once per session: its directory."""
    from tests.agent import taught

    return taught(tmp_path_factory.mktemp("agent") / "taught")
