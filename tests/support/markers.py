"""A session's version marker as Redis holds it, in either of its forms
(chalicelib/adapters/redis/keys.py): the field of its bucket's marker hash,
or a key of its own (SESSION_MARKER_TTL, and the previous release's format).

For the tests that look at a marker, take it away (what a flush or an
``allkeys-*`` eviction does), or turn a dataset into the previous release's
format (what an upgrade finds)."""
from __future__ import annotations

from chalicelib.adapters.redis.keys import LEGACY_MARKER_KEY_PATTERN, marker_key, session_keys
from chalicelib.adapters.redis.store import SessionStore


def raw_marker(client, sid: str) -> bytes | None:
    """The marker in whichever form holds it (a test writes one form only)."""
    return client.hget(session_keys(sid)[1], sid) or client.get(marker_key(sid))


def marker_forms(client, sid: str) -> tuple[bytes | None, bytes | None]:
    """(the hash field, the key): what each form holds."""
    return client.hget(session_keys(sid)[1], sid), client.get(marker_key(sid))


def forget_marker(client, sid: str) -> None:
    """The marker gone, in both forms."""
    client.hdel(session_keys(sid)[1], sid)
    client.delete(marker_key(sid))


def to_previous_format(client, sid: str) -> None:
    """The marker moved from its hash field to a key of its own, no TTL:
    as the previous release wrote it."""
    raw = client.hget(session_keys(sid)[1], sid)
    assert raw is not None, f"{sid} has no marker in the hash"
    client.set(marker_key(sid), raw)
    client.hdel(session_keys(sid)[1], sid)


def legacy_marker_keys(client) -> list[bytes]:
    """Every marker key of the previous format on the node (or on each of
    a cluster's primaries)."""
    nodes = ([client.get_redis_connection(n) for n in client.get_primaries()]
             if hasattr(client, "get_primaries") else [client])
    return sorted(k for node in nodes for k in node.scan_iter(match=LEGACY_MARKER_KEY_PATTERN, count=1000))


class PreviousFormatStore(SessionStore):
    """A store whose every write leaves its marker as the previous release
    did, a key of its own: a dataset written before the upgrade, read and
    written on by this release's scripts."""

    def _write(self, script, session_id, idempotency, *fields):
        reply = super()._write(script, session_id, idempotency, *fields)
        _to_key(self.client, session_id)
        return reply

    def restore(self, session, *, repair=False):
        try:
            return super().restore(session, repair=repair)
        finally:
            _to_key(self.client, session.session_id)


def _to_key(client, sid: str) -> None:
    if client.hget(session_keys(sid)[1], sid) is not None:
        to_previous_format(client, sid)
