"""Redis memory per session against the size of its state.

Sessions are created through ``SessionStore`` on a redis-server of the
bench's own whose marker hashes already hold the markers of the sessions
written before (markers outlive their sessions: production's hashes hold
every id ever written; ``MARKER_DENSITY`` per bucket here, past the listpack
threshold, as from some 130,000 sessions on), their outbox entries acked (as
the producer does once SQS took the event), and then measured: ``MEMORY
USAGE`` of each session key (what the allocator holds for key and value),
what one more marker field costs in those hashes, and the growth of
``used_memory`` per session (everything, including the keyspace's and the
expiry table's entries and slots), after a first batch has paid the one-off
costs.  The floor is a plain string holding only the state JSON under the
same key name.
"""
from __future__ import annotations

from typing import Any, cast

import redis

from chalicelib.adapters.redis.keys import BUCKETS, bucket_marker_key, session_keys
from chalicelib.adapters.redis.store import SessionStore
from sessionsync.bench.context import BenchContext, state_json
from sessionsync.bench.redis_server import ThrowawayRedis
from sessionsync.bench.stats import ratio

SIZES = (1024, 16 * 1024)
#: markers per bucket hash before the measure: a hashtable-encoded hash (past
#: hash-max-listpack-entries' 128) whose slot array (1024 slots) the measured
#: sessions do not make grow
MARKER_DENSITY = 600
CHUNK = 1_000


def _mean_usage(client: redis.Redis, keys: list[str]) -> float:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    values = pipe.execute()
    return sum(values) / len(values)


def _fill_markers(client: redis.Redis, prefix: str, id_length: int, density: int) -> None:
    """``density`` markers in every bucket's hash, ids as long as the
    measured sessions' ("1|L": a session written once, gone since)."""
    pipe = client.pipeline(transaction=False)
    for bucket in range(BUCKETS):
        markers = bucket_marker_key(bucket)
        for i in range(density):
            pipe.hset(markers, f"{prefix}-{bucket:04d}-{i:05d}".ljust(id_length, "x"), "1|L")
        if len(pipe) >= CHUNK:
            pipe.execute()
    pipe.execute()


def _marker_field_bytes(client: redis.Redis, ids: list[str]) -> float:
    """What one more marker costs in the filled hashes: ``len(ids)`` fields
    as long as the sessions' ids, one per session's bucket."""
    before = cast(int, client.info("memory")["used_memory"])
    pipe = client.pipeline(transaction=False)
    for sid in ids:
        pipe.hset(session_keys(sid)[1], sid[:-1] + "#", "1|L")
    pipe.execute()
    return (cast(int, client.info("memory")["used_memory"]) - before) / len(ids)


def _measure(client: redis.Redis, prefix: str, size: int, count: int) -> dict[str, Any]:
    store = SessionStore(client, channel=f"{prefix}-updates")
    state = state_json(size)
    ids = [f"{prefix}-{size}-{i:07d}" for i in range(count)]
    # A first batch pays the one-off costs (script cache, outbox keys, the
    # first hash-table growth); the figure is the growth per session after it.
    warmup = [store.create(f"{prefix}-{size}-w{i:06d}", state, 3600) for i in range(max(10, count // 10))]
    store.outbox_ack([r.event_id for r in warmup])
    before = client.info("memory")["used_memory"]
    results = [store.create(sid, state, 3600) for sid in ids]
    with_outbox = client.info("memory")["used_memory"]
    for i in range(0, count, 500):
        store.outbox_ack([r.event_id for r in results[i:i + 500]])
    after = client.info("memory")["used_memory"]
    session_key = _mean_usage(client, [session_keys(sid)[0] for sid in ids])
    marker_field = _marker_field_bytes(client, ids)
    stored_value = len(cast(bytes, client.get(session_keys(ids[0])[0])))
    # The floor: just the state, under the same key name.
    floor_key = session_keys(ids[0])[0] + "-floor"
    client.set(floor_key, state, ex=3600)
    floor = cast(int, client.memory_usage(floor_key, samples=0))  # the key was just set
    client.delete(floor_key)
    per_session = (after - before) / count
    return {
        "sessions": count,
        "payload_bytes": size,
        "stored_value_bytes": stored_value,
        "session_key_bytes": round(session_key, 1),
        "marker_field_bytes": round(marker_field, 1),
        # the main dict's and the expiry dict's entries and slots, and what
        # MEMORY USAGE leaves out
        "keyspace_bytes": round(per_session - session_key - marker_field, 1),
        "floor_plain_string_bytes": floor,
        "used_memory_per_session_bytes": round(per_session, 1),
        "pending_outbox_entry_bytes": round((with_outbox - after) / count, 1),
        "ratios": {
            "session_key/payload": ratio(session_key, size),
            "session_and_marker/payload": ratio(session_key + marker_field, size),
            "used_memory_per_session/payload": ratio(per_session, size),
            "session_key/floor": ratio(session_key, floor),
        },
    }


def run(ctx: BenchContext) -> dict[str, Any]:
    count = ctx.profile.memory_sessions
    with ThrowawayRedis(cpus=ctx.server_cpus) as server:
        client = server.client()
        try:
            info = client.info("server")
            prefix = ctx.session_prefix("mem")
            # smoke: only proves the section runs (the hashes stay listpacks)
            density = 0 if ctx.profile.name == "smoke" else MARKER_DENSITY
            _fill_markers(client, prefix + "-before", len(f"{prefix}-{SIZES[-1]}-{0:07d}"), density)
            sizes = {str(size): _measure(client, prefix, size, count) for size in SIZES}
            # the encoding of a hash the measured sessions wrote into
            raw = cast("bytes | None", client.object(
                "encoding", session_keys(f"{prefix}-{SIZES[0]}-{0:07d}")[1]))
            encoding = raw.decode() if raw else None
            allocator = client.info("memory").get("mem_allocator")
        finally:
            client.close()
    return {
        "redis_version": info["redis_version"],
        "allocator": allocator,
        "by_state_bytes": sizes,
        "marker_hash_density": density,
        "marker_hash_encoding": encoding,
        "notes": "MEMORY USAGE ... SAMPLES 0 per session key, mean over all sessions; a marker is "
                 "a field of its bucket's hash, holding marker_hash_density markers before; the "
                 "stored value is "
                 "'<version>|<created>|<updated>|<ttl>|<flag>|' + state; jemalloc rounds each "
                 "allocation up to its size class. Outbox entries are counted separately: they "
                 "live only until SQS accepted the event.",
    }
