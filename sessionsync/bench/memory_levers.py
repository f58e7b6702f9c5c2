"""Levers on Redis memory per 1 KB session, each measured in a scratch server.

The memory section measures the production format.  This one writes the
same sessions (36-character ids, 1 KB state, the value's head as the
store writes it) in variants of that format, each on an emptied scratch
redis-server of the bench's own, and reports ``used_memory`` growth per
session (after a first fifth paid the one-off costs: hash tables, bucket
keys, encodings) as a ratio to the state's bytes and to the current format.
These are figures to decide on; the memory section measures the format in use.

Variants (session key ``s``, marker ``m``):

* ``current``        the previous release's format: ``ss:{NNNN}:s:<id>`` value with EX +
  ``ss:{NNNN}:m:<id>`` "1|L" (this release's is ``marker_in_bucket_hash``)
* ``no_marker``      the session key alone: the bound of every marker lever
* ``marker_in_bucket_hash``  markers as fields of one hash per bucket
  (``HSET ss:{NNNN}:mk <id> 1|L``), at the density production reaches at
  1M sessions (about 1000 per bucket: a hashtable-encoded hash); a key with
  no TTL, so volatile-* eviction never takes it
* ``marker_in_bucket_listpack``  the same with ``hash-max-listpack-entries``
  raised above the density (listpack encoding: less memory, O(n) access;
  its HGET p50 is reported beside the hashtable's)
* ``marker_in_sub_hashes``  markers in ``SUB_HASHES`` hashes per bucket
  (``ss:{NNNN}:mk:<h>``), each under the default listpack threshold at that
  density: listpack's memory without the setting, for a while (the hashes
  turn into hashtables as the markers pile up past 128 each)
* ``short_prefix``   ``{NNNN}s<id>`` / ``{NNNN}m<id>``
* ``compact_head``   the head's timestamps as epoch milliseconds instead of ISO
* ``combined``       bucket-hash markers + short prefix + compact head
* ``combined_listpack``  the same with the listpack setting
* ``floor``          the state alone under the session's key name, with EX
"""
from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable
from typing import Any, cast

import redis

from chalicelib.adapters.redis.keys import BUCKETS, session_keys
from chalicelib.adapters.redis.store import SessionStore
from sessionsync.bench.context import STATE_BYTES, BenchContext, state_json
from sessionsync.bench.harness import command_stats, server_usec
from sessionsync.bench.redis_server import ThrowawayRedis
from sessionsync.bench.stats import ratio, summarize_ns, time_calls

TTL = 3600
MARKER = b"1|L"
# markers per bucket hash at 1M sessions over BUCKETS buckets
PRODUCTION_DENSITY = 1_000_000 // BUCKETS
# hashes per bucket of the sub-hash variant: about 61 markers each at that density
SUB_HASHES = 16
SESSIONS = {"full": 50_000, "quick": 10_000, "smoke": 1_000}
CHUNK = 1_000
TARGET = 1.5
# variants that are bounds, not levers (they drop the marker)
BOUNDS = ("no_marker", "floor")

Writer = Callable[[Any, str, int], None]


def ids(count: int, seed: int) -> list[str]:
    """``count`` UUID-shaped session ids (36 characters), reproducible."""
    return [str(uuid.UUID(int=(seed << 64) + i * 0x9E3779B97F4A7C15 % (1 << 64)))
            for i in range(count)]


def compact_value(value: bytes) -> bytes:
    """The stored value with its two ISO timestamps as epoch milliseconds."""
    version, created, updated, rest = value.split(b"|", 3)
    return b"|".join((version, _ms(created), _ms(updated), rest))


def _ms(iso: bytes) -> bytes:
    from datetime import datetime
    stamp = datetime.strptime(iso.decode().rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f")
    return str(int((stamp - datetime(1970, 1, 1)).total_seconds() * 1000)).encode()


def verdicts(per_session: dict[str, float], payload: int, target: float = TARGET
             ) -> dict[str, dict[str, Any]]:
    """Each variant's ratio to the payload and to ``current``, and whether it
    meets ``target`` (bytes per session / payload)."""
    current = per_session["current"]
    return {name: {"bytes_per_session": round(value, 1),
                   "ratio_to_payload": ratio(value, payload),
                   "ratio_to_current": ratio(value, current),
                   "saved_bytes_per_session": round(current - value, 1),
                   "meets_target": value / payload <= target}
            for name, value in per_session.items()}


def _variants(value: bytes, state: bytes, density_buckets: int
              ) -> dict[str, tuple[Writer, dict[str, str]]]:
    compact = compact_value(value)

    def bucket(sid: str, buckets: int = BUCKETS) -> int:
        return zlib.crc32(sid.encode()) % buckets

    def current(pipe: Any, sid: str, b: int) -> None:
        tag = b"ss:{%04d}" % b
        pipe.set(tag + b":s:" + sid.encode(), value, ex=TTL)
        pipe.set(tag + b":m:" + sid.encode(), MARKER)

    def no_marker(pipe: Any, sid: str, b: int) -> None:
        pipe.set(b"ss:{%04d}:s:" % b + sid.encode(), value, ex=TTL)

    def bucket_hash(pipe: Any, sid: str, b: int) -> None:
        pipe.set(b"ss:{%04d}:s:" % b + sid.encode(), value, ex=TTL)
        pipe.hset(b"ss:{%04d}:mk" % bucket(sid, density_buckets), sid, MARKER)

    def sub_hash(pipe: Any, sid: str, b: int) -> None:
        # SUB_HASHES hashes per bucket: each under hash-max-listpack-entries'
        # default 128 at the production density, so listpacks with no setting
        h = zlib.crc32(sid.encode()[::-1]) % SUB_HASHES
        pipe.set(b"ss:{%04d}:s:" % b + sid.encode(), value, ex=TTL)
        pipe.hset(b"ss:{%04d}:mk:%x" % (bucket(sid, density_buckets), h), sid, MARKER)

    def short_prefix(pipe: Any, sid: str, b: int) -> None:
        tag = b"{%04d}" % b
        pipe.set(tag + b"s" + sid.encode(), value, ex=TTL)
        pipe.set(tag + b"m" + sid.encode(), MARKER)

    def compact_head(pipe: Any, sid: str, b: int) -> None:
        tag = b"ss:{%04d}" % b
        pipe.set(tag + b":s:" + sid.encode(), compact, ex=TTL)
        pipe.set(tag + b":m:" + sid.encode(), MARKER)

    def combined(pipe: Any, sid: str, b: int) -> None:
        pipe.set(b"{%04d}s" % b + sid.encode(), compact, ex=TTL)
        pipe.hset(b"{%04d}mk" % bucket(sid, density_buckets), sid, MARKER)

    def floor(pipe: Any, sid: str, b: int) -> None:
        pipe.set(b"ss:{%04d}:s:" % b + sid.encode(), state, ex=TTL)

    no_config: dict[str, str] = {}
    listpack = {"hash-max-listpack-entries": str(4 * PRODUCTION_DENSITY)}
    return {"current": (current, no_config), "no_marker": (no_marker, no_config),
            "marker_in_bucket_hash": (bucket_hash, no_config),
            "marker_in_bucket_listpack": (bucket_hash, listpack),
            "marker_in_sub_hashes": (sub_hash, no_config),
            "short_prefix": (short_prefix, no_config), "compact_head": (compact_head, no_config),
            "combined": (combined, no_config), "combined_listpack": (combined, listpack),
            "floor": (floor, no_config)}


def _measure(client: redis.Redis, writer: Writer, config: dict[str, str], warm: list[str],
             timed: list[str]) -> dict[str, Any]:
    client.flushall()
    for name, setting in config.items():
        client.config_set(name, setting)

    def write(batch: list[str]) -> None:
        for i in range(0, len(batch), CHUNK):
            pipe = client.pipeline(transaction=False)
            for sid in batch[i:i + CHUNK]:
                writer(pipe, sid, zlib.crc32(sid.encode()) % BUCKETS)
            pipe.execute()

    write(warm)
    before = cast(int, client.info("memory")["used_memory"])
    write(timed)
    after = cast(int, client.info("memory")["used_memory"])
    return {"per_session": (after - before) / len(timed), "keys": client.dbsize()}


def _hget_cost(client: redis.Redis, key: bytes, fields: list[bytes], n: int
               ) -> dict[str, float]:
    """p50 of an HGET of a marker (client side), and the server's own
    microseconds per HGET and per HSET of a marker (INFO commandstats): the
    encoding's cost on the read of a marker and on every write's."""
    position = [0]

    def hget() -> Any:
        i = position[0] = (position[0] + 1) % len(fields)
        return client.hget(key, fields[i])

    def hset() -> Any:
        # what every write does to its marker: set it again (same size)
        i = position[0] = (position[0] + 1) % len(fields)
        return client.hset(key, fields[i], MARKER)

    calls0, usec0 = command_stats(client, "hget")
    p50 = summarize_ns(time_calls(hget, n))["p50_us"]
    calls1, usec1 = command_stats(client, "hget")
    return {"hget_p50_us": p50,
            "hget_server_usec": round((usec1 - usec0) / max(1, calls1 - calls0), 2),
            **server_usec(client, {"hset_server_usec": ("hset", hset)}, n)}


def run(ctx: BenchContext) -> dict[str, Any]:
    count = SESSIONS.get(ctx.profile.name, SESSIONS["quick"])
    state = state_json(STATE_BYTES).encode()
    warm, timed = ids(count // 5, 1), ids(count, 2)
    # the buckets of the hash variants: the density production has at 1M
    # sessions, reached with this run's count
    density_buckets = max(1, round((len(warm) + count) / PRODUCTION_DENSITY))
    results: dict[str, dict[str, Any]] = {}
    with ThrowawayRedis(cpus=ctx.server_cpus) as server:
        client = server.client()
        try:
            # the value exactly as the store writes it
            store = SessionStore(client, channel="memory-levers")
            store.create("probe", state.decode(), TTL)
            value = cast(bytes, client.get(session_keys("probe")[0]))
            defaults = {str(k): str(v) for k, v in client.config_get("hash-max-listpack-*").items()}
            for name, (writer, config) in _variants(value, state, density_buckets).items():
                results[name] = _measure(client, writer, config, warm, timed)
                results[name]["config"] = config
                if "bucket" in name or name.startswith("combined") or name == "marker_in_sub_hashes":
                    key = (b"{%04d}mk" if name.startswith("combined") else b"ss:{%04d}:mk:0"
                           if name == "marker_in_sub_hashes" else b"ss:{%04d}:mk") % 0
                    results[name]["encoding"] = cast(bytes, client.object("encoding", key)).decode()
                    results[name]["fields_per_hash"] = int(client.hlen(key))
                    fields = cast(list[bytes], client.hkeys(key))
                    results[name].update(_hget_cost(client, key, fields, 2000))
                for setting, old in defaults.items():
                    client.config_set(setting, old)
            info = client.info("server")
            allocator = client.info("memory").get("mem_allocator")
        finally:
            client.close()
    judged = verdicts({name: r["per_session"] for name, r in results.items()}, STATE_BYTES)
    for name, r in results.items():
        judged[name].update({k: v for k, v in r.items() if k != "per_session"})
    # a lever keeps what the markers guarantee: neither bound counts
    best = min((n for n in judged if n not in BOUNDS), key=lambda n: judged[n]["bytes_per_session"])
    return {
        "redis_version": info["redis_version"],
        "allocator": allocator,
        "sessions": count,
        "payload_bytes": STATE_BYTES,
        "stored_value_bytes": len(value),
        "compact_value_bytes": len(compact_value(value)),
        "marker_hash_density": round((len(warm) + count) / density_buckets),
        "target_ratio": TARGET,
        "variants": judged,
        "best_lever": best,
        "best_lever_ratio_to_payload": judged[best]["ratio_to_payload"],
        "notes": "used_memory growth per session after a first fifth (written first, not "
                 "counted); each variant on an emptied server (FLUSHALL); ids are 36 characters; "
                 "ratio_to_payload = bytes per session / 1024; the marker-hash variants hold "
                 "marker_hash_density markers per hash, as 1M sessions over 1024 buckets would; "
                 "hget_p50_us / hget_server_usec / hset_server_usec = one HGET of a marker on "
                 "that hash, client p50 and server time, and the server time of setting a "
                 "marker again as every write does (the listpack's O(n) against the "
                 "hashtable's O(1)).",
    }

