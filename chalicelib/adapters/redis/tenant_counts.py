"""Each tenant's live sessions, for TENANT_MAX_SESSIONS: a sorted set per
tenant (``keys.tenant_sessions_key``) of internal ids scored by when their
lifetime ends, so that the count drops by itself as lifetimes end.

A create reserves its place first (``reserve``: scripts/tenant_count.lua,
atomic, so creates racing for the last place cannot both get it) and gives
it back when it certainly wrote nothing (``release``); a write that slides
a lifetime moves its end (``slide``); a deletion through the API forgets it
(``release``).  A session deleted otherwise (a revoke-all, the expiry
sweep) keeps its place until its lifetime would have ended: the count may
be above the truth for at most a lifetime, never below it, so the cap is
never passed.
"""
from __future__ import annotations

from dataclasses import dataclass

from chalicelib.adapters.redis import scripts
from chalicelib.adapters.redis.client import RedisClient
from chalicelib.adapters.redis.errors import redis_errors
from chalicelib.adapters.redis.keys import tenant_sessions_key
from chalicelib.constants import MAX_TTL_SECONDS

TENANT_COUNT_SCRIPT = scripts.load("tenant_count")
#: the set outlives its last reservation by the longest lifetime (then every
#: entry has ended anyway)
_SET_TTL_MS = MAX_TTL_SECONDS * 1000


@dataclass(frozen=True)
class Reservation:
    reserved: bool
    #: the tenant's live sessions, this one included (when reserved)
    live: int
    #: this call added the id (give it back if the create wrote nothing)
    added: bool
    #: when refused: ms until the first lifetime ends
    wait_ms: int


class TenantCounts:
    """The live sessions of each tenant, in Redis."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self._reserve = client.register_script(TENANT_COUNT_SCRIPT)

    def reserve(self, tenant: str, session_id: str, ends_ms: int, cap: int) -> Reservation:
        """A place for ``session_id`` among the tenant's live sessions,
        unless it has ``cap`` of them already."""
        with redis_errors():
            reserved, value, added = self._reserve(keys=[tenant_sessions_key(tenant)],
                                                   args=[session_id, ends_ms, cap, _SET_TTL_MS])
        if not reserved:
            return Reservation(False, 0, False, int(value))
        return Reservation(True, int(value), bool(added), 0)

    def slide(self, tenant: str, session_id: str, ends_ms: int) -> None:
        """A write moved the session's lifetime end (only if it is counted)."""
        with redis_errors():
            self.client.zadd(tenant_sessions_key(tenant), {session_id: ends_ms}, xx=True)

    def release(self, tenant: str, session_id: str) -> None:
        with redis_errors():
            self.client.zrem(tenant_sessions_key(tenant), session_id)

    def live(self, tenant: str, now_ms: int) -> int:
        """The tenant's live sessions at ``now_ms`` (for operators)."""
        with redis_errors():
            return int(self.client.zcount(tenant_sessions_key(tenant), f"({now_ms}", "+inf"))
