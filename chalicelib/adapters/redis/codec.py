"""How a session is written in Redis and read back: the value, the marker,
and the change event a write returns (``session_from_event``, the one
decoder of the write protocol).

The layout of a value is described in chalicelib.adapters.redis.keys.
"""
from __future__ import annotations

import json
import re
import time

from chalicelib.domain.events import DELETED, EXPIRED
from chalicelib.domain.session import Session
from chalicelib.domain.store import Marker

# A stored session starts "<version>|<created>|<updated>|<ttl>|<L|D><epoch>|":
# 128 bytes always cover that head, so an operator's sample never reads the
# state (sessionsync/redis_views.py).
HEAD_BYTES = 128


# (epoch second, its "YYYY-MM-DDTHH:MM:SS"): iso_utc formats each second once
_second: tuple[int | None, str] = (None, "")


def iso_utc(epoch_seconds: float) -> str:
    """``2026-11-28T16:33:30.405Z``, exactly what
    ``datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"``
    gives (half-even to the microsecond, then milliseconds truncated), with
    the date and time formatted once per second instead of on every write
    (the gain is in docs/performance.md).
    """
    global _second
    whole = int(epoch_seconds // 1)
    micro = round((epoch_seconds - whole) * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return "%s.%03dZ" % (cached[1], micro // 1000)


def decode_session(session_id: str, raw: bytes | str) -> Session:
    """The stored value as a Session (its flag field is L or D, then the
    epoch, which only the scripts compare)."""
    if isinstance(raw, bytes):
        raw = raw.decode()
    version, created, updated, ttl, flag, state = raw.split("|", 5)
    # flag: "L" or "D", the epoch, then "@<owner>" for an owned session
    owner = flag.split("@", 1)[1] if "@" in flag else None
    return Session(session_id, int(version), state, created, updated, int(ttl), flag[0] == "D",
                   owner)


def value_epoch(raw: bytes | str) -> str:
    """The epoch a stored value carries (scripts/lib.lua): what the settle
    script is asked about after a failover."""
    if isinstance(raw, bytes):
        raw = raw.decode()
    return raw.split("|", 5)[4][1:].split("@", 1)[0]


def decode_marker(raw: bytes) -> Marker:
    """A marker "<version>|<L|D|E>"."""
    version, flag = raw.decode().split("|")
    return Marker(int(version), flag)


def encode_head(session: Session) -> str:
    """The stored value up to its flag; the script appends the epoch and
    ``|`` + state (see the module docstring)."""
    return "%d|%s|%s|%d|%s" % (session.version, session.created_at, session.updated_at,
                               session.ttl_seconds, "D" if session.deleted else "L")


def owner_suffix(owner_id: str | None) -> str:
    """What follows the epoch in the value of a session with this owner."""
    return "@" + owner_id if owner_id else ""


# The event as the scripts write it (scripts/write.lua, event(); the order of
# EVENT_FIELDS), the state last; expires_at only in a session_expired (and
# in a write's event of the previous release), owner_id only with an
# owner.  No id, time or number in it holds a quote.
_HEAD = re.compile(r'\{"schema_version":\d+,"event_id":"[^"]*","event_type":"([^"]*)",'
                   r'"session_id":"([^"]*)","version":(\d+),"created_at":"([^"]*)",'
                   r'"occurred_at":"([^"]*)",(?:"expires_at":"[^"]*",)?"ttl_seconds":(\d+)'
                   r'(?:,"owner_id":"([^"]*)")?,"state":')
_STATE = ',"state":'


def session_from_event(event: str, *, replayed: bool = False) -> Session:
    """The session after the change ``event`` describes: what every write
    returns, from its script's reply or, for a replay, from the event its
    idempotency record holds.

    The head is matched, not decoded as a document, which would cost a
    write more Python than all else it does
    (docs/decisions/redis-adapter-layout.md); a head of another shape is
    decoded.  The state is cut out as the script wrote it: the bytes the
    client sent.
    """
    head = _HEAD.match(event)
    if head is None:
        return _decoded(event, replayed)
    kind, session_id, version, created, occurred, ttl, owner = head.groups()
    return Session(session_id, int(version), event[head.end():-1], created, occurred, int(ttl),
                   kind == DELETED, owner, kind == EXPIRED, replayed)


def _decoded(event: str, replayed: bool) -> Session:
    cut = event.index(_STATE)
    head = json.loads(event[:cut] + "}")
    kind = head["event_type"]
    return Session(head["session_id"], head["version"], event[cut + len(_STATE):-1],
                   head["created_at"], head["occurred_at"], head["ttl_seconds"], kind == DELETED,
                   head.get("owner_id"), kind == EXPIRED, replayed)
