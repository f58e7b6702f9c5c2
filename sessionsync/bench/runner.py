"""Run the chosen benchmark sections and write the results and the chart."""
from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sessionsync.bench.context import PROFILES, BenchContext, Placement
from sessionsync.bench.harness import quiet_telemetry

# Cheap and noise-sensitive sections first, while the machine is quietest;
# the heavy loads (a million sessions, 16 writer processes) last.
SECTION_ORDER = ("store", "cas_split", "handler", "coldstart", "consumer", "consumer_floor", "memory",
                 "memory_levers", "relay", "scale", "cluster", "replication", "contention",
                 "consumers_parallel", "http_load", "persistence")
SCHEMA_VERSION = 1


def _section(name: str) -> Callable[[BenchContext], dict[str, Any]]:
    from importlib import import_module
    module = {"store": "store_ops"}.get(name, name)
    return import_module(f"sessionsync.bench.{module}").run


@dataclass(frozen=True)
class BenchOptions:
    profile: str = "full"
    output_dir: Path = Path("bench-results")
    sections: Sequence[str] = SECTION_ORDER
    redis_url: str | None = None           # None: start a redis-server of our own
    database_url: str | None = None        # None: consumer.DEFAULT_DATABASE_URL
    aws_endpoint_url: str | None = None    # LocalStack, for the SQS figures
    chart: bool = True
    pin_cpus: bool = True                  # see context.Placement
    lambda_runtime: str | None = None      # the cold start's packages; None: the template's


def run_bench(options: BenchOptions, log: Callable[[str], None] = print,
              progress: Callable[[str], None] = lambda _: None
              ) -> tuple[dict[str, Any], Path, Path | None]:
    """Run, write ``bench-<profile>-<time>.json`` (+ ``.png``); return both paths.

    ``log``: notes and warnings; ``progress``: which section runs.  A
    section that fails is recorded with its error and the others still
    run; the caller decides the exit code from ``results["errors"]``.
    """
    from chalicelib import runtime
    from sessionsync.bench import machine, targets
    from sessionsync.bench.redis_server import ThrowawayRedis

    unknown = [s for s in options.sections if s not in SECTION_ORDER]
    if unknown:
        raise ValueError(f"unknown section(s) {unknown}; choose from {', '.join(SECTION_ORDER)}")
    sections = [s for s in SECTION_ORDER if s in options.sections]
    profile = PROFILES[options.profile]
    load = machine.load_average()
    cpus = os.cpu_count() or 1
    if load and load[0] > cpus / 2:
        log(f"warning: the machine is busy (load {load[0]} on {cpus} CPUs): latencies will be "
            "noisier and throughput lower than on a quiet machine")
    started = time.perf_counter()
    placement = Placement.split() if options.pin_cpus else None
    with ExitStack() as stack:
        if placement is not None:
            previous = os.sched_getaffinity(0)
            os.sched_setaffinity(0, placement.client_cpus)
            stack.callback(os.sched_setaffinity, 0, previous)
            log(f"CPUs: redis-servers on {sorted(placement.server_cpus)}, "
                f"the bench on {sorted(placement.client_cpus)}")
        if options.redis_url:
            redis_url, own = options.redis_url, False
        else:
            server = stack.enter_context(ThrowawayRedis(
                cpus=placement.server_cpus if placement else None))
            redis_url, own = server.url, True
            log(f"redis-server of the bench's own on {server.url} (pid {server.proc.pid})")  # type: ignore[union-attr]
        ctx = BenchContext(profile=profile, redis_url=redis_url, redis_is_own=own,
                           database_url=options.database_url,
                           aws_endpoint_url=options.aws_endpoint_url, log=log,
                           placement=placement, lambda_runtime=options.lambda_runtime)
        results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "profile": profile.name,
            "machine": machine.describe(_redis_server_info(redis_url)),
            "settings": {"redis": "own throwaway server" if own else "given --redis-url",
                         "cpu_placement": None if placement is None else {
                             "redis_servers": sorted(placement.server_cpus),
                             "bench": sorted(placement.client_cpus)},
                         "sections": sections, "iterations": profile.__dict__,
                         "lambda_runtime": options.lambda_runtime or "the template's"},
            "sections": {},
        }
        quiet_telemetry(stack)
        stack.callback(runtime.reset)
        for number, name in enumerate(sections, 1):
            progress(f"[{number}/{len(sections)}] {name} ({round(time.perf_counter() - started)} s "
                     "so far)")
            t0 = time.perf_counter()
            try:
                data = _section(name)(ctx)
            except Exception as exc:
                logging.getLogger("sessionsync.bench").debug("section failed", exc_info=True)
                data = {"error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(limit=8)}
                log(f"{name} FAILED: {data['error']}")
            data["elapsed_seconds"] = round(time.perf_counter() - t0, 2)
            results["sections"][name] = data
    results["targets"] = targets.evaluate(results["sections"])
    results["errors"] = sorted(n for n, d in results["sections"].items() if "error" in d)
    results["machine"]["load_average_at_end"] = machine.load_average()
    results["duration_seconds"] = round(time.perf_counter() - started, 1)

    options.output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{profile.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    json_path = options.output_dir / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    png_path = None
    if options.chart:
        from sessionsync.bench import chart
        png_path = chart.render(results, options.output_dir / f"{stem}.png")
    return results, json_path, png_path


def _redis_server_info(url: str) -> dict[str, Any]:
    import redis
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        info = client.info("server")
        return {k: info.get(k) for k in ("redis_version", "redis_mode", "os", "arch_bits",
                                         "multiplexing_api", "io_threads_active")}
    finally:
        client.close()


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The human summary the CLI prints: every target, met or not."""
    lines = [f"sessionsync bench ({results['profile']}) in {results['duration_seconds']} s "
             f"on {results['machine']['cpu_model']} x{results['machine']['cpu_count']}"]
    for check in results["targets"]:
        mark = {True: "met   ", False: "MISSED", None: "info  "}[check["met"]]
        limit = "" if check["limit"] is None else f" (limit {check['limit']} {check['unit']})"
        lines.append(f"  [{mark}] {check['target']}: {check['measured']} {check['unit']}{limit}")
    for name in results["errors"]:
        lines.append(f"  [ERROR ] {name}: {results['sections'][name]['error']}")
    return lines
