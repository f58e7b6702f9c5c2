"""An owner's sessions: list them, delete them all ("log out everywhere").

The owner index lives in the owner's slot, the sessions in their buckets'
slots; no script spans the two.  The index is a superset of the owner's
sessions (see the timeline above ``keys.owner_index_key``): a create
registers its id there first, so everything here checks each id's owner in
the session's own value before counting it, and never drops an entry it
cannot prove dead (a tombstone, or another owner's id).

A revoke-all ends the sessions created before it began, and only those
(docs/decisions/revoke-all-snapshot.md): when it begins, the ids the index
holds become the ids it deals with (``owner_revoke_begin``), so creates that
race it never lengthen its walk.  With PostgreSQL it then walks the rows
PostgreSQL holds as the owner's, live and created before it began
(``sync_sessions.owner_id``): Redis may have forgotten a session together
with its index entry, and would recover it from there.  Both walks keep
their place when the time budget runs out (the set shrinks; the position
of the PostgreSQL walk is kept in Redis), so the next call goes on.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chalicelib.domain.errors import RecoveryPending, ServiceUnavailable, SessionNotFound
from chalicelib.domain.session import Session, iso_plus_seconds
from chalicelib.domain.store import IdUnknown
from chalicelib.service.sessions import PAGE_BYTES, SessionService, response_bytes

# A page of the listing reads at most this many index entries per asked-for
# session (entries of expired sessions, or of creates not run, are skipped),
# so a page's cost is bounded whatever the index holds; it may then come back
# short, with a cursor.
SCAN_FACTOR = 4
# ids a revoke-all reads from its set at a time, and rows of PostgreSQL per
# statement (most of them may be over: one scan step of bounded cost)
REVOKE_BATCH = 100
REVOKE_SCAN_ROWS = 1000
# A revoke-all stops after this long (or earlier: the Lambda's remaining
# time less REVOKE_MARGIN_SECONDS), answering ``remaining``: API Gateway
# gives a request 29 s.
REVOKE_BUDGET_SECONDS = 20.0
REVOKE_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class OwnerPage:
    owner_id: str
    sessions: list[Session]
    #: the last id looked at, when the index may hold more (the API's cursor)
    next_after: str | None


@dataclass(frozen=True)
class RevokeResult:
    owner_id: str
    #: live sessions of the owner this call deleted
    deleted: int
    #: ids tombstoned before their create ran (they can never be created)
    blocked: int
    #: the time budget ran out before every session created before the
    #: call was dealt with: call again (it goes on where this one stopped)
    remaining: bool


def revoke_budget(lambda_context: Any) -> float:
    """The seconds a revoke-all may take in this invocation."""
    remaining = getattr(lambda_context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return REVOKE_BUDGET_SECONDS
    return max(1.0, min(REVOKE_BUDGET_SECONDS, remaining() / 1000 - REVOKE_MARGIN_SECONDS))


def list_sessions(service: SessionService, owner_id: str, *, limit: int,
                  after: str | None = None, max_bytes: int = PAGE_BYTES) -> OwnerPage:
    """The owner's live sessions (not deleted, not expired), in id order,
    at most ``limit``, after the id ``after``; the page stops before its
    response passes ``max_bytes`` (at least one session), as history pages
    do.  Entries proven dead on the way (a tombstone, another owner's id)
    are dropped from the index."""
    store = service.store
    found: list[Session] = []
    size = 0
    budget = limit * SCAN_FACTOR
    cursor = after
    while budget > 0 and len(found) < limit:
        ids = store.owner_ids(owner_id, after=cursor, count=min(budget, limit - len(found)))
        if not ids:
            return OwnerPage(owner_id, found, None)
        budget -= len(ids)
        # Read no more values than the page can still carry (one at least),
        # so that memory stays bounded whatever ``limit``: a stored value's
        # bytes are no more than what its session adds to the response.
        fits = _fitting(store.value_sizes(ids), max_bytes - size, at_least_one=not found)
        dead = []
        for sid, session in zip(ids[:fits], store.peek(ids[:fits]), strict=True):
            if session is not None and (session.deleted or session.owner_id != owner_id):
                dead.append(sid)
            elif session is not None:  # None: a create not run (yet), or expired: kept
                size += response_bytes(session.to_json())
                if found and size > max_bytes:
                    store.owner_forget(owner_id, dead)
                    return OwnerPage(owner_id, found, cursor)  # this one starts the next page
                found.append(session)
            cursor = sid
        store.owner_forget(owner_id, dead)
        if fits < len(ids):
            return OwnerPage(owner_id, found, cursor)  # the page is full
    # stopped on the limit or the scan budget: there may be more
    return OwnerPage(owner_id, found, cursor)


def _fitting(sizes: list[int], room: int, *, at_least_one: bool) -> int:
    """How many of the values (their ``sizes``, in order) fit in ``room`` bytes."""
    total = 0
    for n, value in enumerate(sizes):
        total += value
        if total > room and not (at_least_one and n == 0):
            return n
    return len(sizes)


def revoke_all(service: SessionService, owner_id: str, *, budget_seconds: float,
               clock: Callable[[], float] = time.monotonic) -> RevokeResult:
    """Delete every session of the owner created before this call began:
    each one a normal deletion (``SessionService.delete``: tombstone,
    outbox, SQS, PostgreSQL), and tombstone the ids registered before it
    whose create has not run, so that none of them can be created later.
    A create that starts after it began is left alone.  An id leaves the
    set only once it is dealt with, so a call that stops (a crash, an
    error, the budget) leaves the rest for the next call, which finishes
    the job.

    Stops once ``budget_seconds`` passed, with ``remaining=True``.  Raises
    ServiceUnavailable / RecoveryPending (retry).
    """
    store = service.store
    deadline = clock() + budget_seconds
    began, position, epoch = store.owner_revoke_begin(owner_id)
    deleted = blocked = 0

    def finished() -> RevokeResult:
        # Redis went back in time since the snapshot (a failover to a replica
        # that lacked it, a restart): ids it held may be gone from the set,
        # though still in the index; the next call takes a new snapshot
        moved = store.owner_revoke_begin(owner_id, only_epoch=True)[2] != epoch
        return RevokeResult(owner_id, deleted, blocked, remaining=moved)

    while ids := store.owner_ids(owner_id, count=REVOKE_BATCH, revoking=True):
        for sid in ids:
            outcome = _revoke_one(service, owner_id, sid)
            deleted += outcome == "deleted"
            blocked += outcome == "blocked"
            # one at a time: a crash leaves only dealt-with ids out
            store.owner_forget(owner_id, [sid])
            if clock() >= deadline:
                remaining = (service.durable is not None
                             or bool(store.owner_ids(owner_id, count=1, revoking=True)))
                return RevokeResult(owner_id, deleted, blocked, remaining=remaining)
    # Then the sessions PostgreSQL holds as the owner's, live and created
    # before the call: Redis may have forgotten one with its index entry (a
    # restart without persistence, a failover) and bring it back from
    # PostgreSQL later.  A row whose lifetime ended longer ago than the
    # pipeline's lag (the settle time) is over: no write still on its way can
    # have extended it.
    durable = service.durable
    if durable is None:
        return finished()
    ended_before = iso_plus_seconds(began, -math.ceil(service.settle_seconds))
    while True:
        ids, last = durable.owner_sessions(owner_id, after=position, limit=REVOKE_SCAN_ROWS,
                                           created_before=began, ended_before=ended_before)
        for sid in ids:
            outcome = _revoke_one(service, owner_id, sid)
            deleted += outcome == "deleted"
            blocked += outcome == "blocked"
            if clock() >= deadline:
                store.owner_revoke_position(owner_id, sid)
                return RevokeResult(owner_id, deleted, blocked, remaining=True)
        if last is None:
            store.owner_revoke_position(owner_id, None)
            return finished()
        position = last
        if clock() >= deadline:
            store.owner_revoke_position(owner_id, position)
            return RevokeResult(owner_id, deleted, blocked, remaining=True)


def _revoke_one(service: SessionService, owner_id: str, session_id: str) -> str:
    """'deleted' | 'blocked' | 'gone' (already deleted) | 'other' (not the owner's)."""
    store = service.store
    for _ in range(3):  # a create or a recovery landing meanwhile: look again
        [session] = store.peek([session_id])
        if session is not None:
            if session.owner_id != owner_id:
                return "other"
            if session.deleted:
                return "gone"
            return _delete(service, session_id)
        marker = store.marker(session_id)
        if marker is not None:
            if marker.deleted:
                return "gone"
            # A create may have run since the key was read (it writes key
            # and marker at once):
            #   t0  peek: no key           t1  CREATE_SCRIPT: key + marker
            #   t2  marker: 1|L -> taken for an expired session, skipped
            # so read the key again: absent now, it is gone for good (or
            # to be recovered from PostgreSQL), whatever comes later.
            if store.peek([session_id])[0] is not None:
                continue
            # the key expired or was evicted: PostgreSQL knows the owner
            persisted = _persisted(service, session_id, marker.version)
            if persisted is None or persisted.deleted:
                return "gone"
            if persisted.owner_id != owner_id:
                return "other"
            return _delete(service, session_id)
        # no key, no marker: a create that has not run, or Redis forgot it
        result = _block(service, owner_id, session_id)
        if result is not None:
            return result
    raise ServiceUnavailable(f"session {session_id!r} kept changing while its owner's sessions "
                             "were being deleted; retry", dependency="redis", retry_after_seconds=1)


def _delete(service: SessionService, session_id: str) -> str:
    try:
        service.delete(session_id)
    except SessionNotFound:
        return "gone"  # deleted meanwhile, or gone everywhere
    return "deleted"


def _persisted(service: SessionService, session_id: str, acknowledged: int) -> Session | None:
    if service.durable is None:
        return None  # nothing to recover it from: it is gone
    persisted = service.durable.latest(session_id)
    if persisted is None or persisted.version < acknowledged:
        # its owner is in an event still on its way: come back later
        raise RecoveryPending(session_id, acknowledged_version=acknowledged,
                              persisted_version=persisted.version if persisted else 0)
    return persisted


def _block(service: SessionService, owner_id: str, session_id: str) -> str | None:
    store = service.store
    try:
        result = store.block(session_id, owner_id, service.default_ttl,
                             known_absent=service.durable is None)
    except IdUnknown:
        # Redis has no trace: PostgreSQL says whether the id ever existed
        assert service.durable is not None  # known_absent above: IdUnknown only with one
        persisted = service.durable.latest(session_id)
        if persisted is not None:
            if persisted.deleted:
                return "gone"
            if persisted.owner_id != owner_id:
                return "other"
            return _delete(service, session_id)  # 503 while Redis recovers it
        result = store.block(session_id, owner_id, service.default_ttl)
    if result is None:
        return None  # created meanwhile: look again
    return "blocked"  # the tombstone's event is in the outbox: the relay ships it
