"""Redis as an operator sees it: what ``sessionsync`` reads there and the
Lambda functions never do (``diagnose``, ``inspect``, ``key``, ``watch``,
``soak`` and the bench).

Reads only, through a ``SessionStore``'s own client and channel; every
function raises ServiceUnavailable when Redis cannot answer.  The key
layout is in chalicelib/adapters/redis/keys.py, the value format in
codec.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis
from redis.cluster import RedisCluster

from chalicelib.adapters.redis import scripts
from chalicelib.adapters.redis.client import RedisClient
from chalicelib.adapters.redis.codec import HEAD_BYTES, decode_marker, decode_session
from chalicelib.adapters.redis.errors import redis_errors
from chalicelib.adapters.redis.keys import (
    BUCKETS,
    SESSION_KEY_PATTERN,
    epoch_key,
    hold_key,
    marker_key,
    outbox_keys,
    session_keys,
)
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.adapters.redis.subscription import Subscription
from chalicelib.domain.session import Session
from chalicelib.domain.store import Marker

#: the node's epoch read alone, the step every write script and verified read
#: carries (``sessionsync bench`` times it), with the write prelude it needs
#: (its locals from ARGV and ``epoch``: scripts.shake)
EPOCH_SCRIPT = scripts.shake(scripts.WRITE_PRELUDE, "\nreturn epoch()\n")


def key_names(session_id: str) -> dict[str, str]:
    """Every Redis key that concerns a session, by role (``sessionsync key
    --all``): its own session, marker and hold keys, and its bucket's outbox
    index and data and epoch record (shared with the bucket's other sessions)."""
    session, marker, outbox_index, outbox_data = session_keys(session_id)
    return {"session": session, "marker": marker, "outbox_index": outbox_index,
            "outbox_data": outbox_data, "epoch": epoch_key(session_id), "hold": hold_key(session_id)}


def primaries(client: RedisClient) -> list[tuple[str, redis.Redis]]:
    """(name, plain client) of each primary: the one node, or every primary
    of a cluster (where a command that must see every key, SCAN or DBSIZE,
    is sent to each)."""
    if isinstance(client, RedisCluster):
        return [(node.name, client.get_redis_connection(node)) for node in client.get_primaries()]
    kwargs = client.connection_pool.connection_kwargs
    name = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
    return [(str(name), client)]


# -- the outbox as a whole ------------------------------------------------------

def outbox_depth(store: SessionStore) -> int:
    """Outbox entries not yet acknowledged by SQS, in every bucket."""
    with redis_errors():
        pipe = store.client.pipeline(transaction=False)
        for bucket in range(BUCKETS):
            pipe.zcard(outbox_keys(bucket)[0])
        return sum(pipe.execute())


# -- a sample of the sessions (diagnose) -----------------------------------------

@dataclass(frozen=True)
class SessionSample:
    """A session as a diagnosis sees it: its head and its TTL, not its state."""

    session_id: str
    version: int
    deleted: bool
    ttl_setting: int
    ttl_left: int  # -1: no expiry, -2: gone


def sample(store: SessionStore, limit: int = 200, max_scan_calls: int = 50) -> list[SessionSample]:
    """Up to ``limit`` sessions (spread over the primaries) with version and TTL.

    SCAN is bounded by ``max_scan_calls`` per node, so a huge keyspace
    costs at most that many round trips; the state is never read
    (GETRANGE of the head only).
    """
    samples: list[SessionSample] = []
    with redis_errors():
        nodes = primaries(store.client)
        per_node = max(1, limit // len(nodes))
        for _, node in nodes:
            keys = _scan_session_keys(node, per_node, max_scan_calls)
            if not keys:
                continue
            pipe = node.pipeline(transaction=False)
            for key in keys:
                pipe.ttl(key)
                pipe.getrange(key, 0, HEAD_BYTES - 1)
            replies = pipe.execute()
            for i, key in enumerate(keys):
                ttl_left, head = replies[2 * i], replies[2 * i + 1]
                parts = head.split(b"|", 5) if head else []
                if len(parts) < 5:
                    continue  # vanished between SCAN and the read, or not a session value
                session_id = key.decode().split(":s:", 1)[1]
                # the flag is followed by the epoch ("D1a2b3c4d"; bare in older values)
                samples.append(SessionSample(session_id, int(parts[0]), parts[4][:1] == b"D",
                                             int(parts[3]), int(ttl_left)))
    return samples


def _scan_session_keys(node: redis.Redis, limit: int, max_calls: int) -> list[bytes]:
    keys: list[bytes] = []
    cursor = 0
    for _ in range(max_calls):
        cursor, batch = node.scan(cursor=cursor, match=SESSION_KEY_PATTERN, count=1000)
        keys.extend(cast("list[bytes]", batch))  # the client does not decode responses
        if cursor == 0 or len(keys) >= limit:
            break
    return keys[:limit]


# -- one session as stored (inspect) --------------------------------------------

@dataclass(frozen=True)
class StoredSession:
    """What Redis holds for one session (``stored``)."""

    #: the decoded value, a tombstone too; None when there is no key
    session: Session | None
    #: seconds the key has left, -1 for none (None: no key)
    ttl_left: int | None
    #: length of the stored value, and what Redis counts for the key (MEMORY USAGE)
    value_bytes: int
    memory_bytes: int | None
    #: False: written before Redis's data last went back in time, so a read
    #: asks PostgreSQL to confirm it (None: no key)
    epoch_current: bool | None
    #: the marker, and its TTL left
    marker: Marker | None
    marker_ttl_left: int | None
    #: (event id, version, enqueued at in epoch ms) of the outbox entries not
    #: yet acknowledged by SQS, by version
    outbox: tuple[tuple[str, int, int], ...]


def stored(store: SessionStore, session_id: str) -> StoredSession:
    """Everything Redis holds for one session, read without changing
    anything: the value (a tombstone too) with its TTL, size and epoch, the
    marker, and the session's outbox entries still waiting."""
    session_key, marker_hash, index_key, _ = session_keys(session_id)
    client = store.client
    with redis_errors():
        # the verified read's script: the value and whether it carries the
        # node's epoch, in one step (EVAL: an operator's one call)
        reply = client.eval(scripts.GET_SCRIPT, 1, session_key)
        pipe = client.pipeline(transaction=False)
        pipe.ttl(session_key)
        pipe.memory_usage(session_key)
        # the marker's two forms (keys.py): the hash field, and the key
        # (with SESSION_MARKER_TTL, or the previous release's); the higher
        # version is the marker, as the scripts read it
        pipe.hget(marker_hash, session_id)
        pipe.get(marker_key(session_id))
        pipe.ttl(marker_key(session_id))
        ttl, memory, field_raw, key_raw, key_ttl = pipe.execute()
        # the bucket's outbox is shared: only this session's entries
        # ("<id>:<version>"; ids have no glob characters)
        found = [(member.decode(), int(score)) for member, score
                 in client.zscan_iter(index_key, match=f"{session_id}:*", count=1000)]
    outbox = sorted((eid, int(eid.rsplit(":", 1)[1]), ms) for eid, ms in found
                    if eid.rsplit(":", 1)[0] == session_id)
    field = None if field_raw is None else decode_marker(field_raw)
    key = None if key_raw is None else decode_marker(key_raw)
    marker, marker_ttl = (key, key_ttl) if key and (not field or key.version > field.version) \
        else (field, -1)
    return StoredSession(
        session=decode_session(session_id, reply[0]) if reply else None,
        ttl_left=int(ttl) if reply else None, value_bytes=len(reply[0]) if reply else 0,
        memory_bytes=int(memory) if reply and memory is not None else None,
        epoch_current=bool(reply[1]) if reply else None, marker=marker,
        marker_ttl_left=int(marker_ttl) if marker is not None else None,
        outbox=tuple(sorted(outbox, key=lambda entry: entry[1])))


# -- the change events on Pub/Sub (watch) ------------------------------------------

def subscribe(store: SessionStore, *, timeout: float = 1.0) -> Subscription:
    """Subscribe to the change events on the store's channel, now
    (chalicelib.adapters.redis.subscription)."""
    return Subscription(store.client, store.channel, timeout=timeout)
