"""Tenants below the HTTP edge, on a single node and on a real 3-master
cluster: a tenant's sessions, owner index and count stay in their slots
(every script still touches one), the same ids in two tenants are two
sessions, a revoke-all stays in its tenant, and creates racing for a
tenant's last places never pass its cap."""
from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from redis.crc import key_slot

from chalicelib.adapters.redis.keys import owner_index_key, session_keys, tenant_sessions_key
from chalicelib.adapters.redis.tenant_counts import TenantCounts
from chalicelib.domain.errors import SessionLimitReached, SessionNotFound
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.service.sessions import SessionService
from chalicelib.service.tenants import TenantSessions


@pytest.fixture
def tenants(store, any_redis):
    service = SessionService(store)
    run = uuid.uuid4().hex[:8]

    def of(name: str, cap: int = 0) -> TenantSessions:
        return TenantSessions(service, f"{name}-{run}", counts=TenantCounts(any_redis), max_sessions=cap)
    return of


def test_the_same_ids_in_two_tenants_are_two_sessions_each_in_one_slot(tenants, any_redis):
    acme, beta = tenants("acme"), tenants("beta")
    sid, owner = f"s-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    acme.create(CreateRequest(sid, '{"t":"a"}', None, owner))
    beta.create(CreateRequest(sid, '{"t":"b"}', None, owner))
    acme.update(UpdateRequest(sid, '{"t":"a2"}', 1))
    assert acme.get_accepting_stale(sid, None).session.state == {"t": "a2"}
    assert beta.get_accepting_stale(sid, None).session.state == {"t": "b"}
    internal = acme.inward(sid)
    assert len({key_slot(k.encode()) for k in session_keys(internal)}) == 1
    assert any_redis.exists(session_keys(internal)[0]) and any_redis.exists(session_keys(beta.inward(sid))[0])

    result = beta.revoke_owner(owner, budget_seconds=10)
    assert (result.owner_id, result.deleted, result.remaining) == (owner, 1, False)
    with pytest.raises(SessionNotFound) as gone:
        beta.get_accepting_stale(sid, None)
    assert gone.value.session_id == sid and "beta" not in gone.value.message
    assert acme.get_accepting_stale(sid, None).session.version == 2
    assert [s.session_id for s in acme.owner_sessions(owner, limit=10, after=None).sessions] == [sid]
    assert any_redis.zcard(owner_index_key(acme.inward(owner))) == 1


def test_creates_racing_for_a_tenant_s_last_places_never_pass_its_cap(tenants, any_redis):
    cap = 4
    acme = tenants("acme", cap)

    def create(i: int) -> str:
        try:
            acme.create(CreateRequest(f"r-{i}-{uuid.uuid4().hex[:6]}", "{}", None))
        except SessionLimitReached as refused:
            assert refused.limit == cap and refused.details["retry_after_seconds"] >= 1
            return "refused"
        return "created"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(create, range(24)))
    assert outcomes.count("created") == cap and outcomes.count("refused") == 24 - cap
    assert any_redis.zcard(tenant_sessions_key(acme.tenant)) == cap
