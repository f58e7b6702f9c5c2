"""The hot path's steps, measured in one run (docs/bench/hot-path-steps.json,
docs/performance.md "The hot path at wire speed").

    python -m sessionsync.bench.hot_path [--iterations N] [--output PATH]

On a throwaway redis-server pinned apart from the client (as
``sessionsync bench`` does), every variant runs interleaved against the
same stored 1 KB session:

- ``pool``: redis-py through its connection pool, a checkout and a checkin
  per command (same pool, same options as ``connect_redis``);
- ``single``: redis-py's own ``single_connection_client`` on that pool (its
  lock and full command path, one connection);
- ``hot``: ``connect_redis``'s client: GET, EVALSHA and SCRIPT LOAD on a
  connection of its own (client._Redis);
- ``raw``: a bare socket with TCP_NODELAY and a hiredis.Reader, no error
  handling at all: the least Python can do, for reference only;
- the C client (redis-benchmark -c 1) on the same GET, the same EVALSHA of
  GET_SCRIPT and of UPDATE_SCRIPT (c_client.CFloors).

Each variant does the raw GET, the EVALSHA of GET_SCRIPT, and (but ``raw``)
SessionStore.get(verify=True) and SessionStore.update; the warm handler's
GET runs on the ``pool`` and on the ``hot`` client, each with its own
store get alongside, so each ratio's two sides share one run.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import hiredis
import redis

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.keys import session_keys
from chalicelib.adapters.redis.scripts import GET_SCRIPT
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from sessionsync.bench import machine
from sessionsync.bench.c_client import CFloors
from sessionsync.bench.context import PROFILES, STATE_BYTES, BenchContext, Placement, state_json
from sessionsync.bench.harness import Updater, quiet_telemetry
from sessionsync.bench.redis_server import ThrowawayRedis
from sessionsync.bench.stats import interleaved, ratio, summarize_ns

DEFAULT_OUTPUT = Path("docs/bench/hot-path-steps.json")
API_KEY = "bench-api-key-0123456789abcdef"
# what lives as long as the process (the telemetry's /dev/null)
_PROCESS_LIFETIME = ExitStack()


class RawClient:
    """A bare RESP client: one socket, TCP_NODELAY, hiredis.  No timeouts
    beyond the socket's, no errors handled: a reference, never a product."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = hiredis.Reader()
        self.buffer = bytearray(65536)

    def call(self, packed: bytes) -> Any:
        self.sock.sendall(packed)
        view = memoryview(self.buffer)
        while True:
            n = self.sock.recv_into(self.buffer)
            if not n:
                raise ConnectionError("closed")
            self.reader.feed(view[:n])  # type: ignore[arg-type]  # hiredis reads any buffer
            reply = self.reader.gets()
            if reply is not False:
                return reply

    def close(self) -> None:
        self.sock.close()


def measure(server: ThrowawayRedis, iterations: int, log: Callable[[str], None] = print
            ) -> dict[str, Any]:
    url = server.url
    state = state_json(STATE_BYTES)
    hot = cast(redis.Redis, connect_redis(Settings(redis_url=url)))  # a single node
    clients: dict[str, redis.Redis] = {
        "pool": redis.Redis(connection_pool=hot.connection_pool),
        "single": redis.Redis(connection_pool=hot.connection_pool, single_connection_client=True),
        "hot": hot,
    }
    stores = {name: SessionStore(client, channel="hot-path-steps") for name, client in clients.items()}
    read_id = "hot-path-read"
    stores["hot"].create(read_id, state, 3600)
    read_key = session_keys(read_id)[0]
    get_sha = hot.script_load(GET_SCRIPT)
    raw = RawClient(cast(int, server.port))
    raw_get = hiredis.pack_command(cast(Any, ("GET", read_key)))
    raw_evalsha = hiredis.pack_command(cast(Any, ("EVALSHA", get_sha, 1, read_key)))
    updates: list[Updater] = []
    ops: dict[str, Callable[[], Any]] = {
        "raw.get": lambda: raw.call(raw_get),
        "raw.evalsha_get_script": lambda: raw.call(raw_evalsha),
    }
    for name, client in clients.items():
        store = stores[name]
        update = Updater(store, f"hot-path-update-{name}", state)
        store.create(update.session_id, state, 3600)
        updates.append(update)
        # lambdas with defaults, as the raw ops: the same call overhead for every variant
        ops[f"{name}.get"] = lambda client=client: client.get(read_key)  # type: ignore[misc]
        ops[f"{name}.evalsha_get_script"] = (
            lambda client=client: client.evalsha(get_sha, 1, read_key))  # type: ignore[misc]
        ops[f"{name}.store_get"] = lambda store=store: store.get(read_id, verify=True)  # type: ignore[misc]
        ops[f"{name}.store_update"] = update
    ops.update(_handler_ops(url, clients, read_id))
    ctx = BenchContext(profile=PROFILES["full"], redis_url=url, redis_is_own=True,
                       database_url=None, aws_endpoint_url=None, log=log)
    floors = CFloors(ctx, stores["hot"], hot, read_key, state, "hot-path")
    rounds = 50

    def between_rounds(done: int) -> None:
        floors.at_round(done, rounds, max(1000, iterations // 2))
        for update in updates:
            update.ack()

    try:
        samples = interleaved(ops, iterations, warmup=max(100, iterations // 20), rounds=rounds,
                              between_rounds=between_rounds)
    finally:
        raw.close()
        for client in clients.values():
            client.close()
    latency = {name: summarize_ns(values) for name, values in samples.items()}
    c_floors = floors.summary()
    return {"latency": latency, "c_client": c_floors, "ratios": _ratios(latency, c_floors)}


def _handler_ops(url: str, clients: dict[str, redis.Redis], read_id: str
                 ) -> dict[str, Callable[[], Any]]:
    """The warm handler's GET on the ``pool`` and on the ``hot`` client."""
    from chalicelib import runtime
    from sessionsync.bench.context import DEFAULT_DATABASE_URL
    from sessionsync.bench.events import LambdaContext, session_get_event
    from sessionsync.project import import_app

    quiet_telemetry(_PROCESS_LIFETIME)  # as the bench does
    app, context = import_app().app, LambdaContext()
    event = session_get_event(read_id, API_KEY)
    settings = Settings(redis_url=url, api_keys=(API_KEY,), channel="hot-path-steps",
                        database_url=DEFAULT_DATABASE_URL)
    ops: dict[str, Callable[[], Any]] = {}
    installed: list[str] = [""]
    for name in ("pool", "hot"):
        def handler_get(name: str = name) -> Any:
            # a warm process per client: the runtime holds that one (the
            # switch, once per block, costs one sample of the block)
            if installed[0] != name:
                runtime.reset()
                runtime.install(settings=settings, redis=clients[name])
                installed[0] = name
            response = app(event, context)
            if response["statusCode"] != 200:
                raise AssertionError(f"GET answered {response['statusCode']}: {response['body'][:200]}")
            return response
        ops[f"{name}.handler_get"] = handler_get
    return ops


def _ratios(latency: dict[str, Any], c_floors: dict[str, Any]) -> dict[str, float]:
    p50 = {name: data["p50_us"] for name, data in latency.items()}
    out: dict[str, float] = {}
    for name in ("pool", "single", "hot"):
        if "c_get" in c_floors:
            out[f"{name}.get/c_get"] = ratio(p50[f"{name}.get"], c_floors["c_get"]["p50_us"])
            out[f"{name}.store_get/c_get"] = ratio(p50[f"{name}.store_get"],
                                                   c_floors["c_get"]["p50_us"])
            out[f"{name}.store_get/c_get_verified"] = ratio(
                p50[f"{name}.store_get"], c_floors["c_get_verified"]["p50_us"])
            out[f"{name}.store_update/c_update"] = ratio(p50[f"{name}.store_update"],
                                                         c_floors["c_update"]["p50_us"])
    for name in ("pool", "hot"):
        out[f"{name}.handler_get/{name}.store_get"] = ratio(p50[f"{name}.handler_get"],
                                                            p50[f"{name}.store_get"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    placement = Placement.split()
    if placement is not None:
        os.sched_setaffinity(0, placement.client_cpus)
    started = time.time()
    with ThrowawayRedis(cpus=placement.server_cpus if placement else None) as server:
        results = measure(server, args.iterations)
        info = redis.Redis.from_url(server.url).info("server")
    document = {
        "what": "the hot path's steps (sessionsync.bench.hot_path): p50/p99 per variant, "
                "interleaved in one run, with the C client's floors",
        "iterations": args.iterations,
        "state_bytes": STATE_BYTES,
        "machine": machine.describe({k: info.get(k) for k in ("redis_version", "redis_mode")}),
        "cpu_placement": None if placement is None else {
            "redis_server": sorted(placement.server_cpus), "bench": sorted(placement.client_cpus)},
        "duration_seconds": round(time.time() - started, 1),
        **results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    for name, value in sorted(results["latency"].items()):
        print(f"{name:32} p50 {value['p50_us']:8.2f} us  p99 {value['p99_us']:9.2f} us")
    for name, value in results["c_client"].items():
        if isinstance(value, dict):
            print(f"{name:32} p50 {value['p50_us']:8.2f} us  (redis-benchmark -c 1)")
    for name, value in results["ratios"].items():
        print(f"{name:40} {value}")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
