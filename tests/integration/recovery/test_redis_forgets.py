"""Redis forgetting never forks a session.

Redis loses keys (eviction, FLUSHALL, an expired marker, a restart without
persistence) or goes back in time (a failover to a replica that lacked the
last writes) while PostgreSQL remembers.  Whatever it forgot, Redis never
serves, or accepts a write on, a version older than PostgreSQL's, an id is
never created twice, and no acknowledged write ends in the DLQ because of it.

A failover is played here by what it leaves behind: a value written by
another primary (another epoch) at an older version.  The chaos suite does
it with a real replica.
"""
from __future__ import annotations

import time
import uuid

import pytest
import redis

from chalicelib.adapters.redis.keys import epoch_key, session_keys
from chalicelib.domain.errors import ConcurrencyError, ServiceUnavailable, SessionExists, SessionNotFound
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.service.sessions import SessionService
from tests.support.markers import forget_marker


@pytest.fixture
def service(pipeline) -> SessionService:
    """No settle time: these tests drain the pipeline before Redis forgets
    (the settle tests below wait for it)."""
    return SessionService(pipeline.store, durable=pipeline.database,
                          settle_seconds=0)


#: the sessions the running test made (their buckets' epoch records are its to give back)
_made: list[str] = []


@pytest.fixture(autouse=True)
def epoch_records_given_back(request):
    """The tests here write epoch records of another primary, and settle
    times start from them; a bucket is shared with other tests' sessions
    (1,024 buckets), so each test deletes the records of its sessions'
    buckets afterwards (a bucket without a record does not wait)."""
    _made.clear()
    yield
    if _made and "pipeline" in request.fixturenames:  # the module's own redis-server outlives it
        with redis.Redis.from_url(request.getfixturevalue("pipeline_redis").url) as client:
            client.delete(*(epoch_key(s) for s in _made))


def _sid() -> str:
    sid = f"forget-{uuid.uuid4().hex[:10]}"
    _made.append(sid)
    return sid


def _persisted(pipeline, service, sid, versions):
    service.create(CreateRequest(sid, '{"owner":"alice","n":1}', None))
    for v in range(1, versions):
        service.update(UpdateRequest(sid, '{"owner":"alice","n":%d}' % (v + 1), v))
    pipeline.deliver(timeout=30)
    assert pipeline.session_rows([sid])[sid][0] == versions


def _forget(pipeline, sid):
    pipeline.store.client.delete(session_keys(sid)[0])
    forget_marker(pipeline.store.client, sid)


def _go_back_in_time(pipeline, sid, version, state):
    """What a promoted replica that lacked the last writes holds: an older
    version, written by the previous primary (a value of another epoch; the
    format before epochs existed is such a value too), and the bucket's
    epoch record of that primary."""
    key, markers = session_keys(sid)[:2]
    pipeline.store.client.set(epoch_key(sid), "deadbeef|0")
    old = pipeline.store.client.get(key).decode().split("|")
    pipeline.store.client.set(key, f"{version}|{old[1]}|{old[2]}|{old[3]}|L|{state}", ex=600)
    pipeline.store.client.hset(markers, sid, f"{version}|L")


def test_a_create_of_a_persisted_id_that_redis_forgot_is_refused(pipeline, service):
    sid = _sid()
    _persisted(pipeline, service, sid, 2)
    _forget(pipeline, sid)

    with pytest.raises(SessionExists) as exists:
        service.create(CreateRequest(sid, '{"owner":"bob"}', None))

    assert exists.value.details["version"] == 2
    pipeline.deliver(timeout=30)
    assert pipeline.dlq_messages() == []


def test_a_create_of_a_deleted_id_that_redis_forgot_is_refused(pipeline, service):
    sid = _sid()
    _persisted(pipeline, service, sid, 1)
    service.delete(sid)
    pipeline.deliver(timeout=30)
    _forget(pipeline, sid)

    with pytest.raises(SessionExists) as exists:
        service.create(CreateRequest(sid, '{"owner":"bob"}', None))

    assert exists.value.details.get("deleted") is True
    with pytest.raises(SessionNotFound):
        service.get(sid)


def test_a_forgotten_session_is_recovered_with_its_own_state_not_a_newcomer_s(pipeline, service):
    sid = _sid()
    _persisted(pipeline, service, sid, 3)
    _forget(pipeline, sid)

    read = service.get(sid)

    assert (read.session.version, read.session.state) == (3, {"owner": "alice", "n": 3})


def test_after_a_failover_lost_a_persisted_write_a_stale_update_conflicts_instead_of_forking(
        pipeline, service):
    sid = _sid()
    _persisted(pipeline, service, sid, 7)
    _go_back_in_time(pipeline, sid, 6, '{"owner":"alice","n":6}')

    with pytest.raises(ConcurrencyError) as conflict:
        service.update(UpdateRequest(sid, '{"owner":"mallory"}', 6))

    assert conflict.value.details["actual_version"] == 7
    assert service.get(sid).session.state == {"owner": "alice", "n": 7}
    after = service.update(UpdateRequest(sid, '{"owner":"alice","n":8}', 7))
    assert after.version == 8
    pipeline.deliver(timeout=30)
    assert pipeline.event_rows([sid]) == [(sid, v) for v in range(1, 9)]
    assert pipeline.dlq_messages() == []


def test_after_a_failover_lost_a_persisted_write_a_read_serves_postgresql_s_version(pipeline, service):
    sid = _sid()
    _persisted(pipeline, service, sid, 4)
    _go_back_in_time(pipeline, sid, 3, '{"owner":"alice","n":3}')

    read = service.get(sid)

    assert (read.session.version, read.session.state) == (4, {"owner": "alice", "n": 4})
    # and Redis was repaired: the next read is a plain Redis read
    assert pipeline.store.get(sid, verify=True).version == 4


def test_a_deletion_lost_by_a_failover_is_not_undone(pipeline, service):
    sid = _sid()
    _persisted(pipeline, service, sid, 2)
    service.delete(sid)
    pipeline.deliver(timeout=30)
    _go_back_in_time(pipeline, sid, 2, '{"owner":"alice","n":2}')

    with pytest.raises(SessionNotFound):
        service.get(sid)
    with pytest.raises(SessionNotFound):
        service.update(UpdateRequest(sid, '{"owner":"mallory"}', 3))


def test_a_value_of_another_epoch_that_postgresql_confirms_is_served_and_vouched_for(pipeline, service):
    """PostgreSQL lags (or matches): the old value is right, and is marked
    so; PostgreSQL is asked once, not on every read."""
    sid = _sid()
    _persisted(pipeline, service, sid, 2)
    _go_back_in_time(pipeline, sid, 2, '{"owner":"alice","n":2}')
    asked = []
    latest = pipeline.database.latest
    pipeline.database.latest = lambda s: asked.append(s) or latest(s)
    try:
        first = service.get(sid)
        second = service.get(sid)
        updated = service.update(UpdateRequest(sid, '{"owner":"alice","n":3}', 2))
    finally:
        pipeline.database.latest = latest

    assert first.session.version == second.session.version == 2
    assert updated.version == 3
    assert asked == [sid]


def _until_settled(call, *, timeout: float = 30.0):
    """Call until it stops answering 503 (the settle time); return what it
    returned or raised, and how many 503s came first."""
    refusals = 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call(), refusals
        except ServiceUnavailable as exc:
            if "retry_after_seconds" not in exc.details or time.monotonic() > deadline:
                raise
            refusals += 1
            time.sleep(0.2)
        except Exception as exc:  # the answer once settled, e.g. ConcurrencyError
            return exc, refusals


def test_a_change_still_in_the_queue_when_redis_went_back_reaches_postgresql_before_it_judges(
        pipeline, caplog):
    """v7 is acknowledged and queued but not yet persisted when Redis goes
    back to v6.  Judged at once, PostgreSQL (v6) would vouch for v6 and a
    second v7 would be accepted; the settle time lets v7 arrive first."""
    service = SessionService(pipeline.store, durable=pipeline.database,
                             settle_seconds=2.0)
    sid = _sid()
    _persisted(pipeline, service, sid, 6)
    service.update(UpdateRequest(sid, '{"owner":"alice","n":7}', 6))  # queued, not persisted
    _go_back_in_time(pipeline, sid, 6, '{"owner":"alice","n":6}')

    with pytest.raises(ServiceUnavailable) as settling:
        service.update(UpdateRequest(sid, '{"owner":"mallory"}', 6))
    assert settling.value.details["retry_after_seconds"] > 0
    pipeline.deliver(timeout=30)  # the consumer catches up meanwhile
    outcome, _ = _until_settled(lambda: service.update(UpdateRequest(sid, '{"owner":"mallory"}', 6)))

    assert isinstance(outcome, ConcurrencyError) and outcome.details["actual_version"] == 7
    assert service.get(sid).session.state == {"owner": "alice", "n": 7}
    pipeline.deliver(timeout=30)
    assert pipeline.event_rows([sid]) == [(sid, v) for v in range(1, 8)]
    assert pipeline.dlq_messages() == []
    reports = [r for r in caplog.records if r.name == "sessionsync.sessions" and r.levelname == "ERROR"]
    assert len(reports) == 1 and "went back in time" in reports[0].getMessage()


def test_a_read_of_a_session_redis_may_hold_stale_waits_for_the_settle_time(pipeline):
    service = SessionService(pipeline.store, durable=pipeline.database,
                             settle_seconds=1.0)
    sid = _sid()
    _persisted(pipeline, service, sid, 3)
    _go_back_in_time(pipeline, sid, 2, '{"owner":"alice","n":2}')

    read, refusals = _until_settled(lambda: service.get(sid))

    assert refusals >= 1
    assert (read.session.version, read.session.state) == (3, {"owner": "alice", "n": 3})


def test_a_session_redis_lost_entirely_is_recovered_after_the_settle_time(pipeline):
    service = SessionService(pipeline.store, durable=pipeline.database,
                             settle_seconds=1.0)
    sid = _sid()
    _persisted(pipeline, service, sid, 2)
    _forget(pipeline, sid)
    pipeline.store.client.delete(epoch_key(sid))  # as after a restart without persistence

    read, refusals = _until_settled(lambda: service.get(sid))

    assert refusals >= 1
    assert read.session.version == 2


def test_on_a_new_deployment_creates_never_wait_for_a_settle_time(throwaway_redis, database):
    """A bucket with no epoch record is a new deployment (or a Redis that lost
    everything, which a process that saw it before can tell): creates of new
    ids, however many in one bucket, go straight through."""
    import redis as redis_py

    from chalicelib.adapters.redis.keys import bucket_of
    from chalicelib.adapters.redis.store import SessionStore
    store = SessionStore(redis_py.Redis.from_url(throwaway_redis.url, socket_timeout=5))
    service = SessionService(store, durable=database, settle_seconds=30)
    first = _sid()
    same_bucket = [s for s in (f"{first}-{i}" for i in range(5000))
                   if bucket_of(s) == bucket_of(first)][:3]

    for sid in [first, *same_bucket]:
        assert service.create(CreateRequest(sid, "{}", None)).version == 1
    store.client.close()


def test_a_process_that_saw_redis_before_it_lost_everything_waits_before_creating(
        throwaway_redis, database):
    """The epoch records went with the data; the process's memory of the
    node's epoch tells a restart from a new deployment."""
    import redis as redis_py

    from chalicelib.adapters.redis.keys import bucket_of
    from chalicelib.adapters.redis.store import SessionStore
    store = SessionStore(redis_py.Redis.from_url(throwaway_redis.url, socket_timeout=5))
    service = SessionService(store, durable=database, settle_seconds=30)
    service.create(CreateRequest(_sid(), "{}", None))
    throwaway_redis.stop()
    throwaway_redis.start()  # no persistence: a new epoch, no records

    first = _sid()
    with pytest.raises(ServiceUnavailable) as settling:
        _until_reachable(lambda: service.create(CreateRequest(first, "{}", None)))
    assert settling.value.details["retry_after_seconds"] > 20
    # and in every other bucket too, not only where the move was noticed
    others = [sid for sid in (_sid() for _ in range(50)) if bucket_of(sid) != bucket_of(first)][:3]
    for sid in others:
        with pytest.raises(ServiceUnavailable):
            service.create(CreateRequest(sid, "{}", None))
    store.client.close()


def _until_reachable(call, timeout: float = 10.0):
    """Call until Redis answers again after a restart (connection errors)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except ServiceUnavailable as exc:
            if "retry_after_seconds" in exc.details or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_session_whose_key_and_marker_were_lost_waits_for_its_change_still_in_the_queue(pipeline):
    """No failover, no restart: only this session's key and marker are gone
    (a hand-made DEL, an allkeys-* eviction) while its last change is still
    queued.  Recovered at once, it would be served, and written, a version
    behind; it is held for the settle time, counted from when the loss is
    first noticed."""
    service = SessionService(pipeline.store, durable=pipeline.database,
                             settle_seconds=2.0)
    sid = _sid()
    _persisted(pipeline, service, sid, 3)
    service.update(UpdateRequest(sid, '{"owner":"alice","n":4}', 3))  # queued, not persisted
    _forget(pipeline, sid)

    with pytest.raises(ServiceUnavailable) as held:
        service.get(sid)
    assert held.value.details["retry_after_seconds"] > 0
    pipeline.deliver(timeout=30)
    read, _ = _until_settled(lambda: service.get(sid))

    assert (read.session.version, read.session.state) == (4, {"owner": "alice", "n": 4})
