"""Latency against keyspace size: get and update with 10k, 100k, 1M sessions.

An empty redis-server of the bench's own is filled in steps (10k, then up
to 100k, then up to 1M sessions, each with its marker) and get/update are
timed at each step on sessions drawn uniformly from everything loaded, so
that most reads miss the CPU caches as they would in production.  Loading
writes the store's own format (the value ``SessionStore`` writes, with its
key names and TTL) as pipelined SETs over one socket, packed by a format
string made for them (faster than a general packer): redis-py's pipeline
would spend longer on a million commands than Redis spends running them.
"""
from __future__ import annotations

import random
import socket
import threading
import time
import zlib
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, cast

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.codec import iso_utc
from chalicelib.adapters.redis.keys import BUCKETS, bucket_tag, session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from sessionsync.bench.context import STATE_BYTES, BenchContext, state_json
from sessionsync.bench.harness import ack_all
from sessionsync.bench.redis_server import ThrowawayRedis
from sessionsync.bench.stats import interleaved, ratio, summarize_ns

TTL = 86_400
CHUNK = 5_000


def _set_command(key: bytes, value: bytes) -> bytes:
    return b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nEX\r\n$%d\r\n%d\r\n" % (
        len(key), key, len(value), value, len(str(TTL)), TTL)


def _hset_command(key: bytes, field: bytes, value: bytes) -> bytes:
    return b"*4\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(key), key, len(field), field, len(value), value)


def load_sessions(host: str, port: int, prefix: str, start: int, stop: int, value: bytes) -> None:
    """SET session, HSET marker for ids ``<prefix>-<start..stop-1>``.

    One socket; a reader thread drains the +OK replies while the writer
    keeps sending, so Redis never waits for Python to read.
    """
    marker = b"1|L"
    tags = [bucket_tag(b).encode() for b in range(BUCKETS)]
    probe = f"{prefix}-0"
    probe_tag = tags[zlib.crc32(probe.encode()) % BUCKETS].decode()
    if session_keys(probe)[:2] != [f"{probe_tag}:s:{probe}", f"{probe_tag}:m"]:
        raise AssertionError("the key layout changed: update scale.load_sessions")
    expected = 2 * (stop - start)
    errors: list[bytes] = []
    sock = socket.create_connection((host, port))

    def drain() -> None:
        seen = 0
        while seen < expected:
            chunk = sock.recv(1 << 20)
            if not chunk:
                errors.append(b"connection closed")
                return
            seen += chunk.count(b"\n")  # one line per +OK, :1 or -ERR reply
            if b"-" in chunk and (chunk.startswith(b"-") or b"\n-" in chunk):
                errors.append(chunk[:200])

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        crc32 = zlib.crc32
        for first in range(start, stop, CHUNK):
            parts = []
            for i in range(first, min(first + CHUNK, stop)):
                sid = b"%s-%d" % (prefix.encode(), i)
                tag = tags[crc32(sid) % BUCKETS]
                parts.append(_set_command(tag + b":s:" + sid, value))
                parts.append(_hset_command(tag + b":m", sid, marker))
            sock.sendall(b"".join(parts))
        reader.join(timeout=600)
    finally:
        sock.close()
    if errors:
        raise RuntimeError(f"loading sessions failed: {errors[0]!r}")


def wait_rehashed(client: Any, timeout: float = 120.0) -> float:
    """Wait until Redis finished growing its keyspace hash tables.

    Right after a bulk load Redis is still rehashing incrementally, one
    millisecond per cron tick, which adds a spike to 1% of requests: a
    transient of the load, not a property of a keyspace that size.
    Returns the seconds waited.
    """
    started = time.monotonic()
    while "rehashing target" in client.execute_command("DEBUG", "HTSTATS", "0").decode():
        if time.monotonic() - started > timeout:
            raise TimeoutError("Redis still rehashing after the load")
        time.sleep(0.1)
    return round(time.monotonic() - started, 2)


def _ops(store: SessionStore, prefix: str, loaded: int, count: int, state: str,
         rng: random.Random) -> tuple[dict[str, Callable[[], Any]], Callable[[], None]]:
    """get and update on sessions drawn at random from the ``loaded`` ones,
    and the housekeeping that acks the updates' outbox entries."""
    read_ids = iter([f"{prefix}-{rng.randrange(loaded)}" for _ in range(count)])
    write_idx = iter([rng.randrange(loaded) for _ in range(count)])
    versions: dict[int, int] = {}
    acks: list[str] = []

    def get() -> Any:
        return store.get(next(read_ids))

    def update() -> Any:
        i = next(write_idx)
        version = versions.get(i, 1)
        result = store.update(f"{prefix}-{i}", state, version)
        versions[i] = version + 1
        acks.append(result.event_id)
        return result

    def ack_outbox() -> None:
        ack_all(store, acks)
        acks.clear()

    return {"get": get, "update": update}, ack_outbox


def run(ctx: BenchContext) -> dict[str, Any]:
    """One server per keyspace size, all loaded first, then measured
    interleaved: the sizes see the same noise, so their ratio is fair."""
    sizes = sorted(ctx.profile.scale_sizes)
    samples = ctx.profile.scale_samples
    prefix = ctx.session_prefix("scale")
    state = state_json(STATE_BYTES)
    stamp = iso_utc(time.time())
    value = f"1|{stamp}|{stamp}|{TTL}|L|{state}".encode()
    rng = random.Random(5)
    steps: dict[int, dict[str, Any]] = {}
    with ExitStack() as stack:
        ops: dict[str, Callable[[], Any]] = {}
        housekeeping: list[Callable[[], None]] = []
        for size in sizes:
            server = stack.enter_context(ThrowawayRedis("--enable-debug-command", "local",
                                                        cpus=ctx.server_cpus))
            client = connect_redis(Settings(redis_url=server.url))
            stack.callback(client.close)
            started = time.perf_counter()
            load_sessions("127.0.0.1", cast(int, server.port), prefix, 0, size, value)
            load_s = time.perf_counter() - started
            keys = client.dbsize()
            # a key per session, and one marker hash per bucket the ids fell in
            expected = size + len({zlib.crc32(f"{prefix}-{i}".encode()) % BUCKETS
                                   for i in range(size)})
            if keys != expected:
                raise RuntimeError(f"expected {expected} keys after loading, found {keys}")
            steps[size] = {"sessions": size, "keys": keys, "load_seconds": round(load_s, 2),
                           "rehash_wait_seconds": wait_rehashed(client),
                           "used_memory_mb": round(client.info("memory")["used_memory"] / 2**20, 1)}
            store = SessionStore(client, channel=f"{prefix}-updates")
            size_ops, ack = _ops(store, prefix, size, samples + samples // 10 + 1, state, rng)
            ops.update({f"{name}@{size}": op for name, op in size_ops.items()})
            housekeeping.append(ack)
        timed = interleaved(ops, samples, warmup=samples // 10,
                            between_rounds=lambda _: [ack() for ack in housekeeping])
    for size in sizes:
        steps[size]["latency"] = {op: summarize_ns(timed[f"{op}@{size}"]) for op in ("get", "update")}
    first, last = steps[sizes[0]], steps[sizes[-1]]
    flatness = {f"{op}_{q}": ratio(last["latency"][op][f"{q}_us"], first["latency"][op][f"{q}_us"])
                for op in ("get", "update") for q in ("p50", "p99")}
    return {
        "state_bytes": STATE_BYTES,
        "samples_per_op": samples,
        "steps": [steps[size] for size in sizes],
        "flatness": {"from_sessions": sizes[0], "to_sessions": sizes[-1], **flatness},
        "notes": "one redis-server per size, loaded, rehash finished, then all sizes measured "
                 "interleaved; sessions drawn uniformly at random from the loaded ones; "
                 "flatness = latency at the largest size / at the smallest (1.0 = flat).",
    }
