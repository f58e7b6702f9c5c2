"""The store reports what Redis forgot instead of deciding alone, on a single
node and on the cluster: an id it has no trace of (IdUnknown), a value of
another epoch (EpochChanged), a value behind PostgreSQL (RedisBehind)."""
from __future__ import annotations

import pytest

from chalicelib.adapters.redis.keys import session_keys
from chalicelib.domain.store import EpochChanged, IdUnknown, RedisBehind


def _stale(store, sid, version, stamp="deadbeef"):
    """Rewrite the session as a previous primary left it: ``version``,
    stamped with another epoch."""
    key = session_keys(sid)[0]
    parts = store.client.get(key).decode().split("|", 5)
    store.client.set(key, "|".join([str(version), *parts[1:4], "L" + stamp, parts[5]]), ex=600)


def _stamp(store, sid):
    return store.client.get(session_keys(sid)[0]).decode().split("|", 5)[4][1:]


def test_a_create_that_may_not_trust_redis_asks_when_redis_knows_nothing(store, session_id):
    with pytest.raises(IdUnknown):
        store.create(session_id, "{}", 60, known_absent=False)
    assert store.client.get(session_keys(session_id)[0]) is None  # nothing written

    assert store.create(session_id, "{}", 60, known_absent=True).session.version == 1


def test_values_carry_the_epoch_of_the_node_that_wrote_them(store, session_id):
    store.create(session_id, "{}", 60)
    stamp = _stamp(store, session_id)

    assert len(stamp) == 8 and int(stamp, 16) >= 0
    assert store.get(session_id, verify=True).version == 1


def test_a_value_of_another_epoch_is_reported_to_a_verifying_read(store, session_id):
    store.create(session_id, '{"a":1}', 60)
    _stale(store, session_id, 1)

    assert store.get(session_id).version == 1  # a read that does not verify trusts it
    with pytest.raises(EpochChanged) as changed:
        store.get(session_id, verify=True)
    assert changed.value.session.state == {"a": 1}


def test_a_write_on_a_value_of_another_epoch_needs_postgresql_s_version(store, session_id):
    store.create(session_id, "{}", 60)
    _stale(store, session_id, 3)

    with pytest.raises(EpochChanged) as changed:
        store.update(session_id, '{"b":1}', 3, persisted_version=None)
    assert changed.value.version == 3
    with pytest.raises(RedisBehind):
        store.update(session_id, '{"b":1}', 3, persisted_version=4)
    with pytest.raises(RedisBehind):
        store.delete(session_id, 3, persisted_version=4)

    assert store.update(session_id, '{"b":1}', 3, persisted_version=3).session.version == 4
    # written in this epoch now
    assert store.get(session_id, verify=True).version == 4


def test_vouching_stamps_the_current_epoch_and_keeps_the_ttl(store, session_id):
    store.create(session_id, '{"a":1}', 600)
    _stale(store, session_id, 2)
    store.client.expire(session_keys(session_id)[0], 500)
    session = store.get(session_id)

    assert store.vouch(session, persisted_version=2) is True

    assert store.get(session_id, verify=True).state == {"a": 1}
    assert 0 < store.client.ttl(session_keys(session_id)[0]) <= 500
    with pytest.raises(RedisBehind):
        _stale(store, session_id, 2)
        store.vouch(store.get(session_id), persisted_version=5)


def test_a_repair_overwrites_an_older_version_but_never_a_newer_one(store, session_id):
    store.create(session_id, '{"a":1}', 60)
    store.update(session_id, '{"a":2}', 1)
    newer = store.get(session_id)
    _stale(store, session_id, 1)

    restored = store.restore(newer, repair=True)

    assert restored.version == 2
    assert store.get(session_id, verify=True).state == {"a": 2}
    older = store.get(session_id)
    store.update(session_id, '{"a":3}', 2)
    assert store.restore(older, repair=True).version == 3  # the newer one stays
    assert store.restore(older).version == 3  # without repair, an existing key always stays
