"""Store operations against their floor, measured in the same run.

The floor is what raw redis-py does with the same payload on the same
server: a GET of the very string the store keeps for a session, an HGETALL
of a hash holding the same fields (the layout a hash-based store would
use, for reference), and an EVALSHA of ``return 1`` with one key (the least
any one-script compare-and-set can cost).  The sessionsync operations run
through ``SessionStore`` on the client the service builds
(``connect_redis``), with a 1 KB state.  All of them run interleaved
(``stats.interleaved``), so the ratios are not skewed by drift.

The C client's floors (``c_client``: redis-benchmark, one connection, one
call at a time) are the same GET, the same EVALSHA of GET_SCRIPT and of
UPDATE_SCRIPT with the same keys and arguments, run in three slices spread
over the interleaved rounds; each floor is the median of its slices' p50.
The update floor's script is UPDATE_SCRIPT without its version check (a C
client cannot send the next version on each call): every call commits, as
the store's updates do, and the run checks that it did.
"""
from __future__ import annotations

import time
from typing import Any, cast

import redis

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.codec import decode_session, iso_utc
from chalicelib.adapters.redis.keys import idempotency_key, session_keys
from chalicelib.adapters.redis.scripts import GET_SCRIPT, UPDATE_SCRIPT
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.idempotency import Idempotency, fingerprint
from chalicelib.domain.session import Session
from chalicelib.domain.validation import CreateRequest
from chalicelib.service.sessions import SessionService
from sessionsync.bench import c_client
from sessionsync.bench.context import STATE_BYTES, BenchContext, delete_session_keys, state_json
from sessionsync.bench.stats import interleaved, median, ratio, summarize_ns
from sessionsync.redis_views import EPOCH_SCRIPT

TRIVIAL_SCRIPT = "return 1"
# UPDATE_SCRIPT's version check, taken out for the C client's floor
VERSION_CHECK = "  if EXPECTED ~= '' and v ~= tonumber(EXPECTED) then return {'conflict', v} end\n"
# slices of each C-client floor, spread over the interleaved rounds
C_SLICES = 3


def _server_usec(client: redis.Redis, command: str, op: Any, n: int) -> float:
    """Redis's own microseconds per call of ``op`` (INFO commandstats delta).

    Untimed on the client side; on a shared server other clients' calls of
    the same command would be counted too (the bench's own server has none).
    """
    def stats() -> tuple[int, int]:
        entry = client.info("commandstats").get(f"cmdstat_{command}", {})
        return entry.get("calls", 0), entry.get("usec", 0)

    calls0, usec0 = stats()
    for _ in range(max(1, n)):
        op()
    calls1, usec1 = stats()
    return round((usec1 - usec0) / max(1, calls1 - calls0), 2)


def run(ctx: BenchContext) -> dict[str, Any]:
    profile = ctx.profile
    prefix = ctx.session_prefix("store")
    state = state_json(STATE_BYTES)
    raw_client = redis.Redis.from_url(ctx.redis_url)
    app_client = connect_redis(Settings(redis_url=ctx.redis_url))
    store = SessionStore(app_client, channel=f"{prefix}-updates")
    used: list[str] = []

    # What the reads read: one session as the store keeps it, and the same
    # fields in a hash.
    read_id = f"{prefix}-read"
    store.create(read_id, state, 3600)
    used.append(read_id)
    read_key = session_keys(read_id)[0]
    stored_value = cast(bytes, raw_client.get(read_key))
    stored = decode_session(read_id, stored_value)
    hash_key = f"{prefix}-hash"
    raw_client.hset(hash_key, mapping={
        "version": stored.version, "created_at": stored.created_at,
        "updated_at": stored.updated_at, "ttl_seconds": stored.ttl_seconds,
        "deleted": 0, "state": stored.state_json})
    trivial_sha = raw_client.script_load(TRIVIAL_SCRIPT)
    # the step every write script and verified read took on (the node's
    # epoch, docs/guarantees.md), alone: what it adds to a script call
    epoch_sha = raw_client.script_load(EPOCH_SCRIPT)

    update_id = f"{prefix}-update"
    store.create(update_id, state, 3600)
    used.append(update_id)
    version = 1
    # the same update with an Idempotency-Key, a new one each call (a
    # client's new request), on a session of its own: the record's lookup
    # and write in the same script, against ``update`` in the same run
    keyed_id = f"{prefix}-update-keyed"
    store.create(keyed_id, state, 3600)
    used.append(keyed_id)
    keyed_version = 1
    records: list[str] = []
    pending_acks: list[str] = []
    created: list[str] = []
    to_delete: list[str] = []
    counter = 0

    def floor_get() -> Any:
        return raw_client.get(read_key)

    def floor_hgetall() -> Any:
        return raw_client.hgetall(hash_key)

    def floor_evalsha() -> Any:
        return raw_client.evalsha(trivial_sha, 1, read_key)

    def epoch_only() -> Any:
        return raw_client.evalsha(epoch_sha, 1, read_key)

    def get() -> Any:
        return store.get(read_id)

    def get_verified() -> Any:
        # what the API does when PostgreSQL is configured: the GET and the
        # epoch check on the node, one script call (docs/guarantees.md)
        return store.get(read_id, verify=True)

    def create() -> Any:
        nonlocal counter
        counter += 1
        sid = f"{prefix}-c{counter}"
        result = store.create(sid, state, 3600)
        created.append(sid)
        to_delete.append(sid)
        return result

    def update() -> Any:
        nonlocal version
        result = store.update(update_id, state, version)
        version += 1
        pending_acks.append(result.event_id)
        return result

    def update_keyed() -> Any:
        nonlocal keyed_version
        key = f"{prefix}-{keyed_version}"
        result = store.update(keyed_id, state, keyed_version, idempotency=Idempotency(
            key, fingerprint("PUT", f"/sessions/{keyed_id}", state.encode(), if_match=str(keyed_version))))
        keyed_version += 1
        pending_acks.append(result.event_id)
        records.append(idempotency_key(keyed_id, key))
        return result

    def outbox_ack() -> Any:
        # The third step of the write path (after the script and the SQS
        # send): drop the outbox entry of one update.
        return store.outbox_ack([pending_acks.pop()])

    def delete() -> Any:
        return store.delete(to_delete.pop(), 1)

    # What the API's create of a new id costs with PostgreSQL behind it: the
    # script finds no trace of the id, PostgreSQL is asked (ids are never
    # reused), then the create (docs/guarantees.md).
    checked = _checked_service(ctx, store)

    def create_checked() -> Any:
        nonlocal counter
        counter += 1
        sid = f"{prefix}-k{counter}"
        session = checked.create(CreateRequest(sid, state, 3600))  # type: ignore[union-attr]  # run only with one
        created.append(sid)
        return session

    floors = CFloors(ctx, store, raw_client, read_key, state, prefix)
    used.append(floors.update_id)
    rounds_done = 0
    rounds = min(50, profile.store_iterations)

    def housekeeping() -> None:
        nonlocal rounds_done
        # the C client's slices: before the first round, halfway, after the last
        if rounds_done in (0, rounds // 2, rounds):
            floors.measure(max(100, profile.store_iterations // 2))
        rounds_done += 1
        # Keep the outbox at its steady-state size (the producer acks every
        # event it sends): drain what create/delete left, untimed.
        acks = [f"{sid}:{v}" for sid in created for v in (1, 2)] + pending_acks
        for i in range(0, len(acks), 1000):
            store.outbox_ack(acks[i:i + 1000])
        used.extend(created)
        created.clear()
        pending_acks.clear()

    ops = {
        "floor_get": floor_get,
        "floor_hgetall": floor_hgetall,
        "floor_evalsha": floor_evalsha,
        "epoch_only": epoch_only,
        "get": get,
        "get_verified": get_verified,
        "create": create,
        "update": update,
        "update_keyed": update_keyed,
        "outbox_ack": outbox_ack,
        "delete": delete,
    }
    if checked is not None:
        ops["create_checked"] = create_checked
    try:
        samples = interleaved(ops, profile.store_iterations, warmup=profile.store_warmup,
                              rounds=rounds, between_rounds=housekeeping)
        c_floors = floors.summary()
        if cast(Session, store.get(update_id)).version != version:
            raise AssertionError("update count and stored version disagree")
        if cast(Session, store.get(keyed_id)).version != keyed_version:
            raise AssertionError("keyed update count and stored version disagree")
        server = {
            "get": _server_usec(raw_client, "get", get, profile.store_iterations // 5),
            "get_verified": _server_usec(raw_client, "evalsha", get_verified,
                                         profile.store_iterations // 5),
            "floor_evalsha": _server_usec(raw_client, "evalsha", floor_evalsha,
                                          profile.store_iterations // 5),
            "update": _server_usec(raw_client, "evalsha", update, profile.store_iterations // 5),
            "epoch_only": _server_usec(raw_client, "evalsha", epoch_only,
                                       profile.store_iterations // 5),
        }
        housekeeping()
    finally:
        if not ctx.redis_is_own:
            delete_session_keys(raw_client, used + created)
            raw_client.unlink(hash_key)
            for i in range(0, len(records), 1000):
                raw_client.unlink(*records[i:i + 1000])
        raw_client.close()
        app_client.close()
        if checked is not None:
            checked.durable.close()  # type: ignore[union-attr]  # the bench's Database

    latency = {name: summarize_ns(values) for name, values in samples.items()}
    ratios = {}
    for op, floor in (("get", "floor_get"), ("get_verified", "floor_get"),
                      ("get_verified", "get"), ("update", "floor_evalsha"),
                      ("create", "floor_evalsha"), ("delete", "floor_evalsha"),
                      ("floor_hgetall", "floor_get"), ("epoch_only", "floor_evalsha"),
                      ("update_keyed", "update"),
                      *((("create_checked", "create"),) if checked is not None else ())):
        ratios[f"{op}/{floor}"] = {q: ratio(latency[op][f"{q}_us"], latency[floor][f"{q}_us"])
                                   for q in ("p50", "p95", "p99")}
    # against the C client, p50 only (its slices are merged by their p50)
    for op, floor in (("get", "c_get"), ("get_verified", "c_get"),
                      ("get_verified", "c_get_verified"), ("update", "c_update"),
                      ("floor_get", "c_get")):
        if floor in c_floors:
            ratios[f"{op}/{floor}"] = {"p50": ratio(latency[op]["p50_us"],
                                                    c_floors[floor]["p50_us"])}
    # What the round trip adds to the server's own time: network, kernel,
    # redis-py and sessionsync's Python (the part that depends on the host).
    client_side = {op: round(latency[op]["p50_us"] - server[op], 2) for op in server}
    return {
        "state_bytes": STATE_BYTES,
        "stored_value_bytes": len(stored_value),
        "iterations": profile.store_iterations,
        "latency": latency,
        "c_client": c_floors,
        "ratios": ratios,
        "server_usec_per_call": server,
        "p50_minus_server_us": client_side,
        "notes": "floor_* = raw redis-py (default options) on the same server and payload; "
                 "get/create/update/delete = SessionStore on connect_redis(); get_verified = the "
                 "API's read with PostgreSQL configured (GET + epoch check in one script); "
                 "create_checked = the API's create of a new id with PostgreSQL behind it (the "
                 "script finds no trace, PostgreSQL is asked, then the create); "
                 "update_keyed = update with an Idempotency-Key (a new key each call: the "
                 "record looked up and written in the same script; its ratio to update is "
                 "what a key costs); "
                 "epoch_only = a script doing only that check (INFO replication), the step "
                 "every write script carries: its cost on top of floor_evalsha; "
                 "outbox_ack = the "
                 "write path's third round trip (ZREM+HDEL pipeline) after the SQS send; "
                 "server_usec_per_call = Redis's own execution time (INFO commandstats), so "
                 "p50 minus it is network + client; "
                 "c_client = redis-benchmark -c 1 (C, hiredis) on the same server: c_get the same "
                 "GET, c_get_verified EVALSHA of GET_SCRIPT on the same key, c_update EVALSHA of "
                 "UPDATE_SCRIPT minus its version check with the store's keys and arguments; "
                 "p50 = median of the slices' p50 (whole microseconds).",
    }


class CFloors:
    """The C client's floors (module docstring), measured in slices."""

    def __init__(self, ctx: BenchContext, store: SessionStore, raw_client: redis.Redis,
                 read_key: str, state: str, prefix: str) -> None:
        self.ctx = ctx
        self.store = store
        self.raw = raw_client
        self.update_id = f"{prefix}-c-update"
        store.create(self.update_id, state, 3600)
        if VERSION_CHECK not in UPDATE_SCRIPT:
            raise AssertionError("UPDATE_SCRIPT's version check changed: update VERSION_CHECK")
        get_sha = raw_client.script_load(GET_SCRIPT)
        update_sha = raw_client.script_load(UPDATE_SCRIPT.replace(VERSION_CHECK, ""))
        now = time.time()
        keys = session_keys(self.update_id)
        # UPDATE_SCRIPT's ARGV, as SessionStore.update sends them (persisted version 0)
        update_args: list[str | bytes | int] = [self.update_id, iso_utc(now), int(now * 1000),
                                                store.marker_ttl, store.channel, 1, 0, "", state]
        self.commands: dict[str, list[str | bytes | int]] = {
            "c_get": ["GET", read_key],
            "c_get_verified": ["EVALSHA", get_sha, 1, read_key],
            "c_update": ["EVALSHA", update_sha, len(keys), *keys, *update_args],
        }
        self.slices: dict[str, list[dict[str, Any]]] = {name: [] for name in self.commands}
        self.error: str | None = None

    def measure(self, requests: int) -> None:
        if self.error is not None:
            return
        try:
            for name, command in self.commands.items():
                before = self._version() if name == "c_update" else 0
                self.slices[name].append(c_client.latency(self.ctx.redis_url, command, requests))
                if name == "c_update":
                    self._drain(before, requests)
        except c_client.CClientUnavailable as exc:
            self.error = str(exc)
            self.ctx.log(f"store: no C-client floors ({exc})")

    def _version(self) -> int:
        return cast(Session, self.store.get(self.update_id)).version

    def _drain(self, before: int, requests: int) -> None:
        after = self._version()
        if after != before + requests:
            raise AssertionError(f"the C client's updates did not all commit: {before} -> {after}")
        acks = [f"{self.update_id}:{v}" for v in range(before + 1, after + 1)]
        for i in range(0, len(acks), 1000):
            self.store.outbox_ack(acks[i:i + 1000])

    def summary(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        out: dict[str, Any] = {}
        for name, slices in self.slices.items():
            out[name] = {"p50_us": median([s["p50_us"] for s in slices]),
                         "p99_us": median([s["p99_us"] for s in slices]),
                         "slices": slices}
        return out


def _checked_service(ctx: BenchContext, store: SessionStore) -> SessionService | None:
    """A service with the bench's database behind it, or None when PostgreSQL
    cannot be reached (the create_checked row is then left out)."""
    import psycopg

    from chalicelib.adapters.postgres.database import Database
    from sessionsync import provisioning
    from sessionsync.bench.context import DEFAULT_DATABASE_URL
    dsn = ctx.database_url or DEFAULT_DATABASE_URL
    try:
        provisioning.ensure_database(dsn)
        provisioning.migrate(dsn)
    except psycopg.Error as exc:
        ctx.log(f"store: no create_checked row (PostgreSQL: {type(exc).__name__})")
        return None
    return SessionService(store, durable=Database.from_dsn(dsn))
