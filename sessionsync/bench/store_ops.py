"""Store operations against their floor, measured in the same run.

The floor is what raw redis-py does with the same payload on the same
server: a GET of the very string the store keeps for a session, an HGETALL
of a hash holding the same fields (the layout a hash-based store would
use, for reference), and an EVALSHA of ``return 1`` with one key (the least
any one-script compare-and-set can cost).  The sessionsync operations run
through ``SessionStore`` on the client the service builds
(``connect_redis``), with a 1 KB state.  All of them run interleaved
(``stats.interleaved``), so the ratios are not skewed by drift.
"""
from __future__ import annotations

from typing import Any, cast

import redis

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.store import EPOCH_SCRIPT, SessionStore, decode_session, session_keys
from chalicelib.config import Settings
from chalicelib.domain.session import Session
from chalicelib.domain.validation import CreateRequest
from chalicelib.service.sessions import SessionService
from sessionsync.bench.context import STATE_BYTES, BenchContext, delete_session_keys, state_json
from sessionsync.bench.stats import interleaved, ratio, summarize_ns

TRIVIAL_SCRIPT = "return 1"


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

    def housekeeping() -> None:
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
        "outbox_ack": outbox_ack,
        "delete": delete,
    }
    if checked is not None:
        ops["create_checked"] = create_checked
    try:
        samples = interleaved(ops, profile.store_iterations, warmup=profile.store_warmup,
                              between_rounds=housekeeping)
        if cast(Session, store.get(update_id)).version != version:
            raise AssertionError("update count and stored version disagree")
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
                      *((("create_checked", "create"),) if checked is not None else ())):
        ratios[f"{op}/{floor}"] = {q: ratio(latency[op][f"{q}_us"], latency[floor][f"{q}_us"])
                                   for q in ("p50", "p95", "p99")}
    # What the round trip adds to the server's own time: network, kernel,
    # redis-py and sessionsync's Python (the part that depends on the host).
    client_side = {op: round(latency[op]["p50_us"] - server[op], 2) for op in server}
    return {
        "state_bytes": STATE_BYTES,
        "stored_value_bytes": len(stored_value),
        "iterations": profile.store_iterations,
        "latency": latency,
        "ratios": ratios,
        "server_usec_per_call": server,
        "p50_minus_server_us": client_side,
        "notes": "floor_* = raw redis-py (default options) on the same server and payload; "
                 "get/create/update/delete = SessionStore on connect_redis(); get_verified = the "
                 "API's read with PostgreSQL configured (GET + epoch check in one script); "
                 "create_checked = the API's create of a new id with PostgreSQL behind it (the "
                 "script finds no trace, PostgreSQL is asked, then the create); "
                 "epoch_only = a script doing only that check (INFO replication), the step "
                 "every write script carries: its cost on top of floor_evalsha; "
                 "outbox_ack = the "
                 "write path's third round trip (ZREM+HDEL pipeline) after the SQS send; "
                 "server_usec_per_call = Redis's own execution time (INFO commandstats), so "
                 "p50 minus it is network + client.",
    }


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
