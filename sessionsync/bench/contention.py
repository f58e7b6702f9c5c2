"""Contention: many writers on one hot session, each in a CAS retry loop.

Every writer does what a well-behaved client does: read the session,
change its state (increment a counter), write it back with the version it
read, and on ConcurrencyError read again and retry.  Two invariants are
checked afterwards, so the figure can never hide a lost update: the final
version is the number of successful updates + 1, and the final counter
equals the number of successful updates.

``threads`` runs the writers as threads of this process (the GIL
serialises their Python work between round trips, which lowers the real
concurrency); ``processes`` runs each in its own interpreter, as separate
Lambda instances would be.  Both are reported when the profile asks.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any, cast

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.errors import ConcurrencyError
from chalicelib.domain.session import Session
from sessionsync.bench.context import STATE_BYTES, BenchContext, delete_session_keys, state_document


def cas_loop(redis_url: str, session_id: str, stop_at: float) -> dict[str, int]:
    """One writer until ``stop_at`` (time.monotonic): successes and conflicts."""
    client = connect_redis(Settings(redis_url=redis_url))
    store = SessionStore(client, channel=f"{session_id}-updates")  # not the app's channel
    successes = conflicts = 0
    acks: list[str] = []
    try:
        while time.monotonic() < stop_at:
            session = cast(Session, store.get(session_id))  # the writers never delete it
            doc = json.loads(session.state_json)
            doc["counter"] += 1
            try:
                result = store.update(session_id, json.dumps(doc, separators=(",", ":")),
                                      session.version)
            except ConcurrencyError:
                conflicts += 1
                continue
            successes += 1
            acks.append(result.event_id)
            if len(acks) >= 200:  # keep the outbox from growing (the producer would ack)
                store.outbox_ack(acks)
                acks.clear()
        if acks:
            store.outbox_ack(acks)
    finally:
        client.close()
    return {"successes": successes, "conflicts": conflicts}


def child_main() -> None:
    """Entry of one writer process: ``python -c ...child_main()`` URL ID.

    Connects, says ``ready``, waits for ``go <seconds>`` on stdin (so that
    interpreter start-up is outside the window), runs, prints its counts.
    """
    import redis

    url, session_id = sys.argv[1], sys.argv[2]
    redis.Redis.from_url(url).ping()
    print("ready", flush=True)
    seconds = float(sys.stdin.readline().split()[1])
    print(json.dumps(cas_loop(url, session_id, time.monotonic() + seconds)), flush=True)


def _run_threads(url: str, session_id: str, writers: int, seconds: float) -> tuple[list, float]:
    results: list[dict[str, int]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(writers + 1)
    stop_at: list[float] = []

    def writer() -> None:
        barrier.wait()
        outcome = cas_loop(url, session_id, stop_at[0])
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=writer, daemon=True) for _ in range(writers)]
    for t in threads:
        t.start()
    stop_at.append(time.monotonic() + seconds)
    started = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    return results, time.perf_counter() - started


def _run_processes(url: str, session_id: str, writers: int, seconds: float) -> tuple[list, float]:
    code = "from sessionsync.bench.contention import child_main; child_main()"
    procs: list[Any] = [subprocess.Popen([sys.executable, "-c", code, url, session_id], text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                        for _ in range(writers)]  # Any: both pipes are set (PIPE)
    try:
        for proc in procs:
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a contention writer process failed to start")
        started = time.perf_counter()
        for proc in procs:
            proc.stdin.write(f"go {seconds}\n")
            proc.stdin.flush()
        results = [json.loads(proc.stdout.readline()) for proc in procs]
        elapsed = time.perf_counter() - started
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return results, elapsed


def run(ctx: BenchContext) -> dict[str, Any]:
    writers = ctx.profile.contention_writers
    seconds = ctx.profile.contention_seconds
    client = connect_redis(Settings(redis_url=ctx.redis_url))
    store = SessionStore(client, channel=f"{ctx.session_prefix('hot')}-updates")
    doc = state_document(STATE_BYTES)
    doc["counter"] = 0
    modes: dict[str, Any] = {}
    used: list[str] = []
    try:
        for mode in ctx.profile.contention_modes:
            session_id = f"{ctx.session_prefix('hot')}-{mode}"
            used.append(session_id)
            created = store.create(session_id, json.dumps(doc, separators=(",", ":")), 3600)
            store.outbox_ack([created.event_id])
            runner = _run_threads if mode == "threads" else _run_processes
            results, elapsed = runner(ctx.redis_url, session_id, writers, seconds)
            successes = sum(r["successes"] for r in results)
            conflicts = sum(r["conflicts"] for r in results)
            final = cast(Session, store.get(session_id))
            final_counter = final.state["counter"]
            modes[mode] = {
                "writers": writers,
                "seconds": round(elapsed, 3),
                "successful_updates": successes,
                "conflicts": conflicts,
                "updates_per_second": round(successes / elapsed, 1),
                "conflict_rate": round(conflicts / max(1, successes + conflicts), 4),
                "attempts_per_success": round((successes + conflicts) / max(1, successes), 3),
                "final_version": final.version,
                "final_counter": final_counter,
                "lost_updates": successes - final_counter,
                "no_lost_update": final.version == successes + 1 and final_counter == successes,
            }
            if not modes[mode]["no_lost_update"]:
                raise AssertionError(f"lost update under contention: {modes[mode]}")
    finally:
        if not ctx.redis_is_own:
            delete_session_keys(client, used)
        client.close()
    return {
        "state_bytes": STATE_BYTES,
        "modes": modes,
        "notes": "each attempt = GET + json decode/encode + CAS update script; conflict_rate = "
                 "conflicts / attempts. The Node design lost 85-90% of acknowledged updates with "
                 "20 writers; here lost_updates must be 0.",
    }
