"""Redis Cluster beside one node: get and update from N client processes.

Two servers of the bench's own, pinned like every bench server
(``context.Placement``): one node, and a 3-master Redis Cluster joined by
redis-cli.  On each, N client processes (forked, each with the client
the service builds: ``connect_redis``) run one operation in a closed loop
for a fixed time, on sessions of their own spread over the buckets:

* ``floor_get``     raw GET of a session key (the read's floor)
* ``get``           ``SessionStore.get``
* ``floor_evalsha`` EVALSHA of ``return 1`` with a session key (the write's floor)
* ``update``        ``SessionStore.update`` (compare-and-set, every call commits)

Around each run every node's ``INFO commandstats``, ``errorstats`` and
``cpu`` are read: aggregate ops/s, the server's own microseconds per call,
the calls each master served, CROSSSLOT errors (a script whose keys span
two slots fails with one on a cluster; there must be none) and the
server's CPU time, hence the ops one server core serves (the per-shard
capacity a capacity model extrapolates: docs/capacity.md).  Every figure is
also a ratio to a floor of the same run: the op to its floor, the cluster to
the single node, N processes to one.

On a machine with few cores the client processes and the servers share
them: ``cpu.ceiling`` says where that caps the aggregate instead of a
claim of linear scaling.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.crc import key_slot

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.keys import BUCKETS, bucket_tag, epoch_key, hold_key, session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.session import Session
from sessionsync.bench.context import STATE_BYTES, BenchContext, state_json
from sessionsync.bench.harness import TRIVIAL_SCRIPT, ack_all, in_processes
from sessionsync.bench.redis_server import ThrowawayRedis, ThrowawayRedisCluster
from sessionsync.bench.stats import ratio

MASTERS = 3
OPS = ("floor_get", "get", "floor_evalsha", "update")
FLOOR_OF = {"get": "floor_get", "update": "floor_evalsha"}
# the server-side command each op is counted under in INFO commandstats
COMMAND_OF = {"floor_get": "get", "get": "get", "floor_evalsha": "evalsha", "update": "evalsha"}
SLOTS = 16384
SESSIONS_PER_CLIENT = 128
WARMUP_CALLS = 50
# The service's one-second Redis timeout would fail a run on a loaded
# machine (a stalled client, not a slow server); the timeout costs nothing
# per call, so the figures are those of the service's client all the same.
CLIENT_TIMEOUT = 10.0


@dataclass(frozen=True)
class Plan:
    clients: tuple[int, ...]
    seconds: float


PLANS = {"full": Plan((1, 2, 4), 3.0), "quick": Plan((1, 2, 4), 1.0), "smoke": Plan((1, 2), 0.2)}


# -- pure computations (tests/unit/test_bench_scale_out.py) ------------------

def bucket_slot_check(buckets: int = BUCKETS) -> dict[str, Any]:
    """The slot of every bucket, and how many buckets have a key a script
    touches in another slot than the bucket's (0: no script crosses a slot).

    Every key a script touches is built by ``session_keys``, ``epoch_key``
    or ``hold_key``; one session id per bucket stands for all of it (the
    bucket decides the hash tag, the id only the text after it).
    """
    slots: list[int] = []
    crossing = 0
    ids = _one_id_per_bucket(buckets)
    for bucket in range(buckets):
        sid = ids[bucket]
        keys = [*session_keys(sid), epoch_key(sid), hold_key(sid)]
        found = {key_slot(k.encode()) for k in keys}
        if len(found) != 1 or not all(k.startswith(bucket_tag(bucket)) for k in keys):
            crossing += 1
        slots.append(min(found))
    return {"bucket_slots": slots, "buckets_crossing_slots": crossing,
            "distinct_slots": len(set(slots))}


def _one_id_per_bucket(buckets: int) -> list[str]:
    from chalicelib.adapters.redis.keys import bucket_of
    found: dict[int, str] = {}
    i = 0
    while len(found) < buckets and i < 200 * buckets:  # ~7 * buckets suffice
        sid = f"slot-probe-{i}"
        found.setdefault(bucket_of(sid), sid)
        i += 1
    if len(found) < buckets:
        raise RuntimeError("could not find an id for every bucket")
    return [found[b] for b in range(buckets)]


def buckets_per_master(bucket_slots: Sequence[int],
                       slot_ranges: Sequence[tuple[int, int, str]]) -> dict[str, int]:
    """How many buckets each master owns, from CLUSTER SLOTS' (start, end, node)."""
    counts = {node: 0 for _, _, node in slot_ranges}
    for slot in bucket_slots:
        for start, end, node in slot_ranges:
            if start <= slot <= end:
                counts[node] += 1
                break
        else:
            raise ValueError(f"slot {slot} is served by no master")
    return counts


def imbalance(counts: Sequence[float]) -> float:
    """The busiest master's share over an even share (1.0 = even)."""
    total = sum(counts)
    return ratio(max(counts), total / len(counts)) if total else 0.0


def cpu_ceiling(clients: int, server_processes: int, cores: int,
                client_cpus: int | None = None, server_cpus: int | None = None) -> dict[str, Any]:
    """Whether a run's processes outnumber the cores they may run on.

    With pinning (``Placement``) the clients share ``client_cpus`` and the
    servers ``server_cpus``; without, every process shares ``cores``.  An
    aggregate measured past that point shows the machine's ceiling, not the
    servers'.
    """
    out: dict[str, Any] = {"client_processes": clients, "server_processes": server_processes,
                           "cores": cores}
    if client_cpus is not None and server_cpus is not None:
        out.update(client_cpus=client_cpus, server_cpus=server_cpus,
                   clients_share_cores=clients > client_cpus,
                   servers_share_cores=server_processes > server_cpus,
                   cpu_bound=clients > client_cpus or server_processes > server_cpus)
    else:
        out["cpu_bound"] = clients + server_processes > cores
    return out


def shard_capacity(ops: float, seconds: float, server_cpu_seconds: float,
                   usec_per_call: float) -> dict[str, float]:
    """What one master serves: the measured rate, how busy its core was, and
    the rate at one full core (ops per server CPU-second), beside the bound
    its command time alone would set (1e6 / usec_per_call)."""
    per_cpu = ops / server_cpu_seconds if server_cpu_seconds > 0 else 0.0
    bound = 1e6 / usec_per_call if usec_per_call > 0 else 0.0
    return {"ops_per_second": round(ops / seconds, 1) if seconds > 0 else 0.0,
            "server_cpu_utilisation": round(server_cpu_seconds / seconds, 3) if seconds > 0 else 0.0,
            "ops_per_server_cpu_second": round(per_cpu, 1),
            "command_time_bound_ops_per_second": round(bound, 1),
            "command_share_of_server_cpu": ratio(per_cpu, bound) if bound else 0.0}


# -- servers ------------------------------------------------------------------

@dataclass
class Target:
    name: str
    url: str
    cluster: bool
    nodes: list[redis.Redis]
    ids: list[list[str]] = field(default_factory=list)
    store: SessionStore | None = None

    def snapshot(self) -> list[dict[str, float]]:
        return [_node_stats(node) for node in self.nodes]

    def drain_outbox(self) -> None:
        assert self.store is not None  # set by _prepare
        for _ in range(1000):  # bounded: each page empties what it read
            page = [eid for eid, _ in self.store.outbox_pending(older_than_s=-3600, limit=10_000)]
            if not page:
                return
            ack_all(self.store, page)


def _node_stats(node: redis.Redis) -> dict[str, float]:
    commands = node.info("commandstats")
    errors = node.info("errorstats")
    cpu = node.info("cpu")
    out: dict[str, float] = {}
    for command in ("get", "evalsha", "eval"):
        entry = commands.get(f"cmdstat_{command}", {})
        out[f"{command}_calls"] = entry.get("calls", 0)
        out[f"{command}_usec"] = entry.get("usec", 0)
        out[f"{command}_failed"] = entry.get("failed_calls", 0)
    out["crossslot"] = errors.get("errorstat_CROSSSLOT", {}).get("count", 0)
    # the main thread's CPU: the one that runs commands (Redis 7); older
    # servers report the process's
    user = cpu.get("used_cpu_user_main_thread", cpu.get("used_cpu_user", 0.0))
    system = cpu.get("used_cpu_sys_main_thread", cpu.get("used_cpu_sys", 0.0))
    out["cpu_seconds"] = float(user) + float(system)
    return out


def _delta(before: list[dict[str, float]], after: list[dict[str, float]]
           ) -> list[dict[str, float]]:
    return [{k: a[k] - b[k] for k in a} for b, a in zip(before, after, strict=True)]


def _prepare(stack: ExitStack, target: Target, clients: int, state: str, prefix: str) -> None:
    """Create the sessions of every client process (outbox acked), and load
    the trivial script on every node."""
    client = connect_redis(Settings(redis_url=target.url, redis_cluster=target.cluster,
                                    redis_timeout=CLIENT_TIMEOUT))
    stack.callback(client.close)
    target.store = SessionStore(client, channel=f"{prefix}-updates")
    target.ids = [[f"{prefix}-{target.name}-{k}-{j}" for j in range(SESSIONS_PER_CLIENT)]
                  for k in range(clients)]
    ack_all(target.store, [target.store.create(sid, state, 3600).event_id
                           for ids in target.ids for sid in ids])
    for node in target.nodes:
        node.script_load(TRIVIAL_SCRIPT)


# -- client processes -----------------------------------------------------------

def _client(target: Target, op: str, index: int, seconds: float, channel: str
            ) -> Callable[[float], dict[str, float]]:
    """In a client process: connect and warm up; the run of ``op`` for ``seconds``."""
    client = connect_redis(Settings(redis_url=target.url, redis_cluster=target.cluster,
                                    redis_timeout=CLIENT_TIMEOUT))
    call = _op(client, SessionStore(client, channel=channel), op, target.ids[index])
    for _ in range(WARMUP_CALLS):
        call()

    def work(_released: float) -> dict[str, float]:
        count = 0
        clock = time.perf_counter
        started = clock()
        stop_at = started + seconds
        while clock() < stop_at:
            call()
            count += 1
        elapsed = clock() - started
        client.close()
        return {"ops": count, "seconds": elapsed}
    return work


def _op(client: Any, store: SessionStore, op: str, ids: list[str]) -> Callable[[], Any]:
    keys = [session_keys(sid)[0] for sid in ids]
    n = len(ids)
    position = [0]
    trivial_sha = hashlib.sha1(TRIVIAL_SCRIPT.encode()).hexdigest()

    def next_index() -> int:
        i = position[0]
        position[0] = (i + 1) % n
        return i

    if op == "floor_get":
        return lambda: client.get(keys[next_index()])
    if op == "get":
        def get() -> Any:
            if store.get(ids[next_index()]) is None:
                raise AssertionError("a session of the run is missing")
        return get
    if op == "floor_evalsha":
        return lambda: client.evalsha(trivial_sha, 1, keys[next_index()])
    if op != "update":
        raise ValueError(op)
    versions = [cast(Session, store.get(sid)).version for sid in ids]
    state = state_json(STATE_BYTES)

    def update() -> Any:
        i = next_index()
        result = store.update(ids[i], state, versions[i])
        versions[i] += 1
        return result
    return update


def _run_clients(target: Target, op: str, clients: int, seconds: float, channel: str
                 ) -> dict[str, Any]:
    """``clients`` processes running ``op`` at once, the servers' counters
    read before their release and after their last report."""
    before: list[list[dict[str, float]]] = []
    reports, wall = in_processes(
        clients, lambda k: _client(target, op, k, seconds, channel),
        timeout=seconds + 60, before=lambda: before.append(target.snapshot()))
    delta = _delta(before[0], target.snapshot())
    if op == "update":  # untimed: the outbox back to empty, as the producer would leave it
        target.drain_outbox()
    command = COMMAND_OF[op]
    calls = [d[f"{command}_calls"] for d in delta]
    usec = sum(d[f"{command}_usec"] for d in delta)
    cpu = [d["cpu_seconds"] for d in delta]
    return {
        "client_processes": clients,
        "ops": sum(r["ops"] for r in reports),
        "ops_per_second": round(sum(r["ops"] / r["seconds"] for r in reports), 1),
        "per_process_ops_per_second": [round(r["ops"] / r["seconds"], 1) for r in reports],
        "server_usec_per_call": round(usec / sum(calls), 2) if sum(calls) else 0.0,
        "calls_per_master": calls,
        "calls_imbalance": imbalance(calls),
        "server_cpu_seconds_per_master": [round(c, 3) for c in cpu],
        "server_cpu_utilisation_per_master": [round(c / wall, 3) for c in cpu],
        "failed_calls": int(sum(d[f"{command}_failed"] for d in delta)),
        "crossslot_errors": int(sum(d["crossslot"] for d in delta)),
        "wall_seconds": round(wall, 3),
    }


def _cluster_layout(node: redis.Redis, nodes: list[redis.Redis]) -> list[tuple[int, int, str]]:
    """(start, end, node index) of every slot range, from CLUSTER SLOTS."""
    ports = [n.connection_pool.connection_kwargs["port"] for n in nodes]
    ranges = []
    for start, end, primary, *_ in node.execute_command("CLUSTER SLOTS"):
        ranges.append((int(start), int(end), str(ports.index(int(primary[1])))))
    return sorted(ranges)


def run(ctx: BenchContext) -> dict[str, Any]:
    plan = PLANS.get(ctx.profile.name, PLANS["quick"])
    prefix = ctx.session_prefix("cluster")
    channel = f"{prefix}-updates"
    state = state_json(STATE_BYTES)
    clients_max = max(plan.clients)
    check = bucket_slot_check()
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    with ExitStack() as stack:
        single = stack.enter_context(ThrowawayRedis(cpus=ctx.server_cpus))
        cluster = stack.enter_context(ThrowawayRedisCluster(MASTERS, cpus=ctx.server_cpus))
        targets = [
            Target("single", single.url, False, [single.client(socket_timeout=30)]),
            Target("cluster", cluster.url, True,
                   [node.client(socket_timeout=30) for node in cluster.nodes]),
        ]
        for target in targets:
            for node in target.nodes:
                stack.callback(node.close)
            _prepare(stack, target, clients_max, state, prefix)
        layout = _cluster_layout(targets[1].nodes[0], targets[1].nodes)
        keys_per_master = [int(n.dbsize()) for n in targets[1].nodes]
        for target in targets:
            runs[target.name] = {}
        # interleaved: each (clients, op) on the single node then on the
        # cluster, so the two see the same machine
        for clients in plan.clients:
            for op in OPS:
                for target in targets:
                    runs[target.name].setdefault(str(clients), {})[op] = _run_clients(
                        target, op, clients, plan.seconds, channel)
    bucket_owner = buckets_per_master(check["bucket_slots"], layout)
    slots_owned = {str(i): 0 for i in range(MASTERS)}
    for start, end, owner in layout:
        slots_owned[owner] += end - start + 1
    placement = ctx.placement
    ceiling = {str(n): {"single": cpu_ceiling(n, 1, os.cpu_count() or 1,
                                               *_cpu_counts(placement)),
                        "cluster": cpu_ceiling(n, MASTERS, os.cpu_count() or 1,
                                               *_cpu_counts(placement))}
               for n in plan.clients}
    crossslot = sum(r["crossslot_errors"] for t in runs.values() for by_op in t.values()
                    for r in by_op.values())
    return {
        "masters": MASTERS,
        "client_processes": list(plan.clients),
        "seconds_per_run": plan.seconds,
        "sessions_per_client": SESSIONS_PER_CLIENT,
        "state_bytes": STATE_BYTES,
        "runs": runs,
        "ratios": _ratios(runs, plan.clients),
        "slots": {
            "buckets": BUCKETS,
            "slots": SLOTS,
            "distinct_bucket_slots": check["distinct_slots"],
            "buckets_crossing_slots": check["buckets_crossing_slots"],
            "crossslot_errors": crossslot,
            "slots_per_master": [slots_owned[str(i)] for i in range(MASTERS)],
            "buckets_per_master": [bucket_owner[str(i)] for i in range(MASTERS)],
            "buckets_imbalance": imbalance(list(bucket_owner.values())),
            "keys_per_master": keys_per_master,
            "keys_imbalance": imbalance(keys_per_master),
        },
        "per_shard_capacity": _per_shard(runs, plan.clients),
        "cpu": {"cores": os.cpu_count(),
                "placement": None if placement is None else {
                    "servers": sorted(placement.server_cpus),
                    "clients": sorted(placement.client_cpus)},
                "ceiling_by_client_processes": ceiling},
        "notes": "ratios op/floor = the floor's ops/s over the op's (time per call, op over "
                 "floor); cluster/single and ops_at_1_process are ops/s over ops/s. "
                 "each run: N forked client processes in a closed loop for seconds_per_run; "
                 "ops_per_second = sum of each process's rate; server_usec_per_call and "
                 "calls_per_master from INFO commandstats deltas of every node; server CPU = the "
                 "main thread's user+sys (INFO cpu). All servers share the server CPUs of the "
                 "placement and all client processes the client CPUs: on a small machine the "
                 "cluster's three masters share one core, so cluster/single shows the cost of "
                 "cluster routing, not the gain of three machines; per_shard_capacity is the "
                 "figure to extrapolate (ops per server CPU-second).",
    }


def _cpu_counts(placement: Any) -> tuple[int | None, int | None]:
    if placement is None:
        return None, None
    return len(placement.client_cpus), len(placement.server_cpus)


def _ratios(runs: dict[str, dict[str, dict[str, Any]]], clients: Sequence[int]
            ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, by_clients in runs.items():
        for op, floor in FLOOR_OF.items():
            out[f"{name}.{op}/{floor}"] = {
                str(n): ratio(by_clients[str(n)][floor]["ops_per_second"],
                              by_clients[str(n)][op]["ops_per_second"]) for n in clients}
            out[f"{name}.{op}.server_usec/{floor}.server_usec"] = {
                str(n): ratio(by_clients[str(n)][op]["server_usec_per_call"],
                              by_clients[str(n)][floor]["server_usec_per_call"])
                for n in clients}
        for op in OPS:
            first = by_clients[str(clients[0])][op]["ops_per_second"]
            out[f"{name}.{op}.ops/ops_at_{clients[0]}_process"] = {
                str(n): ratio(by_clients[str(n)][op]["ops_per_second"], first) for n in clients}
    for op in OPS:
        out[f"cluster/single.{op}.ops"] = {
            str(n): ratio(runs["cluster"][str(n)][op]["ops_per_second"],
                          runs["single"][str(n)][op]["ops_per_second"]) for n in clients}
    return out


def _per_shard(runs: dict[str, dict[str, dict[str, Any]]], clients: Sequence[int]
               ) -> dict[str, Any]:
    """One node's capacity for get and update, from every single-node run of
    the op pooled (ops, wall time and server CPU summed over the client
    counts: one noisy run weighs less), with the best rate measured beside it."""
    out: dict[str, Any] = {}
    for op in ("get", "update"):
        by_n = [runs["single"][str(n)][op] for n in clients]
        ops = sum(r["ops"] for r in by_n)
        calls = sum(r["calls_per_master"][0] for r in by_n)
        usec = sum(r["server_usec_per_call"] * r["calls_per_master"][0] for r in by_n)
        best = max(by_n, key=lambda r: r["ops_per_second"])
        out[op] = {**shard_capacity(ops, sum(r["wall_seconds"] for r in by_n),
                                    sum(r["server_cpu_seconds_per_master"][0] for r in by_n),
                                    usec / calls if calls else 0.0),
                   "best_ops_per_second": best["ops_per_second"],
                   "client_processes": best["client_processes"]}
    out["notes"] = ("pooled over the single-node runs of each op; ops_per_server_cpu_second: "
                    "what one Redis core serves when busy (the capacity of one shard's primary, "
                    "whose commands run on one thread); a server_cpu_utilisation well below 1 "
                    "means the clients, not the server, set the measured rate")
    return out
