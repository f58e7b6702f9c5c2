"""How a session is written in Redis and read back: the value, the marker,
and the change event a write returns (``session_from_event``, the one
decoder of the write protocol).

The layout of a value is described in chalicelib.adapters.redis.keys.
"""
from __future__ import annotations

import json
import time

from chalicelib.domain.events import DELETED, EVENT_FIELDS, EXPIRED
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


# The event as the scripts write it (scripts/write.lua, event()): its
# members in EVENT_FIELDS' order, the state last; expires_at and owner_id
# may be missing (an event recorded before they existed).  No id, time or
# number in it holds a quote or a comma, so the head splits on ',"'.
_STATE = ',"state":'
_KIND, _SESSION, _VERSION, _CREATED, _OCCURRED = (
    EVENT_FIELDS.index(name) for name in ("event_type", "session_id", "version", "created_at",
                                          "occurred_at"))


def _text(name: str) -> slice:
    """Where a string member's value sits in its ``name":"value"``."""
    return slice(len(name) + 3, -1)


def _number(name: str) -> slice:
    return slice(len(name) + 2, None)


_KIND_VALUE, _SESSION_VALUE, _CREATED_VALUE, _OCCURRED_VALUE, _OWNER_VALUE = (
    _text(name) for name in ("event_type", "session_id", "created_at", "occurred_at", "owner_id"))
_VERSION_VALUE, _TTL_VALUE = _number("version"), _number("ttl_seconds")


def session_from_event(event: str, *, replayed: bool = False) -> Session:
    """The session after the change ``event`` describes: what every write
    returns, from its script's reply or, for a replay, from the event its
    idempotency record holds.

    The head is split at its members rather than decoded as a document,
    which would cost a write more Python than all else it does
    (docs/decisions/redis-adapter-layout.md); a head of another shape is
    decoded.  The state is cut out as the script wrote it: the bytes the
    client sent.
    """
    cut = event.index(_STATE)
    members = event[:cut].split(',"')
    last = members[-1]
    owner = None
    if last.startswith('owner_id"'):
        owner, last = last[_OWNER_VALUE], members[-2]
    version = members[_VERSION]
    if not (version.startswith('version"') and last.startswith('ttl_seconds"')):
        return _decoded(event, cut, replayed)
    kind = members[_KIND][_KIND_VALUE]
    return Session(members[_SESSION][_SESSION_VALUE], int(version[_VERSION_VALUE]),
                   event[cut + 9:-1], members[_CREATED][_CREATED_VALUE],
                   members[_OCCURRED][_OCCURRED_VALUE], int(last[_TTL_VALUE]),
                   kind == DELETED, owner, kind == EXPIRED, replayed)


def _decoded(event: str, cut: int, replayed: bool) -> Session:
    head = json.loads(event[:cut] + "}")
    kind = head["event_type"]
    return Session(head["session_id"], head["version"], event[cut + 9:-1], head["created_at"],
                   head["occurred_at"], head["ttl_seconds"], kind == DELETED,
                   head.get("owner_id"), kind == EXPIRED, replayed)
