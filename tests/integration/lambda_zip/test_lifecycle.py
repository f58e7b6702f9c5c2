"""Lambda's lifecycle: an execution environment is frozen between
invocations, and while it is, the other end may close its connections (an
idle timeout of ElastiCache or of RDS Proxy, a failover, a restart).  The
function thawed for its next invocation must serve it, not answer 503 or
fail the batch, because the connection it kept is dead.

Here: the functions from the package (conftest.py), frozen with SIGSTOP,
their Redis connections closed with CLIENT KILL and their PostgreSQL ones
with pg_terminate_backend, then thawed with SIGCONT.
"""
from __future__ import annotations

import json
import time
import uuid

import psycopg
import pytest
import redis

from tests.integration.lambda_zip.utils import (
    API_KEY,
    authorize,
    gateway_event,
    receive_all,
    sync_events,
)
from tests.support.constants import PG_TEST_ADMIN_URL
from tests.support.lambda_runtime import EventSourceMapping, LambdaFunction

pytestmark = pytest.mark.timeout(300)


def server_side_kill(function: LambdaFunction, redis_port: int, dsn: str) -> tuple[int, int]:
    """Close, from the servers' side, every connection ``function`` has to
    the Redis on ``redis_port`` and to the database of ``dsn``; returns how
    many of each."""
    from psycopg import conninfo

    connections = function.tcp_connections()
    admin = redis.Redis(port=redis_port)
    redis_killed = 0
    for client in admin.client_list():
        if (int(client["addr"].rsplit(":", 1)[1]), redis_port) in connections:
            redis_killed += admin.client_kill_filter(_id=client["id"])
    admin.close()
    dbname = conninfo.conninfo_to_dict(dsn)["dbname"]
    pg_ports = [local for local, remote in connections if remote == 5432]
    with psycopg.connect(PG_TEST_ADMIN_URL, autocommit=True) as conn:
        terminated = conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND client_port = ANY(%s)", (dbname, pg_ports)).fetchone()[0]
    return redis_killed, terminated


def wait_until_closed(function: LambdaFunction, remote_ports: set[int], timeout: float = 10.0) -> None:
    """Until none of the frozen process's connections to ``remote_ports``
    is established any more (the servers' FIN arrived)."""
    deadline = time.monotonic() + timeout
    while any(remote in remote_ports for _, remote in function.tcp_connections()):
        assert time.monotonic() < deadline, "the servers did not close the frozen function's connections"
        time.sleep(0.05)


def test_a_frozen_api_function_whose_connections_were_closed_serves_its_next_calls(lambda_stack, migrated,
                                                                                     authorizer):
    # its own execution environment: the test owns its connections
    api = lambda_stack.function("APIHandler")
    authorized = authorize(authorizer, f"Bearer {API_KEY}")
    sid = f"zf-{uuid.uuid4().hex[:8]}"

    def call(method, path, body=None, headers=None):
        headers = {"Content-Type": "application/json", **(headers or {})}
        invocation = api.invoke(gateway_event(method, path, headers,
                                              json.dumps(body) if body is not None else None, authorized))
        assert invocation.ok, invocation.error
        return invocation.result

    assert call("POST", "/sessions", {"session_id": sid, "state": {"n": 1}})["statusCode"] == 201
    assert call("GET", f"/sessions/{sid}/events")["statusCode"] in (200, 404)  # PostgreSQL: connected
    before = api.tcp_connections()
    api.freeze()
    redis_killed, pg_killed = server_side_kill(api, lambda_stack.redis.port, lambda_stack.database_url)
    assert redis_killed >= 1 and pg_killed >= 1, (redis_killed, pg_killed, before)
    wait_until_closed(api, {lambda_stack.redis.port, 5432})
    api.thaw()

    # a read, a write and a PostgreSQL read: none may fail on the dead connections
    read = call("GET", f"/sessions/{sid}")
    assert read["statusCode"] == 200, read
    write = call("PUT", f"/sessions/{sid}", {"state": {"n": 2}, "expected_version": 1})
    assert write["statusCode"] == 200, write
    history = call("GET", f"/sessions/{sid}/events")
    assert history["statusCode"] in (200, 404), history
    # on new connections
    killed = {c for c in before if c[1] in (lambda_stack.redis.port, 5432)}
    assert killed and not killed & api.tcp_connections()
    api.stop()


def test_a_frozen_consumer_whose_database_connection_was_closed_persists_its_next_batch(
        lambda_stack, migrated, sqs):
    from tests.integration.lambda_zip.utils import change_body

    consumer = lambda_stack.function("PersistChanges")
    mapping = EventSourceMapping(sqs, lambda_stack.queues.url)
    first, second = (f"zc-{uuid.uuid4().hex[:8]}" for _ in range(2))
    sqs.send_message(QueueUrl=lambda_stack.queues.url, MessageBody=change_body(first, 1, "{}"))
    # warm: whatever the queue holds (the API test's writes too)
    warm = mapping.drain(consumer)
    assert warm and all(i.ok and i.result == {"batchItemFailures": []} for i in warm), warm
    consumer.freeze()
    _, pg_killed = server_side_kill(consumer, lambda_stack.redis.port, lambda_stack.database_url)
    assert pg_killed == 1
    wait_until_closed(consumer, {5432})
    consumer.thaw()

    sqs.send_message(QueueUrl=lambda_stack.queues.url, MessageBody=change_body(second, 1, "{}"))
    batch = mapping.deliver(consumer, receive_all(mapping, 1, second))

    assert batch.ok and batch.result == {"batchItemFailures": []}, batch.error or batch.result
    assert sync_events(lambda_stack.database_url, [first, second]) == {
        first: [(1, "session_created")], second: [(1, "session_created")]}
    consumer.stop()
