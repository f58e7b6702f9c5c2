"""A write as users feel it, and how soon it reaches PostgreSQL.

``sessionsync serve`` runs with its pipeline, as deployed: the relay as its
schedule runs it (lease, wake-ups, sweeps), the SQS worker playing the
event source mapping, on a redis-server of the bench's own, the bench's
database and LocalStack queues of the run's own.  In one run:

* ``write_read``: one keep-alive client alternates a GET and a PUT
  (If-Match) of one 1 KB session: p50 and p99 of each, and write/read
  (target: at most 1.5x).  The PUT answers once Redis committed it; the
  relay ships it beside;
* ``persistence_lag``: writers paced at ``WRITE_RATE`` writes/s in all (an
  open loop: each write is due at its time, whatever the one before took),
  each PUT's acknowledgement time (the client's clock, when the answer
  arrived) against its row's ``persisted_at`` in sync_events (PostgreSQL's
  clock, the same machine's: the consumer transaction's start, a few ms
  before its commit).  Targets: p50 under 500 ms, p99 under 2 s;
* ``relay``: the relay alone (``OutboxRelay.serve``, its senders as
  deployed) draining a backlog into a LocalStack queue of its own: entries
  per second, against the writes per second one API function sustains
  (one request at a time: the single client's PUT rate above).  Target:
  at least 5x.

The machine's two cores carry the server, its pipeline threads, the
client, LocalStack, PostgreSQL and Redis at once: latencies bound the
local stack, not a deployment.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from sessionsync.bench import lag_trace
from sessionsync.bench.aws_local import localstack_sqs_unavailable, sqs_client, temporary_queue
from sessionsync.bench.context import STATE_BYTES, BenchContext, state_document
from sessionsync.bench.harness import delete_rows, in_threads, serve_process
from sessionsync.bench.http_client import HttpClient, RouteStats, TransportError
from sessionsync.bench.machine import load_average
from sessionsync.bench.redis_server import ThrowawayRedis
from sessionsync.bench.stats import percentile, ratio, summarize_ns

API_KEY = "bench-persistence-key-0123456789abcdef"
#: the persistence-lag target's load, writes per second in all
WRITE_RATE = 300
WRITERS = 4
#: sessions each writer cycles through (a PUT needs the version it holds)
SESSIONS_PER_WRITER = 25
#: by profile: write/read rounds, seconds of paced writes, relay backlog
SIZES: dict[str, tuple[int, float, int]] = {
    "full": (5_000, 20.0, 20_000), "quick": (1_000, 8.0, 5_000), "smoke": (50, 1.0, 300)}
#: how long the rows of the paced writes may take to appear, at most
PERSIST_TIMEOUT_SECONDS = 120.0
REQUEST_TIMEOUT_SECONDS = 30.0
# the targets (docs/performance.md)
WRITE_READ_LIMIT = 1.5
LAG_P50_LIMIT_MS = 500.0
LAG_P99_LIMIT_MS = 2000.0
RELAY_FACTOR = 5.0


def _environment(ctx: BenchContext, redis_url: str, queue_url: str, dlq_url: str) -> dict[str, str]:
    from chalicelib import config

    return {config.SESSION_QUEUE_URL: queue_url, config.SESSION_DLQ_URL: dlq_url,
            config.SESSION_QUEUE_NAME: "", config.SESSION_DLQ_NAME: "",
            config.REDIS_URL: redis_url, config.DATABASE_URL: ctx.migrated_dsn(),
            config.API_KEYS: API_KEY, config.AWS_ENDPOINT_URL: ctx.aws_endpoint_url or "",
            config.PUBSUB_CHANNEL: f"{ctx.session_prefix('persistence')}-updates",
            "LOG_LEVEL": "WARNING"}


class _Client(HttpClient):
    def __init__(self, port: int) -> None:
        super().__init__(f"http://127.0.0.1:{port}", API_KEY, REQUEST_TIMEOUT_SECONDS, RouteStats())

    def expect(self, status: int, route: str, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None) -> dict[str, str]:
        got, reply_headers, data = self.request(route, method, path, body, headers)
        if got != status:
            raise RuntimeError(f"{method} {path} answered {got}, not {status}: {data[:300]!r}")
        return reply_headers


def _write_read(port: int, sid: str, rounds: int) -> dict[str, Any]:
    """GET, then PUT If-Match, ``rounds`` times on one connection."""
    state = state_document(STATE_BYTES)
    client = _Client(port)
    client.connect()
    try:
        client.expect(201, "POST /sessions", "POST", "/sessions", {"session_id": sid, "state": state})
        version = 1
        warm = max(10, rounds // 10)
        for n in range(warm + rounds):
            if n == warm:
                client.stats = RouteStats()  # the warm-up is not measured
            client.expect(200, "GET /sessions/{id}", "GET", f"/sessions/{sid}")
            client.expect(200, "PUT /sessions/{id}", "PUT", f"/sessions/{sid}", {"state": state},
                          {"If-Match": f'"{version}"'})
            version += 1
    finally:
        client.close()
    read = summarize_ns(client.stats.latency_ns["GET /sessions/{id}"], "us")
    write = summarize_ns(client.stats.latency_ns["PUT /sessions/{id}"], "us")
    return {"rounds": rounds, "read": read, "write": write,
            "write/read": {"p50": ratio(write["p50_us"], read["p50_us"]),
                           "p99": ratio(write["p99_us"], read["p99_us"])},
            # one request at a time, as one Lambda instance serves them
            "writes_per_second_one_client": round(1e6 / write["mean_us"], 1)}


def _paced_writes(port: int, prefix: str, seconds: float) -> tuple[list[tuple[str, int, float]], int]:
    """WRITERS threads, WRITE_RATE writes/s in all, for ``seconds``:
    ((session, version, acknowledged at: epoch seconds)..., writes late
    by more than a period)."""
    state = state_document(STATE_BYTES)
    interval = WRITERS / WRITE_RATE
    acks: list[list[tuple[str, int, float]]] = [[] for _ in range(WRITERS)]
    late = [0] * WRITERS
    clients = [_Client(port) for _ in range(WRITERS)]
    versions: list[dict[str, int]] = []
    for i, client in enumerate(clients):
        client.connect()
        mine = {f"{prefix}-{i}-{n}": 1 for n in range(SESSIONS_PER_WRITER)}
        for sid in mine:
            client.expect(201, "POST /sessions", "POST", "/sessions", {"session_id": sid, "state": state})
        versions.append(mine)

    def writer(i: int, released: float) -> None:
        client, mine = clients[i], versions[i]
        ids = list(mine)
        # the writers start spread over one interval, not all at once
        due = released + interval * i / WRITERS
        n = 0
        try:
            while due < released + seconds:
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                elif -wait > interval:
                    late[i] += 1
                sid = ids[n % len(ids)]
                client.expect(200, "PUT /sessions/{id}", "PUT", f"/sessions/{sid}", {"state": state},
                              {"If-Match": f'"{mine[sid]}"'})
                acked = time.time()
                mine[sid] += 1
                acks[i].append((sid, mine[sid], acked))
                n += 1
                due += interval
        finally:
            client.close()

    in_threads(WRITERS, writer, timeout=seconds + 4 * REQUEST_TIMEOUT_SECONDS, name="paced-writer")
    return [a for per in acks for a in per], sum(late)


def _lags(dsn: str, prefix: str, acks: list[tuple[str, int, float]]
          ) -> tuple[dict[str, Any], dict[str, float]]:
    """persisted_at - acknowledged, per write, once every row is there; and
    each row's persisted_at by event id (epoch seconds)."""
    wanted = {(sid, v): at for sid, v, at in acks}
    rows: dict[tuple[str, int], float] = {}
    deadline = time.monotonic() + PERSIST_TIMEOUT_SECONDS
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            rows = {(sid, int(v)): float(at) for sid, v, at in conn.execute(
                "SELECT session_id, version, extract(epoch FROM persisted_at) FROM sync_events "
                "WHERE session_id LIKE %s", (prefix + "-%",))}
            if all(key in rows for key in wanted) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    lags = sorted((rows[key] - at) * 1000 for key, at in wanted.items() if key in rows)
    missing = sum(1 for key in wanted if key not in rows)
    persisted = {f"{sid}:{v}": at for (sid, v), at in rows.items()}
    if not lags:
        return {"writes": len(wanted), "missing": missing}, persisted
    return {"writes": len(wanted), "missing": missing,
            "p50_ms": round(percentile(lags, 50), 1), "p90_ms": round(percentile(lags, 90), 1),
            "p99_ms": round(percentile(lags, 99), 1), "max_ms": round(lags[-1], 1),
            # a row may be in before its answer reached the client
            "persisted_before_the_answer": sum(1 for lag in lags if lag < 0)}, persisted


def _relay_drain(ctx: BenchContext, backlog: int) -> dict[str, Any]:
    """The continuous relay (serve: lease, wake-ups, its senders) draining
    ``backlog`` entries, on a redis-server and a queue of its own."""
    from chalicelib.adapters.redis.lease import RelayLease
    from chalicelib.adapters.redis.store import SessionStore
    from chalicelib.adapters.redis.subscription import Subscription
    from chalicelib.constants import RELAY_LEASE_SECONDS, RELAY_SENDERS
    from chalicelib.pipeline.outbox import LEASE_POLL_SECONDS, OutboxRelay, RelayRun
    from chalicelib.pipeline.producer import SqsProducer
    from sessionsync.bench.harness import local_queue
    from sessionsync.bench.relay import fill_outbox
    from sessionsync.redis_views import outbox_depth

    with ThrowawayRedis(cpus=ctx.server_cpus) as server, local_queue(ctx, "relay-serve") as (sqs, url):
        client = server.client()
        try:
            fill_outbox(client, ctx.session_prefix("relay-serve"), backlog)
            store = SessionStore(client, channel=f"{ctx.session_prefix('relay-serve')}-updates")
            relay = OutboxRelay(store, SqsProducer(sqs, url, store), senders=RELAY_SENDERS,
                                age_seconds=0.0,
                                lease=RelayLease(client, ttl_seconds=RELAY_LEASE_SECONDS,
                                                 poll_seconds=LEASE_POLL_SECONDS),
                                listen=lambda: Subscription(client, store.channel))
            stop = threading.Event()
            run = RelayRun()

            def serve() -> None:
                # the relay is a function of its own in AWS: on every CPU,
                # not on the one the bench pinned itself to (its lanes'
                # threads inherit this thread's CPUs)
                if hasattr(os, "sched_setaffinity"):
                    os.sched_setaffinity(0, range(os.cpu_count() or 1))
                relay.serve(budget_seconds=600, stop=stop, run=run)

            start = time.perf_counter()
            thread = threading.Thread(target=serve, daemon=True)
            thread.start()
            # the run's own count of what SQS took: reading the outbox's
            # 1,024 buckets every few ms would take the relay's interpreter
            # from it; the outbox is read once the count is reached
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                while run.sent < backlog and thread.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.01)
                if not outbox_depth(store) or not thread.is_alive():
                    break
                time.sleep(0.1)  # duplicates counted: some entries are still there
            seconds = time.perf_counter() - start
            left = outbox_depth(store)
            stop.set()
            thread.join(30)
        finally:
            client.close()
    if left:
        raise RuntimeError(f"the relay left {left} of {backlog} entries")
    return {"backlog": backlog, "senders": RELAY_SENDERS, "seconds": round(seconds, 3),
            "entries_per_second": round(backlog / seconds)}


def run(ctx: BenchContext) -> dict[str, Any]:
    if why_not := localstack_sqs_unavailable(ctx.aws_endpoint_url):
        return {"skipped": why_not}
    rounds, seconds, backlog = SIZES.get(ctx.profile.name, SIZES["quick"])
    prefix = ctx.session_prefix("persistence")
    dsn = ctx.migrated_dsn()
    sqs = sqs_client(ctx.aws_endpoint_url)
    with ThrowawayRedis(cpus=ctx.server_cpus) as redis_server, \
            tempfile.TemporaryDirectory(prefix="sessionsync-bench-persistence-") as tmp, \
            temporary_queue(sqs, f"sessionsync-bench-persistence-{ctx.run_id}") as url, \
            temporary_queue(sqs, f"sessionsync-bench-persistence-dlq-{ctx.run_id}") as dlq:
        trace = Path(tmp) / "lag-trace.jsonl"
        environment = {**_environment(ctx, redis_server.url, url, dlq), lag_trace.TRACE_ENV: str(trace)}
        with serve_process(Path(tmp), environment, entry=lag_trace.entry_command()) as (port, _):
            try:
                write_read = _write_read(port, f"{prefix}-wr", rounds)
                load = {"before_paced_writes": load_average()}
                acks, late = _paced_writes(port, f"{prefix}-paced", seconds)
                load["after_paced_writes"] = load_average()
                lag, persisted = _lags(dsn, f"{prefix}-paced", acks)
            except TransportError as exc:
                raise RuntimeError(f"sessionsync serve did not answer: {exc}") from exc
        lag["split"] = lag_trace.split(trace, {f"{sid}:{v}": at for sid, v, at in acks}, persisted)
    with psycopg.connect(dsn) as conn:
        delete_rows(conn, prefix)
    relay = _relay_drain(ctx, backlog)
    one_function = write_read["writes_per_second_one_client"]
    lag.update({"rate_per_second": WRITE_RATE, "writers": WRITERS, "seconds": seconds,
                "writes_late_by_more_than_a_period": late, "load_average": load})
    relay["ratio_to_one_api_function"] = ratio(relay["entries_per_second"], one_function)
    return {
        "server": "sessionsync serve with its pipeline (the relay as scheduled, the SQS worker), "
                  "own process; a redis-server, LocalStack queues of its own, the bench's database",
        "write_read": write_read,
        "persistence_lag": lag,
        "relay": relay,
        "notes": "write_read: one keep-alive client, GET then PUT If-Match of one 1 KB session, "
                 "alternated; persistence_lag: the client's clock at each PUT's answer against "
                 "its row's persisted_at (PostgreSQL's now(): the consumer transaction's start); "
                 "relay: OutboxRelay.serve draining a backlog to LocalStack SQS, entries/s, over "
                 "the single client's PUTs/s (one API function serves one request at a time).",
    }
