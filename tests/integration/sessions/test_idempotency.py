"""Idempotent retries (the Idempotency-Key header) in the store and the
service, against real Redis: the single node and the local 3-master
cluster (the ``store`` fixture), a proxy that cuts a connection after the
script ran, and the real pipeline down to PostgreSQL.

The record is written by the write's own script and checked before
anything else: a retry gets the original outcome, a reuse of the key for
another request gets IdempotencyKeyReused and writes nothing, a refused
write records nothing.  docs/decisions/idempotency-keys.md.
"""
from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis.crc import key_slot

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.keys import (
    hold_key,
    idempotency_key,
    legacy_idempotency_key,
    session_keys,
)
from chalicelib.adapters.redis.scripts import CREATE_SCRIPT, UPDATE_SCRIPT
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.errors import (
    ConcurrencyError,
    IdempotencyKeyReused,
    ServiceUnavailable,
    SessionExists,
    SessionNotFound,
)
from chalicelib.domain.idempotency import Idempotency, fingerprint
from chalicelib.domain.store import EpochChanged
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.service.sessions import SessionService
from tests.support.constants import TEST_CHANNEL
from tests.support.markers import forget_marker
from tests.support.pipeline import outbox_entries_of
from tests.support.servers import TcpProxy


def keyed(key: str, *request: str) -> Idempotency:
    """An Idempotency for ``key``; ``request`` stands for what the route
    fingerprints (method, path, body)."""
    return Idempotency(key, fingerprint(*request[:2], "|".join(request[2:]).encode()))


def outbox(store: SessionStore, sid: str) -> list[str]:
    return outbox_entries_of(store, [sid])


# -- the store: replay, reuse, refusals ------------------------------------------

def test_a_keyed_create_retried_returns_the_original_session_and_writes_once(store, session_id):
    key = keyed("k-create", "POST", "/sessions", session_id)
    first = store.create(session_id, '{"a":1}', 600, idempotency=key)

    again = store.create(session_id, '{"a":1}', 600, idempotency=key)

    assert not first.replayed and again.replayed and again.session.replayed
    assert again.session == first.session and again.session.to_json() == first.session.to_json()
    assert (again.event_id, again.event_json) == (first.event_id, first.event_json)
    assert outbox(store, session_id) == [f"{session_id}:1"]


def test_a_keyed_update_retried_after_another_write_returns_its_own_outcome_not_a_conflict(
        store, session_id):
    store.create(session_id, '{"n":0}', 600)
    key = keyed("k-update", "PUT", f"/sessions/{session_id}", '{"n":1}', "1")
    first = store.update(session_id, '{"n":1}', 1, idempotency=key)
    store.update(session_id, '{"n":2}', 2)  # someone else moves the session on

    again = store.update(session_id, '{"n":1}', 1, idempotency=key)

    assert again.replayed and again.session == first.session
    assert again.session.to_json() == first.session.to_json()
    assert (again.session.version, again.session.state) == (2, {"n": 1})
    assert store.get(session_id).version == 3  # the retry wrote nothing
    assert outbox(store, session_id) == [f"{session_id}:{v}" for v in (1, 2, 3)]


def test_a_keyed_delete_retried_returns_the_tombstone_not_a_404(store, session_id):
    store.create(session_id, '{"n":0}', 600)
    key = keyed("k-delete", "DELETE", f"/sessions/{session_id}")
    first = store.delete(session_id, 1, idempotency=key)

    again = store.delete(session_id, 1, idempotency=key)

    assert again.replayed and again.session == first.session and again.session.deleted
    assert outbox(store, session_id) == [f"{session_id}:1", f"{session_id}:2"]
    with pytest.raises(SessionNotFound):  # without the key: the tombstone, as before
        store.delete(session_id, 1)


def test_a_key_reused_for_another_request_is_refused_and_writes_nothing(store, session_id):
    store.create(session_id, '{"n":0}', 600)
    store.update(session_id, '{"n":1}', 1, idempotency=keyed("k", "PUT", "/s", '{"n":1}'))
    before = store.client.get(session_keys(session_id)[0])

    with pytest.raises(IdempotencyKeyReused) as caught:
        store.update(session_id, '{"n":9}', 2, idempotency=keyed("k", "PUT", "/s", '{"n":9}'))
    with pytest.raises(IdempotencyKeyReused):
        store.delete(session_id, 2, idempotency=keyed("k", "DELETE", "/s"))

    assert (caught.value.code, caught.value.status) == ("IdempotencyKeyReused", 422)
    assert store.client.get(session_keys(session_id)[0]) == before
    assert outbox(store, session_id) == [f"{session_id}:1", f"{session_id}:2"]


def _ids_sharing_a_bucket(prefix: str) -> tuple[str, str]:
    """Two session ids, ``x`` and ``x:1``, in one bucket (ids may hold ':')."""
    from chalicelib.adapters.redis.keys import bucket_of
    for n in range(200_000):
        x = f"{prefix}-{n}"
        if bucket_of(x) == bucket_of(x + ":1"):
            return x, x + ":1"
    raise AssertionError("no pair found")  # 1 in 1,024 of them shares a bucket


def test_keys_of_two_sessions_whose_ids_and_keys_join_alike_are_two_records(store, session_id):
    """Session ``x`` with key ``1:k`` and session ``x:1`` with key ``k``: the
    record names must differ, or one session's write is refused (422) for the
    other's record."""
    x, x1 = _ids_sharing_a_bucket(session_id)
    first = store.create(x, '{"s":"x"}', 600, idempotency=keyed("1:k", "POST", "/sessions", x))

    other = keyed("k", "POST", "/sessions", x1)
    assert store.recorded(x1, other) is None
    second = store.create(x1, '{"s":"x1"}', 600, idempotency=other)

    assert not second.replayed and second.session.session_id == x1
    assert idempotency_key(x, "1:k") != idempotency_key(x1, "k")
    # and each retry finds its own record
    assert store.create(x, '{"s":"x"}', 600, idempotency=keyed("1:k", "POST", "/sessions", x)
                        ).session == first.session
    assert store.create(x1, '{"s":"x1"}', 600, idempotency=other).session == second.session


def test_a_record_of_the_previous_release_is_still_replayed_and_only_for_its_own_request(
        store, session_id):
    """During an upgrade a write recorded by the previous release (the old
    name, ``legacy_idempotency_key``) is retried against this one: replayed,
    by the script and by ``recorded``.  The old name may be another
    session's record (``x`` with key ``1:k`` is ``x:1`` with key ``k``):
    with another fingerprint it is no record of this request."""
    key = keyed("k-old", "PUT", f"/sessions/{session_id}", '{"n":1}', "1")
    store.create(session_id, '{"n":0}', 600)
    first = store.update(session_id, '{"n":1}', 1, idempotency=key)
    store.client.rename(idempotency_key(session_id, key.key), legacy_idempotency_key(session_id, key.key))

    assert store.recorded(session_id, key).session == first.session
    again = store.update(session_id, '{"n":1}', 1, idempotency=key)
    assert again.replayed and again.session == first.session
    assert outbox(store, session_id) == [f"{session_id}:1", f"{session_id}:2"]

    x, x1 = _ids_sharing_a_bucket(session_id)
    store.create(x, '{"s":"x"}', 600, idempotency=keyed("1:k", "POST", "/sessions", x))
    store.client.rename(idempotency_key(x, "1:k"), legacy_idempotency_key(x, "1:k"))
    assert legacy_idempotency_key(x, "1:k") == legacy_idempotency_key(x1, "k")
    other = keyed("k", "POST", "/sessions", x1)
    assert store.recorded(x1, other) is None
    assert not store.create(x1, '{"s":"x1"}', 600, idempotency=other).replayed


def test_a_refused_keyed_write_records_nothing_so_its_retry_runs_again(store, session_id):
    store.create(session_id, '{"n":0}', 600)
    store.update(session_id, '{"n":1}', 1)
    key = keyed("k-stale", "PUT", "/s", '{"n":5}')

    with pytest.raises(ConcurrencyError):
        store.update(session_id, '{"n":5}', 1, idempotency=key)
    assert store.client.exists(idempotency_key(session_id, key.key)) == 0

    # the retry runs again (the same refusal here), and records nothing either
    with pytest.raises(ConcurrencyError):
        store.update(session_id, '{"n":5}', 1, idempotency=key)
    with pytest.raises(SessionExists):
        store.create(session_id, '{"n":5}', 600, idempotency=keyed("k-c", "POST", "/sessions"))
    assert store.client.exists(idempotency_key(session_id, "k-c")) == 0


def test_the_record_lives_in_the_sessions_slot_and_expires_after_a_day_at_least(store, session_id):
    key = keyed("k-ttl", "POST", "/sessions")
    store.create(session_id, '{}', 60, idempotency=key)
    record = idempotency_key(session_id, key.key)

    # one slot: the script runs unchanged on Redis Cluster (CROSSSLOT otherwise)
    assert key_slot(record.encode()) == key_slot(session_keys(session_id)[0].encode())
    # a TTL of its own, whatever the session's (60 s here): a record never
    # lingers, and volatile-* eviction may take it (docs/guarantees.md, limits)
    assert 60 < store.client.ttl(record) <= Settings.idempotency_ttl
    assert store.client.ttl(record) > Settings.idempotency_ttl - 60


def test_a_write_without_a_key_leaves_no_record_and_sends_no_key_arguments(store, session_id,
                                                                            monkeypatch):
    sent = []
    run = store._run

    def spy(script, keys, args):
        sent.append((list(keys), list(args)))
        return run(script, keys, args)
    monkeypatch.setattr(store, "_run", spy)
    store.create(session_id, '{}', 60)
    store.update(session_id, '{"a":1}', 1)
    store.delete(session_id, 2)
    # the session's four keys, and each write's own arguments up to its last
    # (scripts/write.lua): no record, no fingerprint, no record TTL
    assert [keys for keys, _ in sent] == [session_keys(session_id)] * 3
    assert [len(args) for _, args in sent] == [10, 9, 7]
    pattern = idempotency_key(session_id, "*")
    if hasattr(store.client, "get_node_from_key"):  # cluster: the node of the slot
        node = store.client.get_node_from_key(pattern)
        found = list(store.client.scan_iter(match=pattern, target_nodes=node))
    else:
        found = list(store.client.scan_iter(match=pattern))
    assert found == []


def test_of_16_threads_retrying_the_same_keyed_write_exactly_one_writes(store, session_id):
    store.create(session_id, '{"n":0}', 600)
    key = keyed("k-race", "PUT", "/s", '{"n":1}')
    start = threading.Barrier(16)

    def attempt(_: int):
        start.wait(timeout=60)
        return store.update(session_id, '{"n":1}', 1, idempotency=key)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(attempt, range(16), timeout=120))

    assert sum(not r.replayed for r in results) == 1
    assert {r.session.to_json() for r in results} == {results[0].session.to_json()}
    assert store.get(session_id).version == 2
    assert outbox(store, session_id) == [f"{session_id}:1", f"{session_id}:2"]


def test_a_keyed_update_whose_answer_was_cut_off_is_replayed_on_a_new_connection(redis_single, session_id):
    """The record is committed with the write, not after the reply: the
    reply never reaches the client, the record is there all the same."""
    db = redis_single.connection_pool.connection_kwargs["db"]
    proxy = TcpProxy(redis_single.connection_pool.connection_kwargs["port"])
    client = connect_redis(Settings(redis_url=f"redis://127.0.0.1:{proxy.port}/{db}", redis_timeout=5.0))
    try:
        store = SessionStore(client, channel=TEST_CHANNEL)
        store.create(session_id, '{"n":0}', 60)
        store.update(session_id, '{"n":0}', 1, idempotency=keyed("warm", "PUT", "/s"))  # scripts loaded
        key = keyed("cut", "PUT", "/s", '{"n":1}')

        proxy.cut_after_request()  # the script runs; its reply never arrives
        with pytest.raises(ServiceUnavailable):
            store.update(session_id, '{"n":1}', 2, idempotency=key)
        again = store.update(session_id, '{"n":1}', 2, idempotency=key)

        assert again.replayed and (again.session.version, again.session.state) == (3, {"n": 1})
        assert SessionStore(redis_single).get(session_id).version == 3
    finally:
        client.close()
        proxy.close()


# -- the service: a replay comes before every recovery path --------------------------

def test_a_replay_comes_before_the_epoch_check_of_a_value_from_before_a_failover(store, session_id):
    store.create(session_id, '{"n":0}', 600)
    key = keyed("k-epoch", "PUT", "/s", '{"n":1}')
    first = store.update(session_id, '{"n":1}', 1, idempotency=key, persisted_version=None)
    # the value now looks written before Redis went back in time (another epoch)
    raw = store.client.get(session_keys(session_id)[0]).split(b"|", 5)
    raw[4] = raw[4][:1] + b"00000000"
    store.client.set(session_keys(session_id)[0], b"|".join(raw), keepttl=True)

    again = store.update(session_id, '{"n":1}', 1, idempotency=key, persisted_version=None)

    assert again.replayed and again.session == first.session
    with pytest.raises(EpochChanged):  # the same write without its key asks PostgreSQL
        store.update(session_id, '{"n":1}', 2, persisted_version=None)


class NoDurable:
    """PostgreSQL as the service sees it, for a session it never got: a
    replay must not even ask (``asked`` stays empty)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def latest(self, session_id):
        self.asked.append(session_id)
        return None

    def history_page(self, *args, **kwargs):  # pragma: no cover - not used here
        raise AssertionError("not used")


def test_a_replay_is_served_before_recovery_when_redis_lost_the_session_but_not_the_record(
        redis_single, session_id):
    durable = NoDurable()
    service = SessionService(SessionStore(redis_single, channel=TEST_CHANNEL), durable=durable,
                             settle_seconds=0)
    create_key = keyed("k1", "POST", "/sessions", session_id)
    update_key = keyed("k2", "PUT", "/s", '{"n":1}')
    created = service.create(CreateRequest(session_id, '{"n":0}', 600), create_key)
    updated = service.update(UpdateRequest(session_id, '{"n":1}', 1), update_key)
    durable.asked.clear()
    # Redis forgets the session and its marker (what a flush or eviction takes)
    redis_single.delete(session_keys(session_id)[0])
    forget_marker(redis_single, session_id)

    again_created = service.create(CreateRequest(session_id, '{"n":0}', 600), create_key)
    again_updated = service.update(UpdateRequest(session_id, '{"n":1}', 1), update_key)

    assert again_created.replayed and again_created == created
    assert again_updated.replayed and again_updated == updated
    assert durable.asked == []  # neither IdUnknown nor KeyMissing was reached
    assert redis_single.exists(session_keys(session_id)[0], hold_key(session_id)) == 0


def test_a_retry_whose_record_redis_lost_is_treated_as_a_new_request(redis_single, session_id):
    service = SessionService(SessionStore(redis_single, channel=TEST_CHANNEL))
    key = keyed("k-lost", "POST", "/sessions", session_id)
    service.create(CreateRequest(session_id, '{"n":0}', 600), key)
    redis_single.delete(idempotency_key(session_id, key.key))  # evicted, or lost in a failover

    # the honest degradation (docs/guarantees.md, limits): today's answer
    with pytest.raises(SessionExists):
        service.create(CreateRequest(session_id, '{"n":0}', 600), key)


def test_a_replay_is_not_shipped_a_second_time(redis_single, session_id):
    store = SessionStore(redis_single, channel=TEST_CHANNEL)
    service = SessionService(store)
    key = keyed("k-ship", "POST", "/sessions", session_id)
    service.create(CreateRequest(session_id, '{}', 600), key)
    with store.client.pubsub() as listener:
        listener.subscribe(TEST_CHANNEL)
        assert listener.get_message(timeout=5)["type"] == "subscribe"
        assert service.create(CreateRequest(session_id, '{}', 600), key).replayed
        # nothing committed again: no second event for the relay, none announced
        assert listener.get_message(timeout=0.5) is None
    assert outbox_entries_of(store, [session_id]) == [f"{session_id}:1"]


# -- a write whose answer is lost, end to end -------------------------------------------

def test_a_keyed_write_whose_answer_was_cut_off_is_answered_on_retry_and_persisted_once(
        pipeline, pipeline_redis):
    """The client's connection is reset after Redis ran the script: the
    write is committed, the client got a 503.  Its retry with the same key
    gets the original outcome, not a 409, and PostgreSQL gets one event."""
    sid = f"idem-{uuid.uuid4().hex[:12]}"
    proxy = TcpProxy(pipeline_redis.port)
    client = connect_redis(Settings(redis_url=f"redis://127.0.0.1:{proxy.port}/0", redis_timeout=5.0))
    try:
        service = SessionService(SessionStore(client), durable=pipeline.database)
        create_key = keyed("cut-1", "POST", "/sessions", sid)
        update_key = keyed("cut-2", "PUT", f"/sessions/{sid}", '{"n":1}', "1")
        # with PostgreSQL behind it, a create of an id Redis does not know
        # takes three round trips (CREATE_SCRIPT 'unknown', the settle
        # check, CREATE_SCRIPT again): the cut must hit the one that
        # commits, so this create runs without PostgreSQL (one script)
        creator = SessionService(service.store)

        # the connection open and the scripts loaded: the cut hits the
        # script's reply, not the handshake's or a NOSCRIPT
        for script in (CREATE_SCRIPT, UPDATE_SCRIPT):
            client.script_load(script)
        proxy.cut_after_request()  # the create runs; its answer never arrives
        with pytest.raises(ServiceUnavailable):
            creator.create(CreateRequest(sid, '{"n":0}', 600), create_key)
        # the retry goes through the full service: the record answers first
        created = service.create(CreateRequest(sid, '{"n":0}', 600), create_key)
        proxy.cut_after_request()
        with pytest.raises(ServiceUnavailable):
            service.update(UpdateRequest(sid, '{"n":1}', 1), update_key)
        updated = service.update(UpdateRequest(sid, '{"n":1}', 1), update_key)

        assert created.replayed and created.version == 1
        assert updated.replayed and (updated.version, updated.state) == (2, {"n": 1})
        # the committed writes' events wait in the outbox (their inline
        # sends never ran): the relay sends them, once each
        pipeline.deliver()
        assert pipeline.event_rows([sid]) == [(sid, 1), (sid, 2)]
        assert pipeline.session_rows([sid])[sid][:2] == (2, {"n": 1})
    finally:
        client.close()
        proxy.close()
