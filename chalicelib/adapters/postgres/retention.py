"""The purge of old ``sync_events`` rows (SYNC_EVENTS_RETENTION_DAYS): its SQL.

Which rows may go, and why the others must stay
------------------------------------------------

Nothing reads ``sync_events`` to serve a session: recovery, the create
check and the failover repair read ``sync_sessions`` (``LATEST_SQL``).
The rows are the audit trail (history pages, ``sessionsync inspect``), and
the consumer's memory of what it persisted: ``APPLY_SQL`` inserts
``ON CONFLICT (session_id, version) DO NOTHING`` and ``CONFLICTS_SQL``
compares a skipped event with the stored row of its (session, version).
A message whose row is gone is simply inserted again.  So a row is needed:

1. **while a message for its (session, version) can still arrive**: a
   redelivery is then recognised as a duplicate, and a second write under
   the same version (a failover lost the first; see database.py) as a
   ``version_conflict`` for the DLQ, instead of being persisted as if it
   were the first.  A message can arrive up to the main queue's retention
   after it was sent, the DLQ's after that, and a ``sessionsync dlq
   redrive`` sends it once more; ``constants.MIN_RETENTION_DAYS`` is longer
   than all three together, and the age that counts is ``persisted_at``
   (when PostgreSQL took the row, never before its message was sent);
2. **when it is its session's latest** (``version = sync_sessions.version``),
   whatever its age: a failover that lost a session's last write re-issues
   that same version, so this is the row a conflict check compares with
   long after the write, for a session that stopped changing; and it keeps
   every persisted session's history non-empty (``SessionService.history``
   answers 404 for a session with no row and no Redis marker), a deleted
   session's ``session_deleted`` row included.

A row goes when it was persisted before the cutoff and a newer version of
its session is persisted (``version < sync_sessions.version``).  A row whose
session has no ``sync_sessions`` row (none is ever written without one) is
kept.

Concurrency with the consumer (two transactions at once)
--------------------------------------------------------

``sync_sessions.version`` only moves forward (``APPLY_SQL``'s ``WHERE
s.version < EXCLUDED.version``), so a row that is not the latest in the
purge statement's snapshot can never become the latest again; a row that
just became the latest was inserted by a transaction the snapshot does not
see, and a statement cannot delete a row it does not see::

    consumer                              purge (one statement)
                                          snapshot: s at v8; (s, 8) latest: kept
    INSERT (s, 9); s -> 9; COMMIT
                                          deletes (s, <8) old rows only
    next purge run: (s, 8) old and < 9: goes; (s, 9) kept

The purge never waits for the consumer (it deletes only committed rows,
which the consumer never locks), so the two cannot deadlock; a consumer
re-inserting a key the purge is deleting waits for the purge's commit,
then inserts (a redelivery of a purged row, which rule 1 makes
impossible in practice).

Two purges at once (the schedule and the command)
-------------------------------------------------

Each batch is a transaction that takes the purge's advisory lock first,
transaction-scoped (RDS Proxy and PgBouncer run each transaction on
whichever server connection is free: a session-level lock would pin the
connection on the one, and on the other be taken on one server connection
and "released" on another, held for good), reads the cursor, deletes, and
saves the cursor it reached.  So two purges never run a batch at once, and
each batch starts where the last one, of either purge, stopped::

    purge A                                purge B
    [lock; cursor c0; batch; save c1]
                                           [lock: held by A? no; cursor c1;
                                            batch; save c2]
    [lock; cursor c2 (not its own c1);
     batch; save c3]
                                           [lock: A holds it: B stops, busy]

A purge that finds the lock held stops, reporting ``busy``; one whose
next batch finds the cursor cleared stops too: the other reached the end.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg

from chalicelib.adapters.postgres.sqlstate import classify

# pg_try_advisory_lock key of the purge (migrations use ...0001)
PURGE_LOCK_KEY = 0x5E55_1045_E7C0_0006

# One batch: the next ``limit`` rows persisted before the cutoff, in
# sync_events_retention_idx order after the cursor (the last row the
# previous batch looked at), and of those the ones a newer version of their
# session replaced.  ``limit`` bounds the rows a statement reads as well as
# those it deletes, however many old latest rows it keeps.  Returns the rows
# looked at, the rows deleted (or that would be), and the new cursor.
_BATCH_SQL = """
WITH scanned AS (
    SELECT session_id, version, persisted_at
    FROM sync_events
    WHERE persisted_at < %(cutoff)s
      AND (persisted_at, session_id, version) > (%(after_at)s, %(after_session)s, %(after_version)s)
    ORDER BY persisted_at, session_id, version
    LIMIT %(limit)s
), replaced AS (
    SELECT c.session_id, c.version
    FROM scanned c JOIN sync_sessions s ON s.session_id = c.session_id
    WHERE c.version < s.version
){purge}
SELECT (SELECT count(*) FROM scanned), (SELECT count(*) FROM {counted}),
       last.persisted_at, last.session_id, last.version
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT * FROM scanned
                   ORDER BY persisted_at DESC, session_id DESC, version DESC LIMIT 1) AS last ON true
"""
PURGE_BATCH_SQL = _BATCH_SQL.format(purge=""", purged AS (
    DELETE FROM sync_events e USING replaced r
    WHERE e.session_id = r.session_id AND e.version = r.version
    RETURNING 1
)""", counted="purged")
COUNT_BATCH_SQL = _BATCH_SQL.format(purge="", counted="replaced")

# The cursor of a run cut short (sync_events_purge_cursor, one row at most)
READ_CURSOR_SQL = "SELECT persisted_at, session_id, version FROM sync_events_purge_cursor"
SAVE_CURSOR_SQL = """
INSERT INTO sync_events_purge_cursor (id, persisted_at, session_id, version) VALUES (true, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET persisted_at = EXCLUDED.persisted_at, session_id = EXCLUDED.session_id,
                               version = EXCLUDED.version, saved_at = now()
"""
CLEAR_CURSOR_SQL = "DELETE FROM sync_events_purge_cursor"

# transaction-scoped: released when the batch's transaction ends
LOCK_SQL = "SELECT pg_try_advisory_xact_lock(%s)"


@dataclass(frozen=True)
class Cursor:
    """The last row a batch looked at, in sync_events_retention_idx order."""

    persisted_at: datetime
    session_id: str
    version: int


#: before every row
START = Cursor(datetime(1, 1, 1, tzinfo=UTC), "", 0)


@dataclass(frozen=True)
class Batch:
    scanned: int
    #: deleted; in a dry run, the rows that would be
    purged: int
    #: where the next batch starts; None when nothing was left to look at
    cursor: Cursor | None


def run_batch(conn: psycopg.Connection, *, cutoff: datetime, after: Cursor, limit: int,
              dry_run: bool) -> Batch:
    """One statement (the caller's transaction holds the lock).
    Raises psycopg.Error."""
    row = conn.execute(COUNT_BATCH_SQL if dry_run else PURGE_BATCH_SQL, {
        "cutoff": cutoff, "after_at": after.persisted_at, "after_session": after.session_id,
        "after_version": after.version, "limit": limit}).fetchone()
    assert row is not None  # the outer SELECT always returns one row
    scanned, purged, at, session_id, version = row
    cursor = None if at is None else Cursor(at, session_id, int(version))
    return Batch(int(scanned), int(purged), cursor)


def try_lock(conn: psycopg.Connection) -> bool:
    """Take the purge's advisory lock for the current transaction, if no
    other transaction holds it."""
    row = conn.execute(LOCK_SQL, (PURGE_LOCK_KEY,)).fetchone()
    return bool(row and row[0])


def saved_cursor(conn: psycopg.Connection) -> Cursor | None:
    """Where the last run stopped, if it ran out of time."""
    row = conn.execute(READ_CURSOR_SQL).fetchone()
    return None if row is None else Cursor(row[0], row[1], int(row[2]))


def save_cursor(conn: psycopg.Connection, cursor: Cursor | None) -> None:
    """Remember ``cursor`` for the next run; None: the run reached the end."""
    if cursor is None:
        conn.execute(CLEAR_CURSOR_SQL)
    else:
        conn.execute(SAVE_CURSOR_SQL, (cursor.persisted_at, cursor.session_id, cursor.version))


@contextmanager
def translated_errors() -> Iterator[None]:
    """psycopg errors as the error tree's PersistenceError (retryable or not)."""
    try:
        yield
    except psycopg.Error as exc:
        raise classify(exc) from exc
