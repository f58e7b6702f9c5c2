"""Contention: many writers on one hot session, each in a CAS retry loop.

Every writer does what a well-behaved client does: read the session,
change its state (increment a counter), write it back with the version it
read, and on ConcurrencyError read again and retry.  Two invariants are
checked afterwards, so the figure can never hide a lost update: the final
version is the number of successful updates + 1, and the final counter
equals the number of successful updates.

``threads`` runs the writers as threads of this process (the GIL
serialises their Python work between round trips, which lowers the real
concurrency); ``processes`` runs each in a process of its own, as separate
Lambda instances would be.
"""
from __future__ import annotations

import json
import time
from typing import Any, cast

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.errors import ConcurrencyError
from chalicelib.domain.session import Session
from sessionsync.bench.context import STATE_BYTES, BenchContext, state_document
from sessionsync.bench.harness import SectionRedis, in_processes, in_threads

#: outbox entries a writer leaves before it acks them (as the producer would)
ACK_EVERY = 200


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
            if len(acks) >= ACK_EVERY:
                store.outbox_ack(acks)
                acks.clear()
        if acks:
            store.outbox_ack(acks)
    finally:
        client.close()
    return {"successes": successes, "conflicts": conflicts}


def run(ctx: BenchContext) -> dict[str, Any]:
    writers, seconds = ctx.profile.contention_writers, ctx.profile.contention_seconds
    doc = state_document(STATE_BYTES)
    doc["counter"] = 0
    modes: dict[str, Any] = {}
    with SectionRedis(ctx, "hot") as r:
        for mode in ctx.profile.contention_modes:
            session_id = r.create(mode, json.dumps(doc, separators=(",", ":")), ack=True)

            def writer(released: float, session_id: str = session_id) -> dict[str, int]:
                return cas_loop(ctx.redis_url, session_id, released + seconds)

            if mode == "threads":
                results, elapsed = in_threads(writers, lambda _, released: writer(released),
                                              timeout=seconds + 60, name="contention")
            else:
                results, elapsed = in_processes(writers, lambda _: writer, timeout=seconds + 60)
            successes = sum(w["successes"] for w in results)
            conflicts = sum(w["conflicts"] for w in results)
            final = cast(Session, r.store.get(session_id))
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
    return {
        "state_bytes": STATE_BYTES,
        "modes": modes,
        "notes": "each attempt = GET + json decode/encode + CAS update script; conflict_rate = "
                 "conflicts / attempts. The Node design lost 85-90% of acknowledged updates with "
                 "20 writers; here lost_updates must be 0.",
    }
