"""The PostgreSQL adapter against a real server: idempotence, order, poison
isolation, error classification by SQLSTATE, reconnection, secrets."""
from __future__ import annotations

import json
import threading
import time
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.adapters.postgres import connection
from chalicelib.adapters.postgres.database import Database
from chalicelib.config import Settings
from chalicelib.domain.errors import PermanentPersistenceError, RetryablePersistenceError, ServiceUnavailable
from chalicelib.domain.events import parse_event
from tests.support.pipeline import event_body
from tests.support.servers import free_port


def _event(sid, version, state=None, **kw):
    return parse_event(event_body(sid, version, state, **kw))


def _sid(prefix="p"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_applying_the_same_batch_twice_inserts_once_and_counts_duplicates(database):
    sid = _sid()
    batch = [_event(sid, v) for v in range(1, 6)]

    first = database.apply_events(batch)
    second = database.apply_events([*batch, _event(sid, 6)])

    assert (first.inserted, first.duplicates, first.failures) == (5, 0, {})
    assert (second.inserted, second.duplicates, second.failures) == (1, 5, {})
    assert database.persisted_versions([sid, "absent"]) == {sid: 6}
    assert [e["version"] for e in database.history(sid, limit=10)] == [6, 5, 4, 3, 2, 1]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(versions=st.lists(st.integers(1, 12), min_size=1, max_size=30), batch=st.integers(1, 10),
       data=st.data())
def test_any_order_and_any_duplication_leaves_the_highest_version_and_one_row_each(
        database, versions, batch, data):
    sid = _sid("h")
    order = data.draw(st.permutations(versions))
    for start in range(0, len(order), batch):
        result = database.apply_events([_event(sid, v, {"v": v}) for v in order[start:start + batch]])
        assert not result.failures

    assert database.persisted_versions([sid]) == {sid: max(versions)}
    assert database.latest(sid).state == {"v": max(versions)}
    assert sorted(e["version"] for e in database.history(sid, limit=100)) == sorted(set(versions))


def test_a_deletion_is_final_even_when_older_versions_arrive_after_it(database):
    sid = _sid()
    database.apply_events([_event(sid, 3, event_type="session_deleted")])
    database.apply_events([_event(sid, 2), _event(sid, 1)])

    latest = database.latest(sid)
    assert (latest.version, latest.deleted, latest.state_json) == (3, True, "null")
    assert latest.created_at == "2026-11-28T16:33:30.405Z"


def test_one_poison_event_fails_alone_and_the_rest_of_the_batch_is_persisted(database):
    good = [_sid() for _ in range(8)]
    batch = [_event(s, 1) for s in good[:4]]
    batch.append(_event("bad id", 1))                                       # 23514
    batch.append(_event(_sid(), 1, {"x": "nul\u0000"}))                      # 22P05
    batch.append(_event(_sid(), 1, occurred_at="yesterday-ish"))            # 22007
    batch.extend(_event(s, 1) for s in good[4:])

    result = database.apply_events(batch)

    assert (result.inserted, result.duplicates) == (8, 0)
    assert sorted(result.failures) == [4, 5, 6]
    assert all(isinstance(e, PermanentPersistenceError) for e in result.failures.values())
    assert (result.failures[4].sqlstate, result.failures[4].constraint) == (
        "23514", "sync_events_session_id_format")
    assert result.failures[5].sqlstate == "22P05"
    assert result.failures[6].sqlstate[:2] == "22"
    assert isinstance(result.failures[4].__cause__, psycopg.errors.CheckViolation)
    assert database.persisted_versions(good) == dict.fromkeys(good, 1)


def test_a_statement_timeout_is_retryable_and_fails_the_whole_batch(pg_test_dsn):
    sid = _sid()
    db = Database.from_dsn(pg_test_dsn, statement_timeout_ms=200)
    db.apply_events([_event(sid, 1)])
    blocker = psycopg.connect(pg_test_dsn)
    try:
        blocker.execute("SELECT 1 FROM sync_sessions WHERE session_id = %s FOR UPDATE", (sid,))
        start = time.monotonic()
        result = db.apply_events([_event(sid, 2), _event(_sid(), 1)])
        elapsed = time.monotonic() - start
    finally:
        blocker.rollback()
        blocker.close()

    # the 200 ms statement timeout, not the 2 s lock timeout (55P03), ended
    # the wait: the SQLSTATE says which; the bound only rules out a hang
    assert elapsed < 5, f"took {elapsed:.2f}s"
    assert sorted(result.failures) == [0, 1]
    assert {(type(e), e.sqlstate) for e in result.failures.values()} == {
        (RetryablePersistenceError, "57014")}
    assert db.apply_events([_event(sid, 2)]).inserted == 1  # the lock is gone: it goes through
    db.close()


def _terminate(dsn: str, pid: int) -> None:
    """End backend ``pid`` from the server's side and wait until it is gone
    (its goodbye sent, the socket closed): what an idle timeout of RDS
    Proxy or an administrator does to a connection a frozen Lambda keeps."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, f"backend {pid} still there"
            time.sleep(0.02)


def test_a_connection_the_server_closed_while_idle_is_replaced_before_the_next_batch(database, pg_test_dsn):
    sid = _sid()
    database.apply_events([_event(sid, 1)])
    pid = database._connection().info.backend_pid
    _terminate(pg_test_dsn, pid)

    result = database.apply_events([_event(sid, 2)])

    # not a retry: the dead connection is noticed before it is used
    assert (result.inserted, result.failures) == (1, {})
    assert database._connection().info.backend_pid != pid


def test_a_connection_the_server_closed_while_idle_is_replaced_before_the_next_read(database, pg_test_dsn):
    sid = _sid()
    database.apply_events([_event(sid, 1)])
    pid = database._connection().info.backend_pid
    _terminate(pg_test_dsn, pid)

    session = database.latest(sid)  # a 503 if it used the dead connection

    assert session is not None and session.version == 1
    assert database._connection().info.backend_pid != pid


def test_a_connection_lost_during_a_batch_fails_it_as_retryable_and_the_next_reconnects(
        database, pg_test_dsn):
    sid = _sid()
    database.apply_events([_event(sid, 1)])
    conn = database._connection()
    pid = conn.info.backend_pid
    # ended while "in use": the idle check cannot see it (the server's
    # goodbye arrives after the check, as in a race with an idle timeout)
    real_check = connection._closed_by_server
    connection._closed_by_server = lambda _conn: False
    try:
        _terminate(pg_test_dsn, pid)
        lost = database.apply_events([_event(sid, 2)])
    finally:
        connection._closed_by_server = real_check
    again = database.apply_events([_event(sid, 2)])

    assert isinstance(lost.failures[0], RetryablePersistenceError)
    # the server's goodbye (FATAL 57P01 admin_shutdown) is read on the query
    assert (lost.failures[0].sqlstate, lost.failures[0].details["error_class"]) == ("57P01", "AdminShutdown")
    assert (again.inserted, again.failures) == (1, {})
    assert database._connection().info.backend_pid != pid


def test_an_unreachable_server_fails_fast_as_retryable_for_writes_and_503_for_reads():
    db = Database.from_dsn(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    start = time.monotonic()
    result = db.apply_events([_event(_sid(), 1)])
    with pytest.raises(ServiceUnavailable) as caught:
        db.latest("anything")

    assert time.monotonic() - start < 5  # refused at once; the margin is for a busy machine
    assert isinstance(result.failures[0], RetryablePersistenceError)
    assert caught.value.dependency == "postgresql" and caught.value.status == 503
    with pytest.raises(ServiceUnavailable):
        db.ping()


def test_concurrent_batches_on_the_same_sessions_all_persist(pg_test_dsn):
    sessions = [_sid("c") for _ in range(5)]
    failures = []

    def apply(offset):
        db = Database.from_dsn(pg_test_dsn)
        try:
            for version in range(1 + offset, 41, 4):
                result = db.apply_events([_event(s, version) for s in sessions])
                failures.extend(result.failures.values())
        finally:
            db.close()

    threads = [threading.Thread(target=apply, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert failures == []  # sorted key order: no deadlock between batches
    check = Database.from_dsn(pg_test_dsn)
    assert check.persisted_versions(sessions) == dict.fromkeys(sessions, 40)
    assert all(len(check.history(s, limit=100)) == 40 for s in sessions)
    check.close()


def test_reads_for_operators_report_recent_events_and_a_ping(database):
    sid = _sid()
    database.apply_events([_event(sid, 1), _event(sid, 2)])

    recent = database.recent_events(limit=2)

    # one statement: both rows share persisted_at (the transaction's time)
    assert {(e["session_id"], e["version"]) for e in recent} == {(sid, 1), (sid, 2)}
    assert set(recent[0]) == {"session_id", "version", "event_type", "occurred_at", "persisted_at"}
    assert 0 < database.ping() < 1000


@pytest.mark.localstack
def test_the_database_secret_is_read_from_secrets_manager_with_an_awkward_password(
        pg_test_dsn, localstack_settings):
    from chalicelib.adapters import aws
    client = aws.client("secretsmanager", localstack_settings)
    dbname = pg_test_dsn.rsplit("/", 1)[1]
    secret = {"username": "postgres", "password": "p@ss/w:rd%?#", "host": "127.0.0.1",
              "port": 5432, "dbname": dbname, "engine": "postgres",
              # the local server has no TLS; a deployed secret leaves it out (verify-full)
              "sslmode": "disable"}
    arn = client.create_secret(Name=f"sessionsync-test-db-{uuid.uuid4().hex[:8]}",
                               SecretString=json.dumps(secret))["ARN"]
    try:
        db = Database.from_settings(Settings(db_secret_arn=arn), lambda: client)
        sid = _sid()
        assert db.apply_events([_event(sid, 1)]).inserted == 1
        assert db.latest(sid).version == 1
        info = db._connection().info
        assert (info.dbname, info.user, info.password) == (dbname, "postgres", "p@ss/w:rd%?#")
        db.close()
    finally:
        client.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
