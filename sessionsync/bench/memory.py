"""Redis memory per session against the size of its state.

Sessions are created through ``SessionStore`` on an empty redis-server of
the bench's own, their outbox entries acked (as the producer does once SQS
took the event), and then measured two ways: ``MEMORY USAGE`` of each
session key and marker key (what the allocator holds for key, value and
expiry), and the growth of ``used_memory`` per session (everything,
including the keyspace's hash-table slots), after a first batch has paid the
one-off costs.  The floor is a plain string
holding only the state JSON under the same key name.
"""
from __future__ import annotations

from typing import Any, cast

import redis

from chalicelib.adapters.redis.keys import session_keys
from chalicelib.adapters.redis.store import SessionStore
from sessionsync.bench.context import BenchContext, state_json
from sessionsync.bench.redis_server import ThrowawayRedis
from sessionsync.bench.stats import ratio

SIZES = (1024, 16 * 1024)


def _mean_usage(client: redis.Redis, keys: list[str]) -> float:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    values = pipe.execute()
    return sum(values) / len(values)


def _measure(client: redis.Redis, prefix: str, size: int, count: int) -> dict[str, Any]:
    store = SessionStore(client, channel=f"{prefix}-updates")
    state = state_json(size)
    ids = [f"{prefix}-{size}-{i:07d}" for i in range(count)]
    client.flushall()
    # A first batch pays the one-off costs (script cache, outbox keys, the
    # first hash-table growth); the figure is the growth per session after it.
    warmup = [store.create(f"{prefix}-{size}-w{i}", state, 3600) for i in range(max(10, count // 10))]
    store.outbox_ack([r.event_id for r in warmup])
    before = client.info("memory")["used_memory"]
    results = [store.create(sid, state, 3600) for sid in ids]
    with_outbox = client.info("memory")["used_memory"]
    for i in range(0, count, 500):
        store.outbox_ack([r.event_id for r in results[i:i + 500]])
    after = client.info("memory")["used_memory"]
    session_key = _mean_usage(client, [session_keys(sid)[0] for sid in ids])
    marker_key = _mean_usage(client, [session_keys(sid)[1] for sid in ids])
    stored_value = len(cast(bytes, client.get(session_keys(ids[0])[0])))
    # The floor: just the state, under the same key name.
    floor_key = session_keys(ids[0])[0] + "-floor"
    client.set(floor_key, state, ex=3600)
    floor = cast(int, client.memory_usage(floor_key, samples=0))  # the key was just set
    per_session = (after - before) / count
    return {
        "sessions": count,
        "payload_bytes": size,
        "stored_value_bytes": stored_value,
        "session_key_bytes": round(session_key, 1),
        "marker_key_bytes": round(marker_key, 1),
        "floor_plain_string_bytes": floor,
        "used_memory_per_session_bytes": round(per_session, 1),
        "pending_outbox_entry_bytes": round((with_outbox - after) / count, 1),
        "ratios": {
            "session_key/payload": ratio(session_key, size),
            "session_and_marker/payload": ratio(session_key + marker_key, size),
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
            sizes = {str(size): _measure(client, ctx.session_prefix("mem"), size, count)
                     for size in SIZES}
            allocator = client.info("memory").get("mem_allocator")
        finally:
            client.close()
    return {
        "redis_version": info["redis_version"],
        "allocator": allocator,
        "by_state_bytes": sizes,
        "notes": "MEMORY USAGE ... SAMPLES 0 per key, mean over all sessions; the stored value is "
                 "'<version>|<created>|<updated>|<ttl>|<flag>|' + state; jemalloc rounds each "
                 "allocation up to its size class. Outbox entries are counted separately: they "
                 "live only until SQS accepted the event.",
    }
