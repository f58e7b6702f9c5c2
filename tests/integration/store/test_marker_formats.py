"""Markers in either of their forms, on a single node and on the cluster
(chalicelib/adapters/redis/keys.py): the field of the bucket's marker hash,
as this release writes them, and a key of its own, as the previous release
wrote every marker (and as SESSION_MARKER_TTL's markers still are).

A dataset written in the previous format behaves as one written in this
format: a deletion and an expiry stay final, recovery is never served behind
the marker, an id is never created twice, a revoke-all's tombstone defers to
a marker; the first write moves the marker into the hash (one marker, in
one place).  During a rollout a process of the previous release may write
the key while the field holds an older version: the higher one counts.
"""
from __future__ import annotations

import time
import uuid

import pytest

from chalicelib.adapters.redis.codec import iso_utc
from chalicelib.adapters.redis.keys import marker_key, session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.domain.errors import SessionExists, SessionExpired, SessionNotFound
from chalicelib.domain.session import Session
from chalicelib.domain.store import KeyMissing, Marker, MarkerAhead
from tests.support.markers import forget_marker, marker_forms, to_previous_format


@pytest.fixture
def sid() -> str:
    return f"fmt-{uuid.uuid4().hex[:12]}"


def _evict(store, sid) -> None:
    store.client.delete(session_keys(sid)[0])


def _previous(store, sid) -> None:
    """The marker as the previous release left it: a key, no TTL."""
    to_previous_format(store.client, sid)
    assert store.client.ttl(marker_key(sid)) == -1


def test_a_marker_key_is_read_as_the_marker_and_the_first_write_moves_it_into_the_hash(store, sid):
    store.create(sid, '{"n":1}', 600)
    store.update(sid, '{"n":2}', 1)
    _previous(store, sid)

    assert store.marker(sid) == Marker(2, "L")
    store.update(sid, '{"n":3}', 2)

    assert marker_forms(store.client, sid) == (b"3|L", None)
    assert store.marker(sid) == Marker(3, "L")


def test_an_id_whose_only_trace_is_a_marker_key_is_never_created_again(store, sid):
    store.create(sid, '{"n":1}', 600)
    _evict(store, sid)
    _previous(store, sid)

    with pytest.raises(SessionExists) as exists:
        store.create(sid, '{"n":"again"}', 600)

    assert (exists.value.version, exists.value.deleted) == (1, False)
    assert store.client.get(session_keys(sid)[0]) is None
    assert marker_forms(store.client, sid) == (None, b"1|L")  # a refusal writes nothing


def test_a_deletion_in_a_marker_key_stays_final(store, sid):
    store.create(sid, '{"n":1}', 600)
    store.delete(sid, 1)
    _evict(store, sid)  # the tombstone expired
    _previous(store, sid)

    with pytest.raises(SessionNotFound) as update:
        store.update(sid, '{"n":3}', 2)
    with pytest.raises(SessionExists) as create:
        store.create(sid, '{"n":"back"}', 600)

    assert update.value.deleted and create.value.deleted and create.value.version == 2
    assert store.client.get(session_keys(sid)[0]) is None


def test_an_expiry_in_a_marker_key_stays_final_and_a_second_sweep_writes_nothing(store, sid):
    created = store.create(sid, '{"n":1}', 600).session
    _evict(store, sid)
    status, _ = store.expire(sid, created)
    assert status == "expired"
    _previous(store, sid)  # the previous release's sweep wrote "2|E"

    with pytest.raises(SessionExpired):
        store.update(sid, '{"n":3}', 2)
    assert store.expire(sid, created)[0] == "final"
    with pytest.raises(MarkerAhead):  # recovery of what PostgreSQL held before the end
        store.restore(created)

    assert marker_forms(store.client, sid) == (None, b"2|E")
    assert store.client.get(session_keys(sid)[0]) is None


def test_the_sweep_expires_a_session_whose_marker_is_a_key_into_the_hash(store, sid):
    created = store.create(sid, '{"n":1}', 600).session
    _evict(store, sid)
    _previous(store, sid)

    status, write = store.expire(sid, created)

    assert status == "expired" and write.session.version == 2
    assert marker_forms(store.client, sid) == (b"2|E", None)


def test_the_sweep_skips_a_session_whose_marker_key_is_ahead_of_postgresql(store, sid):
    v1 = store.create(sid, '{"n":1}', 600).session
    store.update(sid, '{"n":2}', 1)  # acknowledged; PostgreSQL still holds v1
    _evict(store, sid)
    _previous(store, sid)

    assert store.expire(sid, v1) == ("ahead", None)
    assert marker_forms(store.client, sid) == (None, b"2|L")


def test_recovery_is_refused_behind_a_marker_key_and_restores_the_acknowledged_version(store, sid):
    v1 = store.create(sid, '{"n":1}', 600).session
    v2 = store.update(sid, '{"n":2}', 1).session
    _evict(store, sid)
    _previous(store, sid)

    with pytest.raises(KeyMissing) as missing:
        store.update(sid, '{"n":3}', 2)
    with pytest.raises(MarkerAhead) as behind:
        store.restore(v1)
    assert (missing.value.marker_version, behind.value.marker_version) == (2, 2)
    assert store.client.get(session_keys(sid)[0]) is None

    assert store.restore(v2) == v2
    assert store.get(sid).state == {"n": 2}
    assert marker_forms(store.client, sid) == (b"2|L", None)


def test_a_revoke_all_s_tombstone_defers_to_a_marker_key(store, sid):
    store.create(sid, '{"n":1}', 600, owner_id="u-1")
    _evict(store, sid)
    _previous(store, sid)

    assert store.block(sid, "u-1", 600) is None  # the id exists: deleted the usual way
    assert store.client.get(session_keys(sid)[0]) is None
    fresh = f"{sid}-never-created"
    assert store.block(fresh, "u-1", 600).session.deleted
    assert marker_forms(store.client, fresh) == (b"1|D", None)


def test_during_a_rollout_the_higher_version_of_the_two_forms_is_the_marker(store, sid):
    """A process of the previous release writes the key and knows nothing of
    the field: the field may hold an older version beside it (and the other
    way round once this release wrote again)."""
    store.create(sid, '{"n":1}', 600)
    store.update(sid, '{"n":2}', 1)
    store.client.set(marker_key(sid), "3|D")  # the previous release deleted v2
    _evict(store, sid)

    assert store.marker(sid) == Marker(3, "D")
    with pytest.raises(SessionNotFound) as update:
        store.update(sid, '{"n":4}', 2)
    assert update.value.deleted

    store.client.set(marker_key(sid), "1|L")  # an older key beside the field's 2
    assert store.marker(sid) == Marker(2, "L")
    with pytest.raises(KeyMissing) as missing:
        store.update(sid, '{"n":4}', 2)
    assert missing.value.marker_version == 2


def test_with_a_marker_ttl_the_marker_is_a_key_and_the_field_goes(any_redis, sid):
    plain = SessionStore(any_redis, channel="formats")
    with_ttl = SessionStore(any_redis, marker_ttl=120, channel="formats")
    plain.create(sid, '{"n":1}', 600)
    assert marker_forms(any_redis, sid) == (b"1|L", None)

    with_ttl.update(sid, '{"n":2}', 1)
    assert marker_forms(any_redis, sid) == (None, b"2|L")
    assert 600 <= any_redis.ttl(marker_key(sid)) <= 600 + 5

    plain.update(sid, '{"n":3}', 2)
    assert marker_forms(any_redis, sid) == (b"3|L", None)


def test_a_session_with_no_marker_in_either_form_is_unknown(store, sid):
    store.create(sid, '{"n":1}', 600)
    _evict(store, sid)
    forget_marker(store.client, sid)

    assert store.marker(sid) is None
    with pytest.raises(KeyMissing) as missing:
        store.update(sid, '{"n":2}', 1)
    assert missing.value.marker_version == 0


def test_a_restore_in_the_previous_format_s_place_is_only_over_an_older_marker(store, sid):
    """A repair writes the marker PostgreSQL's version names, as a field,
    and drops a key holding the same version."""
    now = iso_utc(time.time())
    session = Session(sid, 4, '{"n":4}', now, now, 600)
    store.client.set(marker_key(sid), "4|L")

    assert store.restore(session) == session
    assert marker_forms(store.client, sid) == (b"4|L", None)
