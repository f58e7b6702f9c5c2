"""What REDIS_WAIT_REPLICAS costs a write: the update acknowledged once a
replica has it, against the same update acknowledged by the primary alone.

Two servers of the section's own, pinned like every bench server
(``context.Placement``): a primary and a replica following it (REPLICAOF,
asynchronous replication, on loopback).  Two stores on the client the
service builds, one with ``wait_replicas=1`` (the write's script, then
``WAIT 1`` on the same connection) and one without, update sessions of
their own on the same primary, interleaved (``stats.interleaved``).  The
ratio ``update_waited/update`` is what the mode costs at p50/p95/p99 on
this machine; across machines the replica's round trip (another zone, on
ElastiCache) is what it adds, so a real deployment pays more than loopback
shows.  ``wait_timeouts`` counts writes the replica did not confirm within
the timeout (a 503 in the service): it must be 0 on a healthy pair.
"""
from __future__ import annotations

import time
from typing import Any

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.errors import ServiceUnavailable
from sessionsync.bench.context import BenchContext, state_json
from sessionsync.bench.harness import Updater
from sessionsync.bench.redis_server import ThrowawayRedis
from sessionsync.bench.stats import interleaved, ratio, summarize_ns

ITERATIONS = {"full": 10_000, "quick": 2_000, "smoke": 100}
# generous: a busy machine must not turn a slow acknowledgement into a 503
# here; the service's default (REDIS_WAIT_TIMEOUT_MS) is what bounds it there
WAIT_TIMEOUT_MS = 1000
LINK_TIMEOUT_SECONDS = 20.0
CLIENT_TIMEOUT = 10.0


def run(ctx: BenchContext) -> dict[str, Any]:
    n = ITERATIONS.get(ctx.profile.name, ITERATIONS["quick"])
    with ThrowawayRedis(cpus=ctx.server_cpus) as primary, \
            ThrowawayRedis(cpus=ctx.server_cpus) as replica:
        with replica.client(socket_timeout=CLIENT_TIMEOUT) as follower:
            follower.replicaof("127.0.0.1", primary.port)
            deadline = time.monotonic() + LINK_TIMEOUT_SECONDS
            while follower.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not link to the primary")
                time.sleep(0.05)
        settings = Settings(redis_url=primary.url, redis_timeout=CLIENT_TIMEOUT)
        plain = SessionStore(connect_redis(settings))
        waited = SessionStore(connect_redis(settings), wait_replicas=1,
                              wait_timeout_ms=WAIT_TIMEOUT_MS)
        state = state_json()
        prefix = ctx.session_prefix("replication")
        updaters = {}
        for name, store in (("update", plain), ("update_waited", waited)):
            sid = f"{prefix}-{name}"
            store.create(sid, state, 3600)
            updaters[name] = Updater(store, sid, state)
        timeouts = 0

        def update_waited() -> Any:
            nonlocal timeouts
            try:
                return updaters["update_waited"]()
            except ServiceUnavailable:
                timeouts += 1  # committed, unconfirmed: the next call is at the next version
                updaters["update_waited"].version += 1
                return None

        def ack(_done: int) -> None:
            for updater in updaters.values():
                updater.ack()

        try:
            samples = interleaved({"update": updaters["update"], "update_waited": update_waited},
                                  n, warmup=min(50, n), rounds=min(50, n), between_rounds=ack)
            with primary.client() as admin:
                replicas = admin.info("replication")["connected_slaves"]
        finally:
            plain.client.close()
            waited.client.close()
    latency = {name: summarize_ns(values) for name, values in samples.items()}
    return {
        "iterations": n,
        "connected_replicas": replicas,
        "wait_timeout_ms": WAIT_TIMEOUT_MS,
        "wait_timeouts": timeouts,
        "latency": latency,
        "ratios": {"update_waited/update": {
            q: ratio(latency["update_waited"][f"{q}_us"], latency["update"][f"{q}_us"])
            for q in ("p50", "p95", "p99")}},
        "notes": "update = SessionStore.update acknowledged by the primary (the default); "
                 "update_waited = the same with REDIS_WAIT_REPLICAS=1 (WAIT 1 after the script, "
                 "on its connection); one primary and one replica on loopback, the same state",
    }
