"""Store operations against their floors, measured in the same run.

The floors are raw redis-py on the same server and payload: a GET of the
very string the store keeps for a session, an HGETALL of a hash holding
the same fields (what a hash-based layout would read), an EVALSHA of
``return 1`` with one key (the least any one-script compare-and-set can
cost); and the C client's (``c_client.CFloors``).  The operations run
through ``SessionStore`` on the client the service builds, with a 1 KB
state, all interleaved (``stats.interleaved``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from chalicelib.adapters.redis.codec import decode_session
from chalicelib.adapters.redis.keys import idempotency_key, owner_revoke_keys, session_keys
from chalicelib.domain.idempotency import Idempotency, fingerprint
from chalicelib.domain.session import Session
from chalicelib.domain.validation import CreateRequest
from chalicelib.service.sessions import SessionService
from sessionsync.bench.c_client import CFloors
from sessionsync.bench.context import STATE_BYTES, BenchContext
from sessionsync.bench.harness import TRIVIAL_SCRIPT, SectionRedis, ack_all, server_usec
from sessionsync.bench.stats import interleaved, ratio, summarize_ns
from sessionsync.redis_views import EPOCH_SCRIPT

# op / floor, at p50, p95 and p99
RATIOS = (("get", "floor_get"), ("get_verified", "floor_get"), ("get_verified", "get"),
          ("update", "floor_evalsha"), ("create", "floor_evalsha"), ("delete", "floor_evalsha"),
          ("floor_hgetall", "floor_get"), ("epoch_only", "floor_evalsha"), ("update_keyed", "update"),
          ("create_owned", "create"), ("get_owned", "get"))
# op / the C client's floor, at p50 (its slices are merged by their p50)
C_RATIOS = (("get", "c_get"), ("get_verified", "c_get"), ("get_verified", "c_get_verified"),
            ("update", "c_update"), ("create", "c_create"), ("floor_get", "c_get"))


def run(ctx: BenchContext) -> dict[str, Any]:
    n = ctx.profile.store_iterations
    with SectionRedis(ctx, "store") as r:
        store, raw, state, prefix = r.store, r.raw, r.state, r.prefix
        read_id = r.create("read")
        read_key = session_keys(read_id)[0]
        stored_value = cast(bytes, raw.get(read_key))
        stored = decode_session(read_id, stored_value)
        hash_key = f"{prefix}-hash"
        r.other_keys.append(hash_key)
        raw.hset(hash_key, mapping={
            "version": stored.version, "created_at": stored.created_at,
            "updated_at": stored.updated_at, "ttl_seconds": stored.ttl_seconds,
            "deleted": 0, "state": stored.state_json})
        trivial_sha = raw.script_load(TRIVIAL_SCRIPT)
        # the epoch check every write script and verified read carries, alone
        epoch_sha = raw.script_load(EPOCH_SCRIPT)
        update = r.updater("update")
        # with an Idempotency-Key, a new one each call (a client's new request)
        keyed_id = r.create("update-keyed")
        keyed_version = 1
        keyed_pending: list[str] = []
        created: list[str] = []
        to_delete: list[str] = []
        counter = 0

        def update_keyed() -> Any:
            nonlocal keyed_version
            key = f"{prefix}-{keyed_version}"
            result = store.update(keyed_id, state, keyed_version, idempotency=Idempotency(
                key, fingerprint("PUT", f"/sessions/{keyed_id}", state.encode(),
                                 if_match=str(keyed_version))))
            keyed_version += 1
            keyed_pending.append(result.event_id)
            r.other_keys.append(idempotency_key(keyed_id, key))
            return result

        def create() -> Any:
            nonlocal counter
            counter += 1
            sid = f"{prefix}-c{counter}"
            result = store.create(sid, state, 3600)
            created.append(sid)
            to_delete.append(sid)
            return result

        # an owned session, as the service creates one: the id registered in
        # the owner's index (its own slot), then the create; and read
        owner = f"{prefix}-owner"
        r.other_keys.extend(owner_revoke_keys(owner))
        owned_id = f"{prefix}-owned"
        store.owner_register(owner, owned_id)
        store.create(owned_id, state, 3600, owner_id=owner)
        r.session_ids.append(owned_id)

        def create_owned() -> Any:
            nonlocal counter
            counter += 1
            sid = f"{prefix}-o{counter}"
            store.owner_register(owner, sid)
            result = store.create(sid, state, 3600, owner_id=owner)
            created.append(sid)
            return result

        # the API's create of a new id with PostgreSQL behind it: the script
        # finds no trace of the id, PostgreSQL is asked (ids are never reused)
        checked = _checked_service(ctx, store)

        def create_checked() -> Any:
            nonlocal counter
            counter += 1
            sid = f"{prefix}-k{counter}"
            session = checked.create(CreateRequest(sid, state, 3600))  # type: ignore[union-attr]  # run only with one
            created.append(sid)
            return session

        ops: dict[str, Callable[[], Any]] = {
            "floor_get": lambda: raw.get(read_key),
            "floor_hgetall": lambda: raw.hgetall(hash_key),
            "floor_evalsha": lambda: raw.evalsha(trivial_sha, 1, read_key),
            "epoch_only": lambda: raw.evalsha(epoch_sha, 1, read_key),
            "get": lambda: store.get(read_id),
            # the API's read with PostgreSQL configured: GET and epoch check in one script
            "get_verified": lambda: store.get(read_id, verify=True),
            "create": create,
            "create_owned": create_owned,
            "get_owned": lambda: store.get(owned_id),
            "update": update,
            "update_keyed": update_keyed,
            # the write path's third step, after the script and the SQS send
            "outbox_ack": lambda: store.outbox_ack([update.pending.pop()]),
            "delete": lambda: store.delete(to_delete.pop(), 1),
        }
        if checked is not None:
            ops["create_checked"] = create_checked
        floors = CFloors(ctx, store, raw, read_key, state, prefix)
        r.session_ids.append(floors.update_id)
        rounds = min(50, n)

        def housekeeping(done: int) -> None:
            floors.at_round(done, rounds, max(100, n // 2))
            # every create is deleted (v2) but create_checked's: ack both
            ack_all(store, [f"{sid}:{v}" for sid in created for v in (1, 2)])
            r.session_ids.extend(created)
            created.clear()
            update.ack()
            ack_all(store, keyed_pending)
            keyed_pending.clear()

        try:
            samples = interleaved(ops, n, warmup=ctx.profile.store_warmup, rounds=rounds,
                                  between_rounds=housekeeping)
            c_floors = floors.summary()
            for sid, version in ((update.session_id, update.version), (keyed_id, keyed_version)):
                if cast(Session, store.get(sid)).version != version:
                    raise AssertionError(f"{sid}: update count and stored version disagree")
            server = server_usec(raw, {"get": ("get", ops["get"]),
                                       "get_verified": ("evalsha", ops["get_verified"]),
                                       "floor_evalsha": ("evalsha", ops["floor_evalsha"]),
                                       "update": ("evalsha", update),
                                       "epoch_only": ("evalsha", ops["epoch_only"])}, n // 5)
            housekeeping(-1)
        finally:
            if checked is not None:
                checked.durable.close()  # type: ignore[union-attr]  # the bench's Database

    latency = {name: summarize_ns(values) for name, values in samples.items()}
    ratios: dict[str, dict[str, float]] = {}
    for op, floor in (*RATIOS, *((("create_checked", "create"),) if checked is not None else ())):
        ratios[f"{op}/{floor}"] = {q: ratio(latency[op][f"{q}_us"], latency[floor][f"{q}_us"])
                                   for q in ("p50", "p95", "p99")}
    for op, floor in C_RATIOS:
        if floor in c_floors:
            ratios[f"{op}/{floor}"] = {"p50": ratio(latency[op]["p50_us"], c_floors[floor]["p50_us"])}
    return {
        "state_bytes": STATE_BYTES,
        "stored_value_bytes": len(stored_value),
        "iterations": n,
        "latency": latency,
        "c_client": c_floors,
        "ratios": ratios,
        "server_usec_per_call": server,
        # network, kernel, redis-py and sessionsync's Python: the host-dependent part
        "p50_minus_server_us": {op: round(latency[op]["p50_us"] - server[op], 2) for op in server},
        "notes": "floor_* = raw redis-py (default options) on the same server and payload; "
                 "get/create/update/delete = SessionStore on connect_redis(); get_verified = the "
                 "API's read with PostgreSQL configured (GET + epoch check in one script); "
                 "create_checked = the API's create of a new id with PostgreSQL behind it (the "
                 "script finds no trace, PostgreSQL is asked, then the create); "
                 "create_owned / get_owned = create and read of a session with an owner_id "
                 "(the create registers the id in the owner's index first, another slot; a "
                 "revoke-all adds nothing to either path); "
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
                 "UPDATE_SCRIPT minus its version check with the store's keys and arguments, "
                 "c_create EVALSHA of CREATE_SCRIPT with the store's arguments and new random "
                 "ids (redis-benchmark's __rand_int__); "
                 "p50 = median of the slices' p50 (whole microseconds).",
    }


def _checked_service(ctx: BenchContext, store: Any) -> SessionService | None:
    """A service with the bench's database behind it, or None when PostgreSQL
    cannot be reached (the create_checked row is then left out)."""
    import psycopg

    from chalicelib.adapters.postgres.database import Database

    try:
        dsn = ctx.migrated_dsn()
    except psycopg.Error as exc:
        ctx.log(f"store: no create_checked row (PostgreSQL: {type(exc).__name__})")
        return None
    return SessionService(store, durable=Database.from_dsn(dsn))
