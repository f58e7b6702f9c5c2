"""A session: the unit the API serves, the store keeps and PostgreSQL records."""
import calendar
import json
import time
from dataclasses import dataclass, field


def iso_to_ms(iso: str) -> int:
    """Milliseconds since the epoch of an ISO UTC timestamp as the API and
    the events write them (``2026-11-28T16:33:30.405Z``).  Integer
    arithmetic, so that ``iso_plus_seconds`` is exact."""
    whole = calendar.timegm((int(iso[0:4]), int(iso[5:7]), int(iso[8:10]),
                             int(iso[11:13]), int(iso[14:16]), int(iso[17:19]), 0, 0, 0))
    return whole * 1000 + int(iso[20:23])


def iso_plus_seconds(iso: str, seconds: int) -> str:
    """``iso`` plus ``seconds``, in the same format: how ``expires_at`` is
    derived (PostgreSQL derives the same from a change event's
    ``occurred_at`` and ``ttl_seconds``)."""
    ms = iso_to_ms(iso) + seconds * 1000
    return "%s.%03dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)), ms % 1000)


@dataclass(frozen=True)
class Session:
    """One session as stored.  ``state_json`` is kept raw so that a read can
    be served without decoding and re-encoding the document."""

    session_id: str
    version: int
    state_json: str
    created_at: str
    updated_at: str
    ttl_seconds: int
    deleted: bool = False
    #: the owner given at creation (``GET /owners/{owner_id}/sessions``), or None
    owner_id: str | None = None
    #: its lifetime ended (a ``session_expired`` event was recorded)
    expired: bool = False
    #: the recorded outcome of an earlier request with the same
    #: Idempotency-Key (chalicelib.domain.idempotency), not a new write
    replayed: bool = field(default=False, compare=False)

    @property
    def expires_at(self) -> str:
        """When the lifetime ends: the last write plus the TTL.  Derived,
        not stored, so every value Redis already holds has one; every
        write (a touch too) slides it.  A read with SESSION_SLIDE_ON_READ
        keeps the Redis key longer but does not move this (it is what
        PostgreSQL knows: docs/decisions/session-lifetime.md)."""
        return iso_plus_seconds(self.updated_at, self.ttl_seconds)

    @property
    def expires_ms(self) -> int:
        """``expires_at`` in milliseconds since the epoch."""
        return iso_to_ms(self.updated_at) + self.ttl_seconds * 1000

    def expired_at(self, now: float) -> bool:
        """Whether the lifetime had ended at ``now`` (seconds since the epoch)."""
        return self.expires_ms <= now * 1000

    @property
    def state(self) -> dict:
        return json.loads(self.state_json)

    def to_json(self) -> str:
        """The API representation, built around the raw state JSON."""
        # owner ids match SESSION_ID_PATTERN: nothing to escape
        owner = ',"owner_id":"%s"' % self.owner_id if self.owner_id else ""
        return ('{"session_id":"%s"%s,"version":%d,"created_at":"%s","updated_at":"%s",'
                '"ttl_seconds":%d,"expires_at":"%s","state":%s}' % (
                    self.session_id, owner, self.version, self.created_at, self.updated_at,
                    self.ttl_seconds, self.expires_at, self.state_json))
