"""The store contract: what the service asks of the hot store, and what it
is told back.

``Store`` is the protocol the service is typed against (Redis implements
it: ``chalicelib.adapters.redis.store.SessionStore``).  A write answers a
``WriteResult``; a read of the version marker a ``Marker``.  Redis may
forget (eviction, failover, a restart, a flush) while PostgreSQL
remembers, and the store never decides alone what that means: it raises
one of the signals below, and the service asks PostgreSQL
(``chalicelib.service.sessions``).  A write takes ``persisted_version``,
what PostgreSQL holds (0: nothing, or no PostgreSQL: trust Redis; None:
not asked yet).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from chalicelib.domain.errors import SessionNotFound
from chalicelib.domain.idempotency import Idempotency
from chalicelib.domain.session import Session


@dataclass(frozen=True)
class WriteResult:
    """A committed write: the new session and the change event to ship."""

    session: Session
    event_id: str
    event_json: str
    #: the recorded outcome of an earlier write with the same Idempotency-Key:
    #: nothing was written now, and its event was shipped by that write
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Marker:
    """The version marker: the last version Redis acknowledged for a session,
    and how that version left it.  It outlives the session's key, so a
    recovery never serves an older version and an id is never reused."""

    version: int
    #: "L" live, "D" deleted, "E" its lifetime ended (the expiry sweep's)
    flag: str

    @property
    def deleted(self) -> bool:
        return self.flag == "D"

    @property
    def expired(self) -> bool:
        return self.flag == "E"


# -- the signals: Redis cannot tell alone; the caller asks PostgreSQL ----------

class KeyMissing(SessionNotFound):
    """Redis has no key but its marker says the session existed at
    ``marker_version``: it expired or was evicted, and may be recovered
    from PostgreSQL."""

    def __init__(self, session_id: str, marker_version: int) -> None:
        super().__init__(session_id)
        self.marker_version = marker_version


class IdUnknown(Exception):
    """Redis has no trace of the id (no key, no marker): it may have existed
    and been forgotten; PostgreSQL knows (ids are never reused)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id


class EpochChanged(Exception):
    """The session's value (at ``version``) was written before Redis's data
    last went back in time (a failover, a restart): PostgreSQL may hold a
    newer version."""

    def __init__(self, session_id: str, version: int, session: Session | None = None, *,
                 epoch: str | None = None) -> None:
        super().__init__(session_id, version)
        self.session_id = session_id
        self.version = version
        #: the value read, for ``get`` (a write script refuses without returning it)
        self.session = session
        #: the epoch the value carries: a node proven to continue its
        #: history needs no wait for it (``Store.settle``)
        self.epoch = epoch


class RedisBehind(Exception):
    """Redis holds ``version``, older than what PostgreSQL holds: repair it."""

    def __init__(self, session_id: str, version: int) -> None:
        super().__init__(session_id, version)
        self.session_id = session_id
        self.version = version


class MarkerAhead(Exception):
    """A write-back from PostgreSQL was refused: Redis's marker says it
    acknowledged ``marker_version``, newer than the version offered
    (PostgreSQL lags the queue)."""

    def __init__(self, session_id: str, marker_version: int) -> None:
        super().__init__(session_id, marker_version)
        self.session_id = session_id
        self.marker_version = marker_version


class Store(Protocol):
    """What the service (and its owner routes and expiry sweep) needs from
    the hot store.  Every method may raise ServiceUnavailable; the writes
    raise the domain's errors and the signals above, as their docstrings in
    the Redis store say."""

    #: seconds since the epoch, the clock the store stamps writes with
    clock: Callable[[], float]

    # -- reads
    def get(self, session_id: str, *, verify: bool = False, slide: bool = False) -> Session | None: ...

    def peek(self, session_ids: Sequence[str]) -> list[Session | None]: ...

    def value_sizes(self, session_ids: Sequence[str]) -> list[int]: ...

    def marker(self, session_id: str) -> Marker | None: ...

    def recorded(self, session_id: str, idempotency: Idempotency) -> WriteResult | None: ...

    # -- writes
    def create(self, session_id: str, state_json: str, ttl_seconds: int, *,
               known_absent: bool = True, idempotency: Idempotency | None = None,
               owner_id: str | None = None) -> WriteResult: ...

    def update(self, session_id: str, state_json: str, expected_version: int | None, *,
               persisted_version: int | None = 0, idempotency: Idempotency | None = None,
               ttl_seconds: int | None = None) -> WriteResult: ...

    def delete(self, session_id: str, expected_version: int | None = None, *,
               persisted_version: int | None = 0,
               idempotency: Idempotency | None = None) -> WriteResult: ...

    def touch(self, session_id: str, expected_version: int | None = None, *,
              persisted_version: int | None = 0, ttl_seconds: int | None = None,
              idempotency: Idempotency | None = None) -> WriteResult: ...

    def block(self, session_id: str, owner_id: str, ttl_seconds: int, *,
              known_absent: bool = True) -> WriteResult | None: ...

    def expire(self, session_id: str, persisted: Session, *,
               marker_absent_ok: bool = False) -> tuple[str, WriteResult | None]: ...

    def sweep_position(self) -> str: ...

    def set_sweep_position(self, after: str) -> None: ...

    # -- Redis that forgot: waits, confirmations, repairs
    def settle(self, session_id: str, seconds: float, *, unrecorded_settled: bool = False,
               value_epoch: str | None = None) -> tuple[float, bool]: ...

    def hold(self, session_id: str, seconds: float) -> float: ...

    def vouch(self, session: Session, persisted_version: int) -> bool: ...

    def restore(self, session: Session, *, repair: bool = False) -> Session | None: ...

    # -- the owner index
    def owner_register(self, owner_id: str, session_id: str) -> None: ...

    def owner_ids(self, owner_id: str, *, after: str | None = None, count: int = 100,
                  revoking: bool = False) -> list[str]: ...

    def owner_forget(self, owner_id: str, session_ids: Sequence[str]) -> None: ...

    def owner_revoke_begin(self, owner_id: str, *, only_epoch: bool = False) -> tuple[str, str, str]: ...

    def owner_revoke_position(self, owner_id: str, after: str | None) -> None: ...
