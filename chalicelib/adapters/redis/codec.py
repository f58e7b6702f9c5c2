"""How a session is written in Redis and read back: the value, the marker
and the change event's fields the store reads without decoding it all.

The layout of a value is described in chalicelib.adapters.redis.keys.
"""
from __future__ import annotations

import time

from chalicelib.domain.session import Session
from chalicelib.domain.store import Marker

# A stored session starts "<version>|<created>|<updated>|<ttl>|<L|D><epoch>|":
# 128 bytes always cover that head, so a sample never reads the state.
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


def event_owner(event_json: bytes) -> str | None:
    # "owner_id":"..." sits just before "state" when the session has one
    head = event_json[:event_json.index(b',"state":')]
    marker = b',"owner_id":"'
    at = head.rfind(marker)
    return head[at + len(marker):-1].decode() if at >= 0 else None


def ttl_from_event(event_json: bytes) -> int:
    # "ttl_seconds":N sits before "state" in the event the script built;
    # find it without decoding the whole (possibly 256 KiB) document.
    head = event_json[:event_json.index(b',"state":')]
    if head.endswith(b'"'):  # the owner_id after it
        head = head[:head.rindex(b',"owner_id":"')]
    return int(head.rsplit(b":", 1)[1])
