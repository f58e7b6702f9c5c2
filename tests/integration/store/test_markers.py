"""The version marker, on a single node and on the cluster: after every write
it holds the last acknowledged version (and whether it was a deletion), it
never expires by default, and nothing is written back behind it.

Recovery and id reuse rest on it (docs/guarantees.md: "Redis forgetting never forks a session"): a marker
behind the session lets recovery serve an older version; a missing one lets
an id be created twice.
"""
from __future__ import annotations

import pytest

from chalicelib.adapters.redis.keys import session_keys
from chalicelib.domain.errors import ConcurrencyError, SessionNotFound
from chalicelib.domain.session import Session
from chalicelib.domain.store import Marker, MarkerAhead
from tests.support.markers import marker_forms


def _marker(store, sid):
    """The marker's field, and the TTL of the hash that holds it; the key
    form stays unwritten (one marker, one place)."""
    field, key = marker_forms(store.client, sid)
    assert key is None
    return field, store.client.ttl(session_keys(sid)[1])


def test_the_marker_holds_the_last_acknowledged_version_after_every_write(store, session_id):
    seen = []
    store.create(session_id, '{"n":1}', 600)
    seen.append(_marker(store, session_id))
    store.update(session_id, '{"n":2}', 1)
    seen.append(_marker(store, session_id))
    store.update(session_id, '{"n":3}', 2)
    seen.append(_marker(store, session_id))
    with pytest.raises(ConcurrencyError):  # a refused write leaves it alone
        store.update(session_id, '{"n":"stale"}', 2)
    seen.append(_marker(store, session_id))
    store.delete(session_id, 3)
    seen.append(_marker(store, session_id))
    with pytest.raises(SessionNotFound):
        store.update(session_id, '{"n":5}', 4)
    seen.append(_marker(store, session_id))

    # -1: no TTL (SESSION_MARKER_TTL=0, the default): volatile-* eviction never takes it
    assert seen == [(b"1|L", -1), (b"2|L", -1), (b"3|L", -1), (b"3|L", -1), (b"4|D", -1), (b"4|D", -1)]
    assert store.marker(session_id) == Marker(4, "D")


def test_a_restore_behind_the_marker_is_refused_and_writes_nothing(store, session_id):
    store.create(session_id, '{"n":1}', 600)
    v1 = store.get(session_id)
    store.update(session_id, '{"n":2}', 1)  # acknowledged; PostgreSQL may still hold v1
    store.client.delete(session_keys(session_id)[0])  # evicted

    with pytest.raises(MarkerAhead) as behind:
        store.restore(v1)

    assert behind.value.marker_version == 2
    assert store.client.get(session_keys(session_id)[0]) is None
    assert store.marker(session_id) == Marker(2, "L")
    # once PostgreSQL caught up, the acknowledged version goes back
    v2 = Session(session_id, 2, '{"n":2}', v1.created_at, v1.updated_at, v1.ttl_seconds)
    assert store.restore(v2) == v2
    assert store.get(session_id).state == {"n": 2}
