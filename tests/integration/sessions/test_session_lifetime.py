"""A session ends when its lifetime ends (docs/decisions/session-lifetime.md).

On real Redis and a real PostgreSQL: recovery never serves a session whose
lifetime ended (404 SessionExpired) but still recovers one Redis lost while
it was alive; a touch and a PUT slide the lifetime; a read slides only the
Redis key (SESSION_SLIDE_ON_READ); the expiry sweep records exactly one
session_expired event per session, whatever runs beside it.  Keys expire
for real here (a TTL of 1 s, waited for), except where a test says it plays
an eviction by deleting the key.

The sweep walks every session of its database, so the sweep tests run on a
database of their own (``own_database``): they never expire another test's
sessions.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
import redis

from chalicelib.adapters.postgres.database import Database
from chalicelib.adapters.redis.keys import bucket_of, epoch_key, outbox_keys, session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.domain.errors import (
    ConcurrencyError,
    RecoveryPending,
    SessionExists,
    SessionExpired,
    SessionNotFound,
)
from chalicelib.domain.events import parse_event
from chalicelib.domain.session import iso_plus_seconds, iso_to_ms
from chalicelib.domain.store import Marker
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.pipeline.expiry import ExpirySweep
from chalicelib.service.sessions import SessionService
from sessionsync.redis_views import subscribe
from tests.support.constants import PG_TEST_ADMIN_URL, TEST_CHANNEL, database_url
from tests.support.markers import forget_marker
from tests.support.pipeline import event_body, wait_until


@pytest.fixture
def store(redis_single) -> SessionStore:
    return SessionStore(redis_single, channel=TEST_CHANNEL)


@pytest.fixture(scope="module")
def own_dsn():
    """A migrated database of this module's own (see the module docstring)."""
    from sessionsync import provisioning
    dsn = database_url(PG_TEST_ADMIN_URL, f"sessionsync_life_{uuid.uuid4().hex[:10]}")
    provisioning.ensure_database(dsn)
    try:
        provisioning.migrate(dsn)
        yield dsn
    finally:
        provisioning.drop_database(dsn)


@pytest.fixture
def own_database(own_dsn):
    db = Database.from_dsn(own_dsn)
    yield db
    db.close()


def _sid() -> str:
    return f"life-{uuid.uuid4().hex[:12]}"


def _service(store, database, **options) -> SessionService:
    return SessionService(store, durable=database, settle_seconds=0.0, **options)


def _sweep(store, database, **options) -> ExpirySweep:
    options.setdefault("settle_seconds", 0.0)
    options.setdefault("grace_seconds", 0.0)
    return ExpirySweep(store, database, **options)


def _persist(database, *writes) -> None:
    """What the consumer does with these writes' events."""
    result = database.apply_events([parse_event(w.event_json) for w in writes])
    assert result.failures == {}


def _wait_expired(store, sid) -> None:
    """Until Redis expired the key by itself (a TTL of 1 s)."""
    wait_until(lambda: not store.client.exists(session_keys(sid)[0]), timeout=15,
               what=f"Redis to expire {sid}")


def _outbox(store, sid) -> dict[int, dict]:
    """version -> event of this session's outbox entries."""
    data = outbox_keys(bucket_of(sid))[1]
    found = {}
    for eid, body in store.client.hgetall(data).items():
        owner, version = eid.decode().rsplit(":", 1)
        if owner == sid:
            found[int(version)] = json.loads(body)
    return found


def _row(dsn, sid):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT version, deleted, expired, expires_at FROM sync_sessions WHERE session_id = %s",
            (sid,)).fetchone()


def _events(dsn, sid) -> list[tuple[int, str]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [(int(v), t) for v, t in conn.execute(
            "SELECT version, event_type FROM sync_events WHERE session_id = %s ORDER BY version",
            (sid,)).fetchall()]


# --- expires_at ---------------------------------------------------------------

def test_expires_at_is_the_last_write_plus_the_ttl_in_the_session_and_in_postgresql(
        store, own_database, own_dsn):
    """The event carries the write's time and TTL, not their sum: PostgreSQL
    derives the same expires_at the session answers."""
    sid = _sid()
    created = store.create(sid, '{"n":1}', 600)
    updated = store.update(sid, '{"n":2}', 1)
    _persist(own_database, created, updated)

    assert updated.session.expires_at == iso_plus_seconds(updated.session.updated_at, 600)
    assert json.loads(updated.session.to_json())["expires_at"] == updated.session.expires_at
    event = json.loads(updated.event_json)
    assert "expires_at" not in event
    assert (event["occurred_at"], event["ttl_seconds"]) == (updated.session.updated_at, 600)
    version, _, expired, expires_at = _row(own_dsn, sid)
    assert (version, expired) == (2, False)
    assert expires_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" == updated.session.expires_at


def test_an_event_without_expires_at_is_persisted_with_its_time_plus_its_ttl(own_database, own_dsn):
    """What the scripts write (and wrote before events first carried it)."""
    sid = _sid()
    body = event_body(sid, 1, occurred_at="2026-11-28T16:33:31.000Z")
    assert "expires_at" not in json.loads(body)

    assert own_database.apply_events([parse_event(body)]).failures == {}

    expires_at = _row(own_dsn, sid)[3]
    assert expires_at.isoformat() == "2026-11-28T17:33:31+00:00"  # + ttl_seconds 3600


def test_an_event_of_the_previous_release_with_expires_at_is_persisted_with_it(own_database, own_dsn):
    """The release before wrote each write's expires_at into its event (Lua
    date arithmetic): such an event, still in the outbox or the queue
    during an upgrade, is persisted with the expires_at it carries."""
    sid = _sid()
    doc = json.loads(event_body(sid, 1, occurred_at="2026-11-28T16:33:31.000Z"))
    # its exact field order (expires_at after occurred_at), as its scripts wrote it
    old = {k: doc[k] for k in ("schema_version", "event_id", "event_type", "session_id", "version",
                              "created_at", "occurred_at")}
    old["expires_at"] = "2026-11-28T17:33:31.000Z"
    old.update({k: doc[k] for k in ("ttl_seconds", "state")})
    body = json.dumps(old, separators=(",", ":"))

    event = parse_event(body)
    assert event.expires_at == "2026-11-28T17:33:31.000Z"
    assert own_database.apply_events([event]).failures == {}
    version, deleted, expired, expires_at = _row(own_dsn, sid)
    assert (version, deleted, expired) == (1, False, False)
    assert expires_at.isoformat() == "2026-11-28T17:33:31+00:00"


def test_postgresql_and_python_derive_the_same_expires_at(own_database, own_dsn):
    """The expires_at PostgreSQL derives from an event (its time + its TTL)
    and the session's (Python) are one value: month, year and leap-day
    boundaries, and random times."""
    import random

    from chalicelib.adapters.redis.codec import iso_utc
    rng = random.Random(12)
    cases = [("2026-12-31T23:59:59.999Z", 1), ("2028-02-28T23:00:00.000Z", 3600),
             ("2100-02-28T23:59:59.000Z", 1), ("2000-02-29T00:00:00.001Z", 30 * 24 * 3600)]
    cases += [(iso_utc(rng.uniform(0, 4_102_444_800)), rng.randint(1, 30 * 24 * 3600)) for _ in range(300)]
    events = {}
    for iso, seconds in cases:
        doc = json.loads(event_body(_sid(), 1, occurred_at=iso))
        doc["ttl_seconds"] = seconds
        events[doc["session_id"]] = (iso, seconds, json.dumps(doc))
    assert own_database.apply_events([parse_event(body) for *_, body in events.values()]).failures == {}

    with psycopg.connect(own_dsn, autocommit=True) as conn:
        rows = conn.execute(
            """SELECT session_id, to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
               FROM sync_sessions WHERE session_id = ANY(%s)""", (list(events),)).fetchall()
    assert len(rows) == len(cases)
    for sid, derived in rows:
        iso, seconds, _ = events[sid]
        assert derived == iso_plus_seconds(iso, seconds), (iso, seconds)


# --- recovery never serves an expired session ----------------------------------

def test_a_session_whose_lifetime_ended_is_session_expired_on_get_put_delete_and_touch(
        store, own_database):
    service = _service(store, own_database)
    sid = _sid()
    created = store.create(sid, '{"n":1}', 1)
    _persist(own_database, created)
    _wait_expired(store, sid)

    for attempt in (lambda: service.get(sid),
                    lambda: service.update(UpdateRequest(sid, '{"n":2}', 1)),
                    lambda: service.delete(sid, 1),
                    lambda: service.touch(sid)):
        with pytest.raises(SessionExpired) as expired:
            attempt()
        assert expired.value.status == 404 and expired.value.code == "SessionExpired"
        assert expired.value.details["expires_at"] == created.session.expires_at

    # nothing was written back or written at all
    assert store.client.get(session_keys(sid)[0]) is None
    assert store.marker(sid) == Marker(1, "L")
    assert list(_outbox(store, sid)) == [1]
    with pytest.raises(SessionExists):  # and the id is not reused
        service.create(CreateRequest(sid, '{"n":9}', None))


def test_a_session_redis_lost_before_its_lifetime_ended_is_still_recovered(store, own_database):
    service = _service(store, own_database)
    sid = _sid()
    _persist(own_database, store.create(sid, '{"n":1}', 600))
    store.client.delete(session_keys(sid)[0])  # evicted, long before its end

    read = service.get(sid)

    assert read.recovered and (read.session.version, read.session.state) == (1, {"n": 1})
    assert service.update(UpdateRequest(sid, '{"n":2}', 1)).version == 2


def _ms_left(session) -> float:
    """Milliseconds from now until ``session``'s written lifetime ends."""
    return iso_to_ms(session.expires_at) - time.time() * 1000


def test_a_session_recovered_after_an_eviction_keeps_what_was_left_of_its_lifetime(
        store, own_database):
    """Recovery brings back the session Redis lost, not a new lifetime: the
    key gets the time left until the persisted expires_at, and once that
    passed the session is over (no GET serves it, no PUT writes it)."""
    service = _service(store, own_database)
    sid = _sid()
    created = store.create(sid, '{"n":1}', 4)
    _persist(own_database, created)
    time.sleep(1.5)
    store.client.delete(session_keys(sid)[0])  # evicted, 1.5 s into its 4 s

    read = service.get(sid)

    assert read.recovered and read.session.version == 1
    assert store.client.pttl(session_keys(sid)[0]) <= _ms_left(created.session) + 50
    time.sleep(max(0.0, _ms_left(created.session) / 1000) + 0.3)
    with pytest.raises(SessionExpired):
        service.get(sid)
    with pytest.raises(SessionExpired):
        service.update(UpdateRequest(sid, '{"n":2}', 1))
    assert sorted(_outbox(store, sid)) == [1] and own_database.latest(sid).version == 1


def test_a_restore_once_the_lifetime_ended_writes_nothing_and_answers_session_expired(store):
    """The script judges the lifetime too, on Redis's clock, atomically with
    the write: recovery that checked a moment before the end cannot revive."""
    sid = _sid()
    created = store.create(sid, '{"n":1}', 1)
    _wait_expired(store, sid)

    with pytest.raises(SessionExpired) as expired:
        store.restore(created.session)

    assert expired.value.details["expires_at"] == created.session.expires_at
    assert store.client.get(session_keys(sid)[0]) is None
    assert store.marker(sid) == Marker(1, "L")


def test_a_write_still_in_the_queue_is_waited_for_before_the_session_is_called_expired(
        store, own_database):
    """PostgreSQL's copy expired, but Redis acknowledged a newer write that
    slid the lifetime: 503 RecoveryPending, not SessionExpired, until it is
    persisted."""
    service = _service(store, own_database)
    sid = _sid()
    _persist(own_database, store.create(sid, '{"n":1}', 1))
    v2 = store.update(sid, '{"n":2}', 1, ttl_seconds=600)  # acknowledged, still in the queue
    store.client.delete(session_keys(sid)[0])  # evicted
    time.sleep(1.1)  # v1's lifetime ended; v2's has not

    with pytest.raises(RecoveryPending):
        service.get(sid)
    _persist(own_database, v2)
    read = service.get(sid)
    assert read.recovered and read.session.version == 2


@pytest.mark.parametrize("write", ["update", "touch"])
def test_a_write_that_read_its_clock_before_the_last_write_never_moves_the_lifetime_back(
        store, own_database, write):
    """A write's time is read before its script runs; on a busy machine the
    writer may wait between the two while another write commits.  The later
    version must not end the session before the earlier one promised::

        t0     A (If-Match: *, or a touch) reads its clock
        t0+2s  B: PUT v2 expected 1, acknowledged: ends at t0+2s+ttl at the earliest
        t0+2s  A's script runs: v3, written at t0 -> would end 2 s before v2's end

    The chaos rule (g) found it: a read answered SessionExpired before the
    lifetime of an acknowledged write could have ended."""
    service = _service(store, own_database)
    sid = _sid()
    v1 = store.create(sid, '{"n":1}', 5)
    v2 = store.update(sid, '{"n":2}', 1)
    late = SessionStore(store.client, channel=TEST_CHANNEL, clock=lambda: time.time() - 2.0)
    v3 = late.update(sid, '{"n":3}', None) if write == "update" else late.touch(sid)

    assert v3.session.updated_at >= v2.session.updated_at
    assert v3.session.expires_at >= v2.session.expires_at
    assert json.loads(v3.event_json)["occurred_at"] == v3.session.updated_at
    _persist(own_database, v1, v2, v3)
    time.sleep(max(0.0, _ms_left(v2.session) / 1000 - 1.5))
    store.client.delete(session_keys(sid)[0])  # evicted before v2's lifetime ended
    assert service.get(sid).session.version == 3


# --- the repair after a failover -------------------------------------------------
#
# A failover is played by what it leaves behind (as in test_redis_forgets.py):
# an older version written by the previous primary (another epoch), its
# marker, and the bucket's epoch record of that primary.

def _left_behind(store, sid, session) -> None:
    key, markers = session_keys(sid)[:2]
    store.client.set(epoch_key(sid), "deadbeef|0")
    store.client.set(key, f"{session.version}|{session.created_at}|{session.updated_at}|"
                          f"{session.ttl_seconds}|L|{session.state_json}", ex=600)
    store.client.hset(markers, sid, f"{session.version}|L")


def test_a_repair_after_a_failover_keeps_what_was_left_of_the_lifetime(store, own_database):
    service = _service(store, own_database)
    sid = _sid()
    v1 = store.create(sid, '{"n":1}', 30)
    v2 = store.update(sid, '{"n":2}', 1)
    _persist(own_database, v1, v2)
    time.sleep(1.0)
    _left_behind(store, sid, v1.session)

    read = service.get(sid)  # PostgreSQL's v2 repairs Redis

    assert read.session.version == 2
    assert store.client.pttl(session_keys(sid)[0]) <= _ms_left(v2.session) + 50


def test_a_repair_after_a_failover_never_revives_a_session_whose_lifetime_ended(store, own_database):
    """PostgreSQL's version is newer than the one the promoted replica holds,
    but its lifetime ended: the session is over (SessionExpired), the stale
    value goes, and the marker names PostgreSQL's version, so the sweep
    records the end."""
    service = _service(store, own_database)
    sid = _sid()
    v1 = store.create(sid, '{"n":1}', 2)
    v2 = store.update(sid, '{"n":2}', 1)
    _persist(own_database, v1, v2)
    _left_behind(store, sid, v1.session)
    time.sleep(max(0.0, _ms_left(v2.session) / 1000) + 0.3)

    with pytest.raises(SessionExpired):
        service.get(sid)
    with pytest.raises(SessionExpired):
        service.update(UpdateRequest(sid, '{"n":3}', 2))

    assert store.client.get(session_keys(sid)[0]) is None
    assert store.marker(sid) == Marker(2, "L") and sorted(_outbox(store, sid)) == [1, 2]
    status, _ = store.expire(sid, own_database.latest(sid))
    assert status == "expired"


def test_a_repair_after_a_failover_puts_an_expiry_back_as_final_not_as_a_live_session(
        store, own_database, own_dsn):
    """PostgreSQL's latest row is the session_expired the promoted replica
    lacks: as final as a deletion.  The repair puts the final marker back
    and answers SessionExpired; it never writes the expiry as a live value
    (state null) that a PUT would then write on."""
    service = _service(store, own_database)
    sid = _sid()
    v1 = store.create(sid, '{"n":1}', 1)
    _persist(own_database, v1)
    _wait_expired(store, sid)
    status, expiry = store.expire(sid, own_database.latest(sid))
    assert status == "expired" and expiry is not None
    _persist(own_database, expiry)
    _left_behind(store, sid, v1.session)

    with pytest.raises(SessionExpired):
        service.get(sid)
    with pytest.raises(SessionExpired):
        service.update(UpdateRequest(sid, '{"n":2}', 1))

    assert store.client.get(session_keys(sid)[0]) is None
    assert store.marker(sid) == Marker(2, "E")
    assert sorted(_outbox(store, sid)) == [1, 2]  # nothing written after the expiry
    assert _events(own_dsn, sid) == [(1, "session_created"), (2, "session_expired")]


# --- PUT with a new TTL, touch ---------------------------------------------------

def test_a_put_may_change_the_ttl_and_slides_the_lifetime(store, own_database, own_dsn):
    service = _service(store, own_database)
    sid = _sid()
    service.create(CreateRequest(sid, '{"n":1}', 60))

    session = service.update(UpdateRequest(sid, '{"n":2}', 1, ttl_seconds=7200))

    assert (session.version, session.ttl_seconds) == (2, 7200)
    assert session.expires_at == iso_plus_seconds(session.updated_at, 7200)
    assert 7000 < store.client.ttl(session_keys(sid)[0]) <= 7200
    assert store.get(sid).ttl_seconds == 7200
    events = _outbox(store, sid)
    assert (events[2]["ttl_seconds"], events[2]["occurred_at"]) == (7200, session.updated_at)
    # PostgreSQL derives the lifetime the answer showed from the event
    assert own_database.apply_events([parse_event(json.dumps(events[v])) for v in (1, 2)]).failures == {}
    expires_at = _row(own_dsn, sid)[3]
    assert expires_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" == session.expires_at


def test_a_touch_bumps_the_version_keeps_the_state_and_records_session_touched(
        any_redis, own_database, own_dsn):
    """In the session's slot, on the single node and on the cluster."""
    store = SessionStore(any_redis, channel=TEST_CHANNEL)
    service = _service(store, own_database)
    sid = _sid()
    created = store.create(sid, '{"cart":["book"],"é":"\\u00e9"}', 60)

    with subscribe(store) as published:
        touched = store.touch(sid, 1, ttl_seconds=120)
        # On the cluster a PUBLISH reaches the subscriber's node over the
        # cluster bus: the create's event, published before the subscription,
        # can still arrive after it.  The test owns the touch's event alone.
        on_channel = wait_until(
            lambda: next((e for e in [next(published)] if e and e["version"] == 2), None),
            timeout=5, what="the touch on Pub/Sub")

    assert (touched.session.version, touched.session.ttl_seconds) == (2, 120)
    assert touched.session.state_json == created.session.state_json
    assert touched.session.created_at == created.session.created_at
    assert touched.session.expires_at == iso_plus_seconds(touched.session.updated_at, 120)
    assert store.get(sid) == touched.session
    assert 100 < store.client.ttl(session_keys(sid)[0]) <= 120
    event = json.loads(touched.event_json)
    assert on_channel == event
    assert (event["event_type"], event["version"], event["state"]) == (
        "session_touched", 2, {"cart": ["book"], "é": "é"})
    assert (event["occurred_at"], event["ttl_seconds"]) == (touched.session.updated_at, 120)
    _persist(own_database, created, touched)
    assert _events(own_dsn, sid) == [(1, "session_created"), (2, "session_touched")]
    expires_at = _row(own_dsn, sid)[3]
    assert expires_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" == touched.session.expires_at
    assert own_database.latest(sid).state == {"cart": ["book"], "é": "é"}
    # a touch without a TTL keeps it; the service path writes the same way
    again = service.touch(sid)
    assert (again.version, again.ttl_seconds) == (3, 120)


def test_a_touch_with_a_stale_version_or_on_a_deleted_session_writes_nothing(store):
    sid = _sid()
    store.create(sid, '{"n":1}', 60)
    store.update(sid, '{"n":2}', 1)
    before = (store.client.get(session_keys(sid)[0]), sorted(_outbox(store, sid)))

    with pytest.raises(ConcurrencyError) as conflict:
        store.touch(sid, 1)
    assert conflict.value.actual_version == 2
    assert (store.client.get(session_keys(sid)[0]), sorted(_outbox(store, sid))) == before

    store.delete(sid, 2)
    with pytest.raises(SessionNotFound) as gone:
        store.touch(sid)
    assert gone.value.deleted and sorted(_outbox(store, sid)) == [1, 2, 3]


# --- slide on read -------------------------------------------------------------------

def test_a_read_with_slide_on_read_gives_the_key_its_full_ttl_again_and_writes_nothing(
        any_redis, own_database):
    store = SessionStore(any_redis, channel=TEST_CHANNEL)
    sid = _sid()
    store.create(sid, '{"n":1}', 600)
    key = session_keys(sid)[0]
    store.client.pexpire(key, 5000)

    assert _service(store, own_database).get(sid).session.version == 1  # off by default
    assert store.client.pttl(key) <= 5000
    read = _service(store, own_database, slide_on_read=True).get(sid)

    assert read.session.version == 1 and not read.recovered
    assert store.client.pttl(key) > 590_000
    assert store.marker(sid) == Marker(1, "L") and sorted(_outbox(store, sid)) == [1]


def test_a_session_kept_alive_only_by_reads_ends_when_redis_loses_it(store, own_database, own_dsn):
    """The documented rule: reads keep the key in Redis, but the lifetime
    PostgreSQL knows moves only with writes, so once that lifetime ended a
    session that Redis then loses is over (SessionExpired), and while Redis
    keeps it the sweep leaves it alone."""
    service = _service(store, own_database, slide_on_read=True)
    sid = _sid()
    created = store.create(sid, '{"n":1}', 1)
    _persist(own_database, created)
    end = time.time() + 2.5
    while time.time() < end:  # reads only, past the written lifetime
        assert service.get(sid).session.version == 1
        time.sleep(0.2)
    assert created.session.expired_at(time.time())

    result = _sweep(store, own_database).run(budget_seconds=30)
    assert sid not in result.expired_ids and list(_outbox(store, sid)) == [1]
    assert service.get(sid).session.version == 1  # still served from Redis

    store.client.delete(session_keys(sid)[0])  # Redis loses it
    with pytest.raises(SessionExpired):
        service.get(sid)


# --- the expiry sweep ---------------------------------------------------------------

def test_two_sweeps_at_once_record_exactly_one_session_expired_per_session(store, own_database, own_dsn):
    sids = [_sid() for _ in range(6)]
    for sid in sids:
        _persist(own_database, store.create(sid, '{"n":1}', 1))
    for sid in sids:
        _wait_expired(store, sid)
    sweeps = [_sweep(store, Database.from_dsn(own_dsn), batch=2) for _ in range(2)]
    start = threading.Barrier(2)
    results = []

    def run(sweep):
        start.wait(timeout=10)
        results.append(sweep.run(budget_seconds=30))

    threads = [threading.Thread(target=run, args=(s,)) for s in sweeps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for sweep in sweeps:
        sweep.durable.close()

    expired = [sid for r in results for sid in r.expired_ids if sid in sids]
    assert sorted(expired) == sorted(sids)  # each once, by one sweep or the other
    for sid in sids:
        entries = _outbox(store, sid)
        assert sorted(entries) == [1, 2]
        assert (entries[2]["event_type"], entries[2]["state"]) == ("session_expired", None)
        assert store.marker(sid) == Marker(2, "E")
    # the pipeline persists them; a later sweep finds nothing to do
    own_database.apply_events([parse_event(json.dumps(_outbox(store, sid)[2])) for sid in sids])
    for sid in sids:
        assert _events(own_dsn, sid) == [(1, "session_created"), (2, "session_expired")]
        assert _row(own_dsn, sid)[:3] == (2, False, True)
    again = _sweep(store, own_database).run(budget_seconds=30)
    assert not set(again.expired_ids) & set(sids)


def test_a_session_expired_event_keeps_the_end_that_passed_not_the_sweep_s_time_plus_the_ttl(
        store, own_database, own_dsn):
    """A write's event leaves its end out (PostgreSQL derives it from its
    time and TTL); the sweep's, written later than that end, carries it."""
    sid = _sid()
    created = store.create(sid, '{"n":1}', 1)
    _persist(own_database, created)
    _wait_expired(store, sid)
    time.sleep(1.1)  # the sweep's time + the TTL is past the end by now
    assert sid in _sweep(store, own_database).run(budget_seconds=30).expired_ids

    event = _outbox(store, sid)[2]
    assert (event["event_type"], event["expires_at"]) == ("session_expired", created.session.expires_at)
    own_database.apply_events([parse_event(json.dumps(event))])
    version, _, expired, expires_at = _row(own_dsn, sid)
    assert (version, expired) == (2, True)
    assert expires_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" == created.session.expires_at


def test_a_write_racing_the_sweep_is_never_lost_and_never_forks_a_version(store, own_database, own_dsn):
    service = _service(store, own_database)
    sid = _sid()
    _persist(own_database, store.create(sid, '{"n":1}', 1))
    v2 = store.update(sid, '{"n":2}', 1)  # acknowledged; PostgreSQL lags it
    _wait_expired(store, sid)

    first = _sweep(store, own_database).run(budget_seconds=30)
    assert sid not in first.expired_ids and first.skipped.get("ahead", 0) >= 1
    assert sorted(_outbox(store, sid)) == [1, 2]  # no session_expired at version 2

    _persist(own_database, v2)  # the consumer caught up
    second = _sweep(store, own_database).run(budget_seconds=30)
    assert sid in second.expired_ids
    assert _outbox(store, sid)[3]["event_type"] == "session_expired"
    # a write after the sweep: the final marker refuses it
    with pytest.raises(SessionExpired):
        service.update(UpdateRequest(sid, '{"n":3}', 2))
    with pytest.raises(SessionExpired):
        service.get(sid)
    assert sorted(_outbox(store, sid)) == [1, 2, 3]


def test_the_sweep_leaves_a_live_session_and_a_deleted_one_alone(store, own_database):
    live, deleted = _sid(), _sid()
    _persist(own_database, store.create(live, '{"n":1}', 600))
    _persist(own_database, store.create(deleted, '{"n":1}', 1), store.delete(deleted, 1))
    time.sleep(1.1)

    result = _sweep(store, own_database).run(budget_seconds=30)

    assert not {live, deleted} & set(result.expired_ids)
    assert sorted(_outbox(store, live)) == [1] and sorted(_outbox(store, deleted)) == [1, 2]


def test_candidates_the_sweep_skips_cannot_starve_the_ids_after_them(store, own_database):
    """Sessions kept alive by reads past their written lifetime are
    candidates every run, and skipped (``alive``); sorting first and filling
    a run's budget, they must not keep a later session's end from ever being
    recorded: each run goes on where the last one stopped."""
    tag = uuid.uuid4().hex[:8]
    kept = [f"life-{tag}-a{n:02d}" for n in range(8)]
    late = f"life-{tag}-z"
    for sid in kept:  # what SESSION_SLIDE_ON_READ leaves: PostgreSQL's lifetime over, the key alive
        _persist(own_database, store.create(sid, '{"n":1}', 1))
        store.client.expire(session_keys(sid)[0], 600)
    _persist(own_database, store.create(late, '{"n":1}', 1))
    _wait_expired(store, late)
    sweep = _sweep(store, own_database, batch=2)
    cutoff = datetime.fromtimestamp(time.time(), UTC)
    runs = len(own_database.expiry_candidates(cutoff, limit=100_000)) // 2 + 2

    expired = []
    for _ in range(runs):  # a budget of 0: one batch a run
        result = sweep.run(budget_seconds=0)
        expired += result.expired_ids
        assert not set(kept) & set(result.expired_ids)

    assert late in expired and store.marker(late) == Marker(2, "E")


def test_a_session_redis_lost_entirely_is_expired_only_after_the_hold(store, own_database, own_dsn):
    """No key and no marker: PostgreSQL may lack a write still in the queue,
    so the sweep holds the session for the settle time, as recovery does."""
    sid = _sid()
    _persist(own_database, store.create(sid, '{"n":1}', 1))
    _wait_expired(store, sid)
    forget_marker(store.client, sid)  # the marker too (a flush)
    sweep = _sweep(store, own_database, settle_seconds=1.0)

    first = sweep.run(budget_seconds=30)
    assert sid not in first.expired_ids and first.skipped.get("held", 0) >= 1
    assert list(_outbox(store, sid)) == [1]

    expired = wait_until(lambda: sid in sweep.run(budget_seconds=30).expired_ids, timeout=15,
                         what="the hold to pass", interval=0.3)
    assert expired and store.marker(sid) == Marker(2, "E")


def test_a_sweep_run_through_the_pipeline_persists_session_expired_once(
        pipeline_redis, sqs, queue_pair, own_database, own_dsn):
    """Store, producer, LocalStack queue, consumer and PostgreSQL all real;
    two sweeps, and the relay sending the same outbox entries too."""
    from tests.support.pipeline import Pipeline
    client = redis.Redis.from_url(pipeline_redis.url, socket_timeout=5)
    try:
        pipeline = Pipeline(sqs, queue_pair, SessionStore(client), own_database, own_dsn)
        service = SessionService(pipeline.store, durable=own_database,
                                 settle_seconds=0)
        sid = _sid()
        service.create(CreateRequest(sid, '{"n":1}', 1))
        pipeline.deliver(timeout=60)
        _wait_expired(pipeline.store, sid)

        for _ in range(2):
            _sweep(pipeline.store, own_database, publisher=pipeline.producer).run(budget_seconds=30)
        pipeline.relay.drain(budget_seconds=30)
        pipeline.relay.drain(budget_seconds=30)
        pipeline.deliver(timeout=60)

        assert _events(own_dsn, sid) == [(1, "session_created"), (2, "session_expired")]
        assert _row(own_dsn, sid)[:3] == (2, False, True)
        assert pipeline.totals()["dead_lettered"] == 0
        history = service.history(sid, limit=10, before_version=None)
        assert [e["event_type"] for e in history.events] == ["session_expired", "session_created"]
        # PostgreSQL's flag is final: no wait, even once Redis forgot the marker
        forget_marker(pipeline.store.client, sid)
        with pytest.raises(SessionExpired):
            service.get(sid)
    finally:
        client.close()


# --- where the sweep runs: `sessionsync sweep`, `sessionsync serve`'s thread -------------

def test_sessionsync_sweep_counts_in_a_dry_run_then_expires(store, own_database, own_dsn):
    from chalicelib.config import Settings
    from tests.support.constants import REDIS_TEST_URL
    from tests.support.ops import cli_env, run_cli
    sid = _sid()
    _persist(own_database, store.create(sid, '{"n":1}', 1))
    _wait_expired(store, sid)
    env = cli_env(Settings(redis_url=REDIS_TEST_URL, database_url=own_dsn, channel=TEST_CHANNEL),
                  SESSION_EXPIRY_GRACE_SECONDS="0", REDIS_SETTLE_SECONDS="0")

    dry = run_cli("sweep", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("candidates ") and "dry run" in dry.stdout
    assert list(_outbox(store, sid)) == [1]  # nothing written

    real = run_cli("sweep", env=env)
    assert real.returncode == 0, real.stderr
    assert "expired" in real.stdout and store.marker(sid) == Marker(2, "E")
    assert _outbox(store, sid)[2]["event_type"] == "session_expired"


def test_the_local_sweep_loop_runs_until_stopped_and_survives_a_failing_run(store, own_database):
    from sessionsync.worker import run_sweeps
    sid = _sid()
    _persist(own_database, store.create(sid, '{"n":1}', 1))
    _wait_expired(store, sid)
    sweep = _sweep(store, own_database)
    runs = []
    real_run = sweep.run

    def counted(**options):
        runs.append(options)
        if len(runs) == 1:
            raise RuntimeError("a first run that fails")  # the loop must go on
        return real_run(**options)

    sweep.run = counted  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=run_sweeps, args=(sweep, stop), kwargs={"interval": 0.1})
    thread.start()
    try:
        wait_until(lambda: store.marker(sid) == Marker(2, "E"), timeout=30, what="the loop to expire it")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and len(runs) >= 2


def test_a_stale_read_while_redis_is_down_never_serves_a_session_whose_lifetime_ended(
        throwaway_redis, own_database):
    """Cache-Control: max-stale serves PostgreSQL's copy while Redis is down,
    but not one whose lifetime ended: 404 SessionExpired once the sweep
    recorded it, Redis's 503 while a write in the queue may still have slid it."""
    from chalicelib.adapters.redis.client import connect_redis
    from chalicelib.config import Settings
    from chalicelib.domain.errors import ServiceUnavailable
    from chalicelib.domain.validation import MaxStale
    store = SessionStore(connect_redis(Settings(redis_url=throwaway_redis.url)), channel=TEST_CHANNEL)
    service = _service(store, own_database)
    live, ended, recorded = _sid(), _sid(), _sid()
    _persist(own_database, store.create(live, '{"n":1}', 600))
    for sid in (ended, recorded):
        _persist(own_database, store.create(sid, '{"n":1}', 1))
    for sid in (ended, recorded):
        _wait_expired(store, sid)
    status, write = store.expire(recorded, own_database.latest(recorded))
    assert status == "expired" and write is not None
    _persist(own_database, write)
    throwaway_redis.stop()

    assert service.get_accepting_stale(live, MaxStale(None)).session.state == {"n": 1}
    with pytest.raises(SessionExpired):
        service.get_accepting_stale(recorded, MaxStale(None))
    with pytest.raises(ServiceUnavailable) as down:
        service.get_accepting_stale(ended, MaxStale(None))
    assert down.value.dependency == "redis"


def test_a_touch_and_an_expiry_keep_the_owner_of_an_owned_session(store, own_database, own_dsn):
    touched_id, expired_id = _sid(), _sid()
    store.create(touched_id, '{"n":1}', 60, owner_id="user-7")

    touched = store.touch(touched_id, 1)

    assert touched.session.owner_id == "user-7" and store.get(touched_id).owner_id == "user-7"
    assert store.get(touched_id).state == {"n": 1}
    assert json.loads(touched.event_json)["owner_id"] == "user-7"
    _persist(own_database, store.create(expired_id, '{"n":1}', 1, owner_id="user-7"))
    _wait_expired(store, expired_id)
    status, write = store.expire(expired_id, own_database.latest(expired_id))
    assert status == "expired" and write is not None
    assert json.loads(write.event_json)["owner_id"] == "user-7"
    _persist(own_database, write)
    assert _row(own_dsn, expired_id)[:3] == (2, False, True)
