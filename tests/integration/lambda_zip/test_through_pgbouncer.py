"""The functions through a transaction pooler, as deployed behind RDS Proxy.

PgBouncer in transaction mode stands where RDS Proxy stands (DbHost: the
functions connect to it, DB_POOLED=true from the template's UsesDbProxy
condition; the migration step to the database itself).  Its pool has two
server connections for three and more clients, so their transactions share
server connections: a prepared statement, a SET or a session advisory lock
one of them leaves is met by another, and anything sent as a startup option
is refused outright.  Its connect_query sets what RDS Proxy's InitQuery sets
(infra/stacks/database.yaml), except the time zone: one far from UTC, since
nothing may depend on it.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from sessionsync.bench import events
from tests.integration.lambda_zip.conftest import LambdaStack, stack_of
from tests.integration.lambda_zip.utils import (
    API_KEY,
    authorize,
    change_body,
    gateway_event,
    receive_all,
    ship_unsent,
    sync_events,
)
from tests.support.lambda_runtime import EventSourceMapping, LambdaFunction
from tests.support.servers import PgBouncer

pytestmark = pytest.mark.timeout(300)

# RDS Proxy's InitQuery, but in a zone 12:45 away from UTC
CONNECT_QUERY = "SET statement_timeout = 5000; SET lock_timeout = 2000; SET TimeZone = ''Pacific/Chatham''"
# psycopg prepares a statement on its sixth execution (prepare_threshold 5)
PREPARED_AFTER = 5


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[PgBouncer]:
    bouncer = PgBouncer(pool_size=2, connect_query=CONNECT_QUERY).start()
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="module")
def lambda_stack(packaged_template, lambda_task_root, lambda_runtime_dir, tmp_path_factory, stack_redis,
                 stack_database, stack_queues, secrets, pgbouncer) -> Iterator[LambdaStack]:
    logs = tmp_path_factory.mktemp("zip-pgbouncer-logs")
    with stack_of(packaged_template, lambda_task_root, lambda_runtime_dir, logs, stack_redis, stack_database,
                  stack_queues, secrets, db_host=f"127.0.0.1:{pgbouncer.port}") as stack:
        yield stack


@pytest.fixture(scope="module")
def api(lambda_stack, migrated) -> LambdaFunction:
    return lambda_stack.function("APIHandler")


def advisory_locks(dsn: str) -> int:
    """Advisory locks anyone holds in the database of ``dsn``."""
    with psycopg.connect(dsn) as admin:
        row = admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchone()
    return int(row[0]) if row else 0


def test_the_functions_are_configured_for_a_pooler_and_the_migration_step_for_the_database(lambda_stack,
                                                                                           pgbouncer):
    for logical_id in ("APIHandler", "PersistChanges", "SweepExpired", "PurgeSyncEvents", "RelayOutbox"):
        env = lambda_stack.environment(logical_id)
        assert (env["DB_HOST"], env["DB_POOLED"]) == (f"127.0.0.1:{pgbouncer.port}", "true"), logical_id
    migrations = lambda_stack.environment("RunMigrations")
    assert migrations["DB_HOST"] == "" and "DB_POOLED" not in migrations


def test_migrations_run_through_the_pooler_too(lambda_stack, pgbouncer):
    # as an operator might run them (the deploy's step goes to the instance)
    pooled = lambda_stack.function("RunMigrations", DB_HOST=f"127.0.0.1:{pgbouncer.port}", DB_POOLED="true")
    first, again = pooled.invoke({"action": "migrate"}), pooled.invoke({"action": "migrate"})
    assert first.ok and first.result["pending"] == [] and first.result["version"] > 0, first.error
    assert again.ok and again.result["applied_now"] == [], again.error
    assert advisory_locks(lambda_stack.database_url) == 0
    pooled.stop()


@pytest.fixture(scope="module")
def migrated(lambda_stack, pgbouncer) -> dict:
    migrations = lambda_stack.function("RunMigrations", DB_HOST=f"127.0.0.1:{pgbouncer.port}",
                                       DB_POOLED="true")
    invocation = migrations.invoke({"action": "migrate"})
    assert invocation.ok, invocation.error
    return invocation.result


def test_the_api_and_two_consumers_share_two_server_connections_past_psycopg_s_prepare_threshold(
        lambda_stack, migrated, api, pgbouncer, sqs):
    authorized = authorize(lambda_stack.function("Authorizer"), f"Bearer {API_KEY}")
    consumers = [lambda_stack.function("PersistChanges") for _ in range(2)]
    mapping = EventSourceMapping(sqs, lambda_stack.queues.url, batch_size=2)
    sids = [f"zq-{uuid.uuid4().hex[:8]}" for _ in range(4)]

    def call(method: str, path: str, body: dict | None = None) -> dict:
        invocation = api.invoke(gateway_event(method, path, {"Content-Type": "application/json"},
                                              None if body is None else json.dumps(body), authorized))
        assert invocation.ok, invocation.error
        return invocation.result

    for round_ in range(PREPARED_AFTER + 2):
        for sid in sids:
            if round_ == 0:
                answer = call("POST", "/sessions", {"session_id": sid, "state": {"round": 0}})
            else:
                answer = call("PUT", f"/sessions/{sid}",
                              {"state": {"round": round_}, "expected_version": round_})
            assert answer["statusCode"] in (200, 201), answer
        ship_unsent(lambda_stack)
        # each consumer takes batches in turn: their statements and the
        # API's reads interleave on the pool's two server connections
        for consumer in consumers:
            batch = mapping.deliver(consumer, receive_all(mapping, 2, *sids))
            assert batch.ok and batch.result == {"batchItemFailures": []}, batch.error or batch.result
        history = call("GET", f"/sessions/{sids[round_ % len(sids)]}/events")
        assert history["statusCode"] == 200, history

    rows = sync_events(lambda_stack.database_url, sids)
    updates = [(v, "session_updated") for v in range(2, PREPARED_AFTER + 3)]
    assert rows == {sid: [(1, "session_created"), *updates] for sid in sids}
    # the answers' times are UTC whatever the server connection's zone
    latest = json.loads(call("GET", f"/sessions/{sids[0]}/events")["body"])["events"][0]
    assert latest["occurred_at"].endswith("Z") and latest["persisted_at"].endswith("Z")
    # and no statement was left prepared on a shared server connection
    with psycopg.connect(pgbouncer.dsn(lambda_stack.database_url.rsplit("/", 1)[1]), prepare_threshold=None,
                         autocommit=True) as conn:
        for _ in range(4):
            assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
    for consumer in consumers:
        consumer.stop()


def test_sessions_only_postgresql_knows_are_recovered_through_the_pooler(lambda_stack, migrated, sqs):
    authorized = authorize(lambda_stack.function("Authorizer"), f"Bearer {API_KEY}")
    # persisted, never in this Redis: each first read recovers it from
    # sync_sessions, past the prepare threshold of the API's connection
    sids = [f"zv-{uuid.uuid4().hex[:8]}" for _ in range(PREPARED_AFTER + 2)]
    for sid in sids:
        sqs.send_message(QueueUrl=lambda_stack.queues.url,
                         MessageBody=change_body(sid, 1, '{"from":"postgresql"}'))
    consumer = lambda_stack.function("PersistChanges")
    assert all(i.ok for i in EventSourceMapping(sqs, lambda_stack.queues.url).drain(consumer))
    # a Redis that never held them looks like one that forgot them: without
    # a settle time (the queue is drained) it serves them from PostgreSQL at once
    api = lambda_stack.function("APIHandler", REDIS_SETTLE_SECONDS="0")

    for sid in sids:
        read = api.invoke(gateway_event("GET", f"/sessions/{sid}", {}, None, authorized))
        assert read.ok and read.result["statusCode"] == 200, read.error or read.result
        assert json.loads(read.result["body"])["state"] == {"from": "postgresql"}
    consumer.stop()
    api.stop()


def test_the_purge_runs_again_and_again_through_the_pooler_never_busy_and_leaves_no_lock(
        lambda_stack, migrated):
    purge = lambda_stack.function("PurgeSyncEvents")
    sweep = lambda_stack.function("SweepExpired")
    for _ in range(3):
        report = purge.invoke(events.schedule_event())
        assert report.ok, report.error
        assert report.result["complete"] and not report.result["busy"], report.result
        swept = sweep.invoke(events.schedule_event())
        assert swept.ok, swept.error
    # nothing left locked on a shared server connection (a session's lock would be)
    assert advisory_locks(lambda_stack.database_url) == 0
    purge.stop()
    sweep.stop()
