"""One `sessionsync serve` with its pipeline (worker and relay) for every
client test, on a Redis, a PostgreSQL database and a queue pair of its own,
started once for the run: the Python client's tests, the TypeScript suite
(tests/clients/test_typescript_client.py) and the tests that mix both use
it, each on session ids of its own.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.clients.utils import Served
from tests.support.constants import API_KEY, LOCALSTACK_URL, PG_TEST_ADMIN_URL, database_url
from tests.support.servers import RedisServer, free_port, serve_process


def serve_environment(redis_url: str, dsn: str, queue_url: str, dlq_url: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": dsn,
            "SESSION_QUEUE_URL": queue_url, "SESSION_DLQ_URL": dlq_url,
            "AWS_ENDPOINT_URL": LOCALSTACK_URL, "SESSIONSYNC_API_KEYS": API_KEY,
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "test"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
            "OUTBOX_RELAY_AGE_SECONDS": "1", "LOG_LEVEL": "WARNING"}


@pytest.fixture(scope="session")
def served(tmp_path_factory, sqs) -> Iterator[Served]:
    """`sessionsync serve` with the pipeline, shared by every client test."""
    from sessionsync import provisioning

    workdir = tmp_path_factory.mktemp("clients")
    redis_server = RedisServer(workdir / "redis").start()
    dsn = database_url(PG_TEST_ADMIN_URL, f"sessionsync_clients_{uuid.uuid4().hex[:10]}")
    name = f"sessionsync-clients-{uuid.uuid4().hex[:10]}"
    queues = None
    try:
        provisioning.ensure_database(dsn)
        provisioning.migrate(dsn)
        queues = provisioning.ensure_queues(sqs, name, provisioning.dlq_name_for(name))
        with serve_process(serve_environment(redis_server.url, dsn, queues.url, queues.dlq_url),
                           workdir) as (port, log):
            yield Served(f"http://127.0.0.1:{port}", port, dsn, log, redis_server)
    finally:
        if queues is not None:
            provisioning.delete_queues(sqs, queues)
        provisioning.drop_database(dsn)
        redis_server.stop()


@pytest.fixture(scope="session")
def unavailable(tmp_path_factory) -> Iterator[str]:
    """`sessionsync serve` whose Redis does not answer (a port nothing listens
    on): every session route is a real 503 with Retry-After."""
    workdir = tmp_path_factory.mktemp("unavailable")
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "REDIS_TIMEOUT": "0.2",
           "SESSIONSYNC_API_KEYS": API_KEY, "LOG_LEVEL": "ERROR"}
    # an empty value is "not configured" to the settings (and keeps the
    # local stage's defaults out): no PostgreSQL, no queues
    for name in ("DATABASE_URL", "DB_SECRET_ARN", "SESSION_QUEUE_URL", "SESSION_QUEUE_NAME",
                 "SESSION_DLQ_URL", "SESSION_DLQ_NAME", "SESSIONSYNC_API_KEYS_SECRET_ARN",
                 "PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE"):
        env[name] = ""
    with serve_process(env, workdir, "--no-pipeline") as (port, _log):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def sid() -> str:
    return f"py-{uuid.uuid4().hex[:12]}"
