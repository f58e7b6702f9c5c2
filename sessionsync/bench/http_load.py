"""The write path under load: many concurrent HTTP clients against ``sessionsync serve``.

The bench starts ``sessionsync serve --no-pipeline`` on a free loopback
port (a redis-server of its own, the bench's database for reads; no queue: the SQS
send is measured by the handler section, and LocalStack's latency would
swamp the server's), then runs ``clients`` threads at once, each with one
keep-alive connection, for a fixed time:

* ``many_sessions``: each client loops over sessions of its own: POST
  (201), GET (200), PUT with ``If-Match`` of the version it holds (200),
  DELETE with ``If-Match`` (204);
* ``hot_session``: every client reads and writes one session: GET (200),
  then PUT with ``If-Match`` of the version it read: 200, or 412 when
  another client wrote first.  Those refusals are the API doing its job
  (no lost update) and are counted as ``conflicts``, apart from errors;
* ``floor``: the same clients, the same server, a route that does no work
  (``GET`` of an unknown path: the server answers 404 itself, before the
  app's authorizer or Redis).  It measures what the HTTP server, its
  threads and the client threads cost at that load on this machine, so
  that ``ratios`` (route p50 / floor p50, floor requests/s / workload
  requests/s) show what the service adds.  The in-process handler figure
  (section ``handler``) has neither HTTP nor the client threads in it.

An error is a transport failure (no answer) or any status outside the
route's expected ones; each kind is counted by "METHOD /route status
code", with the problem's ``code`` when the body has one.  There must be
none.
Clients and server share the machine's CPUs: on 2 CPUs the figures bound
the local server, not a deployment (one Lambda per request).
"""
from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sessionsync.bench.context import BenchContext
from sessionsync.bench.harness import in_threads, serve_process
from sessionsync.bench.http_client import HttpClient, RouteStats, TransportError, summarize_routes
from sessionsync.bench.redis_server import ThrowawayRedis
from sessionsync.bench.stats import ratio

API_KEY = "bench-http-load-key-0123456789abcdef"
WORKLOADS = ("floor", "many_sessions", "hot_session")
#: concurrent clients and seconds per workload, by profile
SIZES: dict[str, tuple[tuple[int, ...], float]] = {
    "full": ((64, 256), 10.0), "quick": ((64, 128), 3.0), "smoke": ((64,), 0.7)}
#: a bound on each client's requests, besides the time
MAX_REQUESTS_PER_CLIENT = 100_000
REQUEST_TIMEOUT_SECONDS = 30.0
EXPECTED = {
    "GET /bench/no-such-route": {404},
    "POST /sessions": {201},
    "GET /sessions/{id}": {200},
    "PUT /sessions/{id}": {200},
    "DELETE /sessions/{id}": {204},
}
CONFLICT_STATUSES = {409, 412}
STATE = {"cart": [{"sku": "SKU-00001", "qty": 1}], "note": "x" * 200}


class ClientStats(RouteStats):
    """One client thread's figures, with what was refused and why."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: Counter[str] = Counter()
        #: error kind -> the first answer of that kind (its problem detail)
        self.error_samples: dict[str, str] = {}
        self.conflicts: Counter[str] = Counter()


class Client(HttpClient):
    """A load client: every answer checked against the route's expected statuses."""

    stats: ClientStats

    def __init__(self, port: int, stats: ClientStats) -> None:
        super().__init__(f"http://127.0.0.1:{port}", API_KEY, REQUEST_TIMEOUT_SECONDS, stats)

    def call(self, route: str, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None, conflict_ok: bool = False
             ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body); status 0 when no answer came."""
        try:
            status, reply_headers, data = self.request(route, method, path, body, headers)
        except TransportError as exc:
            self.stats.errors[f"{route} transport {exc.kind}"] += 1
            return 0, {}, b""
        if conflict_ok and status in CONFLICT_STATUSES:
            self.stats.conflicts[f"{route} {status}"] += 1
        elif status not in EXPECTED[route]:
            kind = error_kind(route, status, data)
            self.stats.errors[kind] += 1
            self.stats.error_samples.setdefault(kind, data[:300].decode("utf-8", "replace"))
        return status, reply_headers, data


def error_kind(route: str, status: int, body: bytes) -> str:
    """"METHOD route status code": the problem's stable code when the body has one."""
    try:
        code = json.loads(body).get("code") if body else None
    except (ValueError, AttributeError):
        code = None
    return f"{route} {status}" + (f" {code}" if code else "")


def version_of(headers: dict[str, str]) -> int | None:
    etag = headers.get("etag", "").strip('"')
    return int(etag) if etag.isdigit() else None


def many_sessions_loop(client: Client, prefix: str, deadline: float) -> None:
    """POST, GET, PUT (If-Match), DELETE (If-Match) over sessions of its own."""
    n = 0
    while time.monotonic() < deadline and client.stats.requests < MAX_REQUESTS_PER_CLIENT:
        n += 1
        sid = f"{prefix}-{n}"
        status, headers, _ = client.call("POST /sessions", "POST", "/sessions",
                                         {"session_id": sid, "state": STATE})
        if status != 201:
            continue
        client.call("GET /sessions/{id}", "GET", f"/sessions/{sid}")
        status, headers, _ = client.call("PUT /sessions/{id}", "PUT", f"/sessions/{sid}",
                                         {"state": STATE}, {"If-Match": '"1"'})
        version = version_of(headers) if status == 200 else None
        client.call("DELETE /sessions/{id}", "DELETE", f"/sessions/{sid}",
                    headers={"If-Match": f'"{version or 1}"'})


def hot_session_loop(client: Client, sid: str, deadline: float) -> None:
    """GET, then PUT If-Match the version read: 412 when another client won."""
    while time.monotonic() < deadline and client.stats.requests < MAX_REQUESTS_PER_CLIENT:
        status, headers, _ = client.call("GET /sessions/{id}", "GET", f"/sessions/{sid}")
        version = version_of(headers) if status == 200 else None
        if version is None:
            continue
        client.call("PUT /sessions/{id}", "PUT", f"/sessions/{sid}", {"state": STATE},
                    {"If-Match": f'"{version}"'}, conflict_ok=True)


def floor_loop(client: Client, deadline: float) -> None:
    while time.monotonic() < deadline and client.stats.requests < MAX_REQUESTS_PER_CLIENT:
        client.call("GET /bench/no-such-route", "GET", "/bench/no-such-route")


def _own_sessions(prefix: str, client: Client, index: int, deadline: float) -> None:
    many_sessions_loop(client, f"{prefix}-{index}", deadline)


def _on_one(session_id: str, client: Client, index: int, deadline: float) -> None:
    hot_session_loop(client, session_id, deadline)


def merge(all_stats: list[ClientStats], seconds: float) -> dict[str, Any]:
    """The clients' figures together: requests/s, latency and statuses per route."""
    errors: Counter[str] = Counter()
    samples: dict[str, str] = {}
    conflicts: Counter[str] = Counter()
    for s in all_stats:
        errors.update(s.errors)
        for kind, sample in s.error_samples.items():
            samples.setdefault(kind, sample)
        conflicts.update(s.conflicts)
    requests = sum(s.requests for s in all_stats)
    return {
        "requests": requests,
        "seconds": round(seconds, 3),
        "requests_per_second": round(requests / seconds, 1),
        "routes": summarize_routes(all_stats),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common()),
        "error_samples": samples,
        "conflicts": sum(conflicts.values()),
        "conflict_kinds": dict(conflicts.most_common()),
    }


def _load(port: int, clients: int, seconds: float,
          body: Callable[[Client, int, float], None]) -> dict[str, Any]:
    """``clients`` threads, connected first, then released together for ``seconds``."""
    stats = [ClientStats() for _ in range(clients)]
    conns = [Client(port, s) for s in stats]
    for conn in conns:
        conn.connect()

    def client(i: int, released: float) -> None:
        try:
            body(conns[i], i, released + seconds)
        finally:
            conns[i].close()

    _, elapsed = in_threads(clients, client, timeout=seconds + 4 * REQUEST_TIMEOUT_SECONDS,
                            name="http-load")
    return merge(stats, elapsed)


def _server_environment(ctx: BenchContext, redis_url: str) -> dict[str, str]:
    from chalicelib import config

    # empty, not absent: the CLI fills absent settings from the local stage,
    # whose queue name would make every write look a queue up in LocalStack
    return {config.SESSION_QUEUE_URL: "", config.SESSION_QUEUE_NAME: "",
            config.REDIS_URL: redis_url, config.DATABASE_URL: ctx.dsn, config.API_KEYS: API_KEY,
            config.PUBSUB_CHANNEL: f"{ctx.session_prefix('http')}-updates"}


def _create_hot(port: int, sid: str) -> None:
    stats = ClientStats()
    client = Client(port, stats)
    status, _, data = client.call("POST /sessions", "POST", "/sessions",
                                  {"session_id": sid, "state": STATE})
    client.close()
    if status != 201:
        raise RuntimeError(f"could not create the hot session: {status} {data[:300]!r}")


def floor_ratios(floor: dict[str, Any], load: dict[str, Any]) -> dict[str, float]:
    """Each route's p50 and p99 / the floor route's, and the floor's
    requests/s / the workload's (how many times more work a request is)."""
    base = next(iter(floor["routes"].values()))
    out = {"floor_rps/rps": ratio(floor["requests_per_second"], load["requests_per_second"])}
    for route, figures in load["routes"].items():
        out[f"{route} p50/floor p50"] = ratio(figures["p50_ms"], base["p50_ms"])
        out[f"{route} p99/floor p99"] = ratio(figures["p99_ms"], base["p99_ms"])
    return out


def run(ctx: BenchContext) -> dict[str, Any]:
    counts, seconds = SIZES.get(ctx.profile.name, SIZES["quick"])
    prefix = ctx.session_prefix("http")
    by_clients: list[dict[str, Any]] = []
    # a redis-server of its own: the sessions, tombstones and outbox entries
    # (no queue: nothing drains it) go away with it
    with ThrowawayRedis(cpus=ctx.server_cpus) as redis_server, \
            tempfile.TemporaryDirectory(prefix="sessionsync-bench-http-") as tmp, \
            serve_process(Path(tmp), _server_environment(ctx, redis_server.url),
                          "--no-pipeline") as (port, log):
        # warm up: the server's imports, connections and first requests
        _load(port, 4, 0.3, partial(_own_sessions, f"{prefix}-warm"))
        for clients in counts:
            hot = f"{prefix}-hot-{clients}"
            _create_hot(port, hot)
            workloads = {
                "floor": _load(port, clients, seconds, lambda c, i, d: floor_loop(c, d)),
                "many_sessions": _load(port, clients, seconds, partial(
                    _own_sessions, f"{prefix}-{clients}")),
                "hot_session": _load(port, clients, seconds, partial(_on_one, hot)),
            }
            by_clients.append({
                "clients": clients,
                "workloads": workloads,
                "ratios": {name: floor_ratios(workloads["floor"], workloads[name])
                           for name in ("many_sessions", "hot_session")},
            })
        server_log_lines = sum(1 for _ in log.open("rb"))
    return {
        "server": "sessionsync serve --no-pipeline (no queue configured), own process, every CPU; "
                  "a redis-server of its own",
        "seconds_per_workload": seconds,
        "floor": "GET of an unknown path on the same server (404 from the server itself), "
                 "same clients",
        "by_clients": by_clients,
        "errors_total": sum(w["errors"] for c in by_clients for w in c["workloads"].values()),
        "server_log_lines": server_log_lines,
        "notes": "client threads with one keep-alive connection each, released together; "
                 "latency per request at the client; conflicts = 409/412 on the hot session "
                 "(If-Match of the version read, another client wrote first), not errors. "
                 "The clients are a closed loop: a route's latency depends on the workload's "
                 "mix (while most clients wait on slow POSTs the others find the server "
                 "idle), so floor_rps/rps is the ratio to read; latency ratios are per mix.",
    }
