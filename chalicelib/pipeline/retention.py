"""Audit retention: purge ``sync_events`` rows older than
SYNC_EVENTS_RETENTION_DAYS, in bounded batches.

Run by the ``purge_sync_events`` schedule (hourly, app.py), by ``sessionsync
serve``'s pipeline threads, and by hand (``sessionsync retention``).  Which
rows may go, and why a session's latest row and every row younger than the
retention stay: ``chalicelib.adapters.postgres.retention``; why batches
rather than dropped partitions: docs/decisions/audit-retention.md.

Each batch is one short transaction (the lock, the cursor, one delete
statement, the cursor saved), so the consumer's writes are never held up
for long, and a run stops between two batches when its time budget is
spent.  The next run resumes where it stopped (``sync_events_purge_cursor``),
so a table whose oldest rows are mostly kept (sessions that stopped
changing long ago) is still got through, one budget at a time; a run that
reaches the end clears the cursor, and the next starts over from the oldest
row.  A dry run starts from the oldest row and leaves the cursor alone.
Two runs at once take turns batch by batch, or the second stops
(``chalicelib.adapters.postgres.retention``: why the lock is a
transaction's, for RDS Proxy and PgBouncer).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from chalicelib.adapters.postgres import retention as sql
from chalicelib.adapters.postgres.database import Database
from chalicelib.constants import DEFAULT_RETENTION_BATCH
from chalicelib.observability import metrics

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("sessionsync.retention")

# How often the purge runs (app.py's schedule, sessionsync serve's thread).
PURGE_INTERVAL_SECONDS = 3600


@dataclass
class PurgeReport:
    """What one run did (or, ``dry_run``, would do)."""

    days: int | None
    cutoff: datetime | None = None
    dry_run: bool = False
    #: statements run, one per batch
    batches: int = 0
    #: rows looked at (persisted before the cutoff)
    scanned: int = 0
    #: rows deleted; in a dry run, the rows that would be
    purged: int = 0
    #: the run reached the last row before the cutoff (not cut short by the budget)
    complete: bool = False
    #: another purge held the lock: this one stopped (before its first batch:
    #: it did nothing)
    busy: bool = False

    @property
    def kept(self) -> int:
        """Rows before the cutoff that stay: their sessions' latest."""
        return self.scanned - self.purged

    def to_dict(self) -> dict[str, object]:
        return {"days": self.days, "cutoff": self.cutoff.isoformat() if self.cutoff else None,
                "dry_run": self.dry_run, "batches": self.batches, "scanned": self.scanned,
                "purged": self.purged, "kept": self.kept, "complete": self.complete, "busy": self.busy}


def purge_events(database: Database, days: int | None, *, batch_size: int = DEFAULT_RETENTION_BATCH,
                 dry_run: bool = False, budget_seconds: float | None = None,
                 now: datetime | None = None, clock: Callable[[], float] = time.monotonic,
                 on_batch: Callable[[PurgeReport], None] | None = None) -> PurgeReport:
    """Delete the ``sync_events`` rows persisted more than ``days`` days
    before ``now`` that a newer version of their session replaced, at most
    ``batch_size`` rows looked at per statement, until none is left or
    ``budget_seconds`` is spent (checked between batches).  ``days`` None
    (the setting unset) does nothing.  ``on_batch`` sees the running report
    after each batch (progress output).

    Raises PersistenceError (RetryablePersistenceError when PostgreSQL is
    unreachable), ConfigurationError, ServiceUnavailable (the DSN).
    """
    report = PurgeReport(days, dry_run=dry_run)
    if days is None:
        report.complete = True
        return report
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    report.cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    deadline = None if budget_seconds is None else clock() + budget_seconds
    try:
        with sql.translated_errors(), database.held_connection() as conn:
            _batches(conn, report, batch_size, deadline, clock, on_batch)
        if report.busy:
            log.info("another purge is running; this one stops", extra={"batches": report.batches})
    finally:
        if not dry_run and report.purged:
            metrics.emit({"PurgedEvents": report.purged})
        log.info("sync_events purge", extra=report.to_dict())
    return report


def _batches(conn: psycopg.Connection, report: PurgeReport, batch_size: int, deadline: float | None,
             clock: Callable[[], float], on_batch: Callable[[PurgeReport], None] | None) -> None:
    assert report.cutoff is not None
    cursor: sql.Cursor | None = sql.START
    while cursor is not None:
        if deadline is not None and clock() >= deadline:
            return  # the last batch saved where the next run starts
        with conn.transaction():
            if not sql.try_lock(conn):
                report.busy = True
                return
            if not report.dry_run:
                saved = sql.saved_cursor(conn)
                if report.batches == 0:
                    cursor = saved or sql.START
                elif saved is None:
                    report.complete = True  # another purge reached the end meanwhile
                    return
                elif _after(saved, cursor):
                    cursor = saved  # another purge's batches moved it on since ours
            batch = sql.run_batch(conn, cutoff=report.cutoff, after=cursor, limit=batch_size,
                                  dry_run=report.dry_run)
            # a short batch was the last one: no need for an empty statement to say so
            cursor = batch.cursor if batch.scanned == batch_size else None
            if not report.dry_run:
                sql.save_cursor(conn, cursor)
        report.batches += 1
        report.scanned += batch.scanned
        report.purged += batch.purged
        if on_batch is not None:
            on_batch(report)
    report.complete = True


def _after(a: sql.Cursor, b: sql.Cursor) -> bool:
    return (a.persisted_at, a.session_id, a.version) > (b.persisted_at, b.session_id, b.version)


def run(database: Database, days: int, stop: threading.Event, *,
        interval: float = PURGE_INTERVAL_SECONDS, budget_seconds: float = 300.0) -> None:
    """Purge now, then every ``interval`` seconds until ``stop`` is set (the
    schedule's stand-in under ``sessionsync serve``).  Never raises: a
    failed run is logged and the next one tries again."""
    while not stop.is_set():
        try:
            purge_events(database, days, budget_seconds=budget_seconds)
        except Exception:  # the thread must survive anything; the next run retries
            log.exception("sync_events purge failed; the next run retries")
        stop.wait(interval)
