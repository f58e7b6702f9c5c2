"""The service's rules for a Redis that forgot, on real Redis and a real
PostgreSQL, without a queue: each test persists exactly the events it wants
PostgreSQL to hold (what the consumer would have done), so the race between
an acknowledged write and its persistence is played step by step instead of
waited for.  docs/guarantees.md: "Redis forgetting never forks a session".
"""
from __future__ import annotations

import time

import pytest

from chalicelib.adapters.redis.keys import epoch_key, session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.domain.errors import RecoveryPending, ServiceUnavailable, SessionExists, SessionNotFound
from chalicelib.domain.events import parse_event
from chalicelib.domain.validation import CreateRequest
from chalicelib.service.sessions import SessionService
from tests.support.constants import TEST_CHANNEL
from tests.support.markers import PreviousFormatStore, forget_marker


@pytest.fixture(params=["markers", "previous-format"])
def store(request, redis_single) -> SessionStore:
    """Each rule on markers as this release writes them, and on a dataset
    whose markers the previous release wrote (keys of their own)."""
    kind = SessionStore if request.param == "markers" else PreviousFormatStore
    return kind(redis_single, channel=TEST_CHANNEL)


def _service(store, database, settle_seconds=0.0) -> SessionService:
    return SessionService(store, durable=database, settle_seconds=settle_seconds)


def _persist(database, *writes) -> None:
    """What the consumer does with these writes' events."""
    result = database.apply_events([parse_event(w.event_json) for w in writes])
    assert result.failures == {}


def test_a_read_while_postgresql_is_behind_the_marker_is_a_503_until_it_catches_up(
        store, database, session_id):
    service = _service(store, database)
    v1 = store.create(session_id, '{"n":1}', 600)
    _persist(database, v1)
    v2 = store.update(session_id, '{"n":2}', 1)  # acknowledged, still in the queue
    store.client.delete(session_keys(session_id)[0])  # evicted

    with pytest.raises(RecoveryPending) as pending:
        service.get(session_id)

    details = pending.value.details
    assert (details["acknowledged_version"], details["persisted_version"]) == (2, 1)
    assert store.client.get(session_keys(session_id)[0]) is None  # v1 was not written back
    _persist(database, v2)  # the consumer caught up
    read = service.get(session_id)
    assert read.recovered and (read.session.version, read.session.state) == (2, {"n": 2})
    assert store.get(session_id).version == 2


def test_a_session_whose_creation_is_not_yet_persisted_is_a_503_not_a_404_when_its_key_is_gone(
        store, database, session_id):
    service = _service(store, database)
    store.create(session_id, '{"n":1}', 600)  # acknowledged; its event is still in the queue
    store.client.delete(session_keys(session_id)[0])

    with pytest.raises(RecoveryPending) as pending:
        service.get(session_id)

    details = pending.value.details
    assert (details["acknowledged_version"], details["persisted_version"]) == (1, 0)


def test_a_deletion_not_yet_persisted_is_a_404_not_a_503_when_its_tombstone_is_gone(
        store, database, session_id):
    service = _service(store, database)
    _persist(database, store.create(session_id, '{"n":1}', 600))
    store.delete(session_id, 1)  # acknowledged; PostgreSQL still holds the live version 1
    store.client.delete(session_keys(session_id)[0])  # the tombstone expired; the marker says 2|D

    with pytest.raises(SessionNotFound) as gone:
        service.get(session_id)

    assert gone.value.details["deleted"] is True
    assert store.client.get(session_keys(session_id)[0]) is None  # version 1 not resurrected


def test_a_create_of_an_id_only_postgresql_remembers_is_refused(store, database, session_id):
    service = _service(store, database)
    v1 = store.create(session_id, '{"owner":"alice"}', 600)
    _persist(database, v1, store.update(session_id, '{"owner":"alice","n":2}', 1))
    store.client.delete(session_keys(session_id)[0])  # Redis forgot key and marker
    forget_marker(store.client, session_id)

    with pytest.raises(SessionExists) as exists:
        service.create(CreateRequest(session_id, '{"owner":"bob"}', None))

    assert exists.value.details["version"] == 2
    assert store.client.get(session_keys(session_id)[0]) is None  # nothing created


def test_a_session_redis_may_hold_stale_waits_for_the_settle_time_before_postgresql_judges(
        store, database, session_id, caplog, request):
    """Redis went back to v2 (a failover) while PostgreSQL has v3: judged at
    once, fine here; but v3 could as well still be in the queue, so the
    service waits out the settle time first, then serves v3 and repairs."""
    service = _service(store, database, settle_seconds=1.0)
    writes = [store.create(session_id, '{"n":1}', 600)]
    writes += [store.update(session_id, '{"n":%d}' % v, v - 1) for v in (2, 3)]
    _persist(database, *writes)
    key, markers = session_keys(session_id)[:2]
    head = store.client.get(key).decode().split("|")
    store.client.set(epoch_key(session_id), "deadbeef|0")  # the previous primary's record
    # the bucket is shared with other tests' sessions, and settles from this
    # record: give it back (a bucket without a record does not wait)
    request.addfinalizer(lambda: store.client.delete(epoch_key(session_id)))
    store.client.set(key, f"2|{head[1]}|{head[2]}|{head[3]}|Ldeadbeef|" + '{"n":2}', ex=600)
    forget_marker(store.client, session_id)
    store.client.hset(markers, session_id, "2|L")

    with pytest.raises(ServiceUnavailable) as settling:
        service.get(session_id)
    assert settling.value.details["retry_after_seconds"] > 0
    assert store.get(session_id).version == 2  # not judged yet: nothing repaired

    deadline = time.monotonic() + 30
    while True:
        try:
            read = service.get(session_id)
            break
        except ServiceUnavailable:
            assert time.monotonic() < deadline, "still settling after 30 s"
            time.sleep(0.2)

    assert (read.session.version, read.session.state) == (3, {"n": 3})
    assert store.get(session_id, verify=True).version == 3  # repaired in the current epoch
    # what may have lost acknowledged changes is reported, once
    reports = [r for r in caplog.records if r.name == "sessionsync.sessions" and r.levelname == "ERROR"]
    assert len(reports) == 1 and "went back in time" in reports[0].getMessage()


def test_a_session_evicted_again_while_another_reader_restored_it_is_a_503_not_a_404(
        store, database, session_id):
    service = _service(store, database)
    _persist(database, store.create(session_id, '{"n":1}', 600))
    key = session_keys(session_id)[0]
    store.client.delete(key)  # evicted
    restore = store.restore

    def restored_by_another_reader_then_evicted_again(session, **kwargs):
        restore(session)  # the other reader (t1)
        get = store.get

        def evicted_again_first(*args, **kw):  # t3, between this restore's script and its read
            store.client.delete(key)
            return get(*args, **kw)

        store.get = evicted_again_first
        try:
            return restore(session, **kwargs)  # finds the other reader's key (t2)
        finally:
            store.get = get

    store.restore = restored_by_another_reader_then_evicted_again

    with pytest.raises(ServiceUnavailable) as unavailable:
        service.get(session_id)

    assert not isinstance(unavailable.value, SessionNotFound)
    assert unavailable.value.details["retry_after_seconds"] == 1
