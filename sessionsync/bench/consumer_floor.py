"""The consumer against its floor: raw psycopg writing the same rows.

For batches of 1, 10 and 100 change events, in the same run and against
the same database, four writers persist the same rows (each its own
sessions, so every row is new to each of them):

* ``consumer``: the Lambda entry point (``app.persist_changes``) given
  SQS-shaped events, exactly as ``sessionsync.bench.consumer`` measures it:
  parsing the bodies, ``Database.apply_events`` (one APPLY_SQL statement
  per batch) and the consumer's bookkeeping are inside the figure;
* ``unnest``: the consumer's own statement (``database.APPLY_SQL``, the
  batch as parallel arrays, autocommit) run by raw psycopg on rows
  prepared up front: the floor of the consumer's way of writing;
* ``executemany``: psycopg's ``executemany`` of the two statements the
  consumer's one statement amounts to (``sync_events`` insert, skipping a
  key already there; ``sync_sessions`` upsert of each session's highest
  version of the batch, only forward), then a commit: one transaction per
  batch, as the consumer's.  psycopg sends an executemany in pipeline mode:
  one round trip per statement, not per row;
* ``copy``: ``COPY`` of the batch into a temporary staging table, the same
  two statements as ``INSERT ... SELECT`` from it, then a commit (what a
  COPY-based consumer path would run: COPY alone cannot skip a duplicate
  or move a session only forward).

The floors get their rows ready-made (typed tuples); the consumer gets SQS
records, as it does deployed: what it costs beyond writing the rows is its
own work.  ``ratios`` divide the consumer's events/s by each writer's, and
by the faster of executemany and COPY (``consumer/floor``, the figure the
target reads); ``consumer/unnest`` tells how much of the consumer's time
goes to parsing and bookkeeping rather than to PostgreSQL.  The writers
take turns in rounds, so that a busy neighbour slows all of them, and each
ratio is the median of the ratios within a round.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from chalicelib import runtime
from chalicelib.adapters.postgres.database import APPLY_SQL, apply_parameters
from chalicelib.domain.events import DELETED, ChangeEvent, parse_event
from sessionsync.bench.consumer import VERSIONS_PER_SESSION, event_bodies, install_consumer
from sessionsync.bench.context import STATE_BYTES, BenchContext
from sessionsync.bench.events import LambdaContext, sqs_batches
from sessionsync.bench.harness import delete_rows, verify_persisted
from sessionsync.bench.stats import summarize_ns

BATCH_SIZES = (1, 10, 100)
WRITERS = ("consumer", "unnest", "executemany", "copy")
#: the floors the target reads: raw psycopg's two ways of writing many rows
FLOORS = ("executemany", "copy")
#: rounds (each writer once per batch size per round) and events per round
#: at batch >= 10 (batch 1 gets a fifth: one round trip per event is slow)
#: (many short rounds: on a busy machine the load changes within seconds)
SIZES = {"full": (8, 2_500), "quick": (4, 1_000), "smoke": (1, 500)}

EVENT_INSERT_SQL = """
INSERT INTO sync_events (session_id, version, event_type, state, occurred_at)
VALUES (%s, %s, %s, %s::jsonb, %s::timestamptz)
ON CONFLICT (session_id, version) DO NOTHING
"""
SESSION_UPSERT_SQL = f"""
INSERT INTO sync_sessions AS s
    (session_id, version, state, deleted, created_at, updated_at, ttl_seconds)
VALUES (%s, %s, %s::jsonb, %s = '{DELETED}', %s::timestamptz, %s::timestamptz, %s)
ON CONFLICT (session_id) DO UPDATE
    SET version = EXCLUDED.version, state = EXCLUDED.state, deleted = EXCLUDED.deleted,
        updated_at = EXCLUDED.updated_at, ttl_seconds = EXCLUDED.ttl_seconds,
        persisted_at = now()
    WHERE s.version < EXCLUDED.version
"""
STAGE_SQL = """
CREATE TEMPORARY TABLE IF NOT EXISTS bench_stage (
    session_id text, version bigint, event_type text, state jsonb,
    created_at timestamptz, occurred_at timestamptz, ttl_seconds int
) ON COMMIT DELETE ROWS
"""
COPY_SQL = ("COPY bench_stage (session_id, version, event_type, state, created_at, occurred_at, "
            "ttl_seconds) FROM STDIN")
STAGED_EVENTS_SQL = """
INSERT INTO sync_events (session_id, version, event_type, state, occurred_at)
SELECT session_id, version, event_type, state, occurred_at FROM bench_stage
ORDER BY session_id, version
ON CONFLICT (session_id, version) DO NOTHING
"""
STAGED_SESSIONS_SQL = f"""
INSERT INTO sync_sessions AS s
    (session_id, version, state, deleted, created_at, updated_at, ttl_seconds)
SELECT DISTINCT ON (session_id) session_id, version, state, event_type = '{DELETED}',
       created_at, occurred_at, ttl_seconds
FROM bench_stage ORDER BY session_id, version DESC
ON CONFLICT (session_id) DO UPDATE
    SET version = EXCLUDED.version, state = EXCLUDED.state, deleted = EXCLUDED.deleted,
        updated_at = EXCLUDED.updated_at, ttl_seconds = EXCLUDED.ttl_seconds,
        persisted_at = now()
    WHERE s.version < EXCLUDED.version
"""


def latest_per_session(events: Sequence[ChangeEvent]) -> list[ChangeEvent]:
    """Each session's highest version in ``events``, in session id order
    (the order the consumer's upsert takes its row locks in)."""
    latest: dict[str, ChangeEvent] = {}
    for event in events:
        held = latest.get(event.session_id)
        if held is None or event.version > held.version:
            latest[event.session_id] = event
    return [latest[sid] for sid in sorted(latest)]


def write_unnest(conn: Any, events: Sequence[ChangeEvent]) -> None:
    """One statement in autocommit (one transaction), as the consumer runs it."""
    conn.execute(APPLY_SQL, apply_parameters(events)).fetchone()


def write_executemany(conn: Any, events: Sequence[ChangeEvent]) -> None:
    """One transaction: the events, then the sessions, by executemany."""
    with conn.cursor() as cur:
        cur.executemany(EVENT_INSERT_SQL, [
            (e.session_id, e.version, e.event_type, e.state_json, e.occurred_at)
            for e in sorted(events, key=lambda e: (e.session_id, e.version))])
        cur.executemany(SESSION_UPSERT_SQL, [
            (e.session_id, e.version, e.state_json, e.event_type, e.created_at, e.occurred_at,
             e.ttl_seconds) for e in latest_per_session(events)])
    conn.commit()


def write_copy(conn: Any, events: Sequence[ChangeEvent]) -> None:
    """One transaction: COPY into the staging table, two INSERT ... SELECT."""
    with conn.cursor() as cur:
        with cur.copy(COPY_SQL) as copy:
            for e in events:
                copy.write_row((e.session_id, e.version, e.event_type, e.state_json,
                                e.created_at, e.occurred_at, e.ttl_seconds))
        cur.execute(STAGED_EVENTS_SQL)
        cur.execute(STAGED_SESSIONS_SQL)
    conn.commit()


def _timed(batches: Sequence[Any], write: Callable[[Any], None]) -> tuple[float, list[int]]:
    clock = time.perf_counter_ns
    durations = []
    started = clock()
    for batch in batches:
        t0 = clock()
        write(batch)
        durations.append(clock() - t0)
    return (clock() - started) / 1e9, durations


def _one(writer: str, ctx: BenchContext, handler: Any, conn: Any, auto: Any, batch: int,
         count: int, tag: str) -> tuple[float, list[int]]:
    """Persist ``count`` fresh events in batches of ``batch`` with ``writer``."""
    prefix = f"{ctx.session_prefix('floor')}-{writer}-{tag}"
    bodies = event_bodies(prefix, count)
    chunks = [bodies[i:i + batch] for i in range(0, len(bodies), batch)]
    try:
        if writer == "consumer":
            context = LambdaContext(timeout_ms=30_000)
            events = sqs_batches(bodies, batch)

            def call(event: Any) -> None:
                response = handler(event, context)
                if response["batchItemFailures"]:
                    raise AssertionError(f"batch item failures: {response['batchItemFailures'][:3]}")
            seconds, durations = _timed(events, call)
        else:
            rows = [[parse_event(body) for _, body in chunk] for chunk in chunks]
            if writer == "unnest":
                seconds, durations = _timed(rows, lambda b: write_unnest(auto, b))
            else:
                write = write_executemany if writer == "executemany" else write_copy
                seconds, durations = _timed(rows, lambda b: write(conn, b))
        verify_persisted(conn, prefix, bodies)
    except BaseException:
        conn.rollback()
        raise
    finally:
        delete_rows(conn, prefix)
    return seconds, durations


def summarize_writer(count: int, seconds: Sequence[float], durations: Sequence[int]
                     ) -> dict[str, Any]:
    """A writer's figures at one batch size over its rounds: events/s of each
    round, their median (the figure compared), and the batch latencies."""
    per_round = [round(count / s, 1) for s in seconds]
    return {"events_per_round": count, "rounds": len(seconds),
            "events_per_second_by_round": per_round,
            "events_per_second": round(statistics.median(per_round), 1),
            "batch_latency_ms": summarize_ns(list(durations), "ms")}


def floor_ratios(writers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The consumer's events/s over each writer's, and over the faster floor's
    (``consumer/floor``: executemany or COPY, whichever was faster in that
    round).  Each is the median over rounds of the ratio within a round:
    the writers of a round ran back to back, under the same load from the
    rest of the machine.  ``consumer/unnest`` is the share of the
    consumer's time spent writing: the rest is parsing the records and its
    bookkeeping."""
    consumer = writers["consumer"]["events_per_second_by_round"]
    by_round = {w: writers[w]["events_per_second_by_round"] for w in ("unnest", *FLOORS)}
    rounds = range(len(consumer))
    out: dict[str, Any] = {
        f"consumer/{w}": round(statistics.median(consumer[r] / by_round[w][r] for r in rounds), 3)
        for w in by_round}
    out["consumer/floor"] = round(statistics.median(
        consumer[r] / max(by_round[f][r] for f in FLOORS) for r in rounds), 3)
    out["floor_is"] = max(FLOORS, key=lambda f: writers[f]["events_per_second"])
    return out


def run(ctx: BenchContext) -> dict[str, Any]:
    import psycopg

    rounds, per_round = SIZES.get(ctx.profile.name, SIZES["quick"])
    dsn = ctx.migrated_dsn()
    handler = install_consumer(dsn, ctx.redis_url, ctx.aws_endpoint_url or "http://127.0.0.1:4566")
    by_batch: list[dict[str, Any]] = []
    try:
        with psycopg.connect(dsn) as conn, psycopg.connect(dsn, autocommit=True) as auto:
            conn.execute(STAGE_SQL)
            conn.commit()
            for writer in WRITERS:  # warm up: connections, imports, plans
                _one(writer, ctx, handler, conn, auto, 10, 10 * VERSIONS_PER_SESSION, "warm")
            for batch in BATCH_SIZES:
                unit = batch * VERSIONS_PER_SESSION
                count = per_round // 5 if batch == 1 else per_round
                count = max(unit, count - count % unit)
                seconds: dict[str, list[float]] = {w: [] for w in WRITERS}
                durations: dict[str, list[int]] = {w: [] for w in WRITERS}
                for r in range(rounds):
                    # a different writer first in each round
                    for writer in WRITERS[r % len(WRITERS):] + WRITERS[:r % len(WRITERS)]:
                        s, d = _one(writer, ctx, handler, conn, auto, batch, count, f"b{batch}r{r}")
                        seconds[writer].append(s)
                        durations[writer].extend(d)
                writers = {w: summarize_writer(count, seconds[w], durations[w]) for w in WRITERS}
                by_batch.append({"batch_size": batch, "writers": writers,
                                 "ratios": floor_ratios(writers)})
    finally:
        runtime.reset()
    return {
        "database": dsn.rsplit("/", 1)[-1],
        "state_bytes": STATE_BYTES,
        "by_batch": by_batch,
        "notes": "events/s = events / wall time of the writes, median over rounds (ratios: median "
                 "of the ratios within a round); one process, "
                 "one connection each, one transaction per batch for every writer. "
                 "consumer/floor = consumer events/s / the faster floor's (executemany in pipeline "
                 "mode, or COPY to a staging table + INSERT ... SELECT); consumer/unnest = "
                 "consumer events/s / its own statement run by raw psycopg on ready rows.",
    }
