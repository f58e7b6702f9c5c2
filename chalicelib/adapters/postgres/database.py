"""PostgreSQL adapter: the durable copy of every session change.

The SQL text and the ``Database`` reads and writes.  Its connection (where
the DSN comes from, reconnecting, the read watchdog) is in ``connection``;
what an error means for the change (retry or dead-letter) in ``sqlstate``.

Read methods used by HTTP routes raise ``ServiceUnavailable`` (503) for
retryable errors instead, as every other dependency adapter does.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from chalicelib.adapters.postgres.connection import (
    STATEMENT_TIMEOUT_MS,
    Connector,
    resolve_dsn,
    severed_after,
)
from chalicelib.adapters.postgres.sqlstate import classify
from chalicelib.config import Settings
from chalicelib.domain.errors import (
    ConfigurationError,
    PermanentPersistenceError,
    PersistenceError,
    RetryablePersistenceError,
    ServiceUnavailable,
)
from chalicelib.domain.events import DELETED, EXPIRED, ChangeEvent
from chalicelib.domain.session import Session

log = logging.getLogger("sessionsync.persistence")

# A read serves an HTTP request: past this, 503, not a hang (docs/guarantees.md:
# a dependency outage is a fast 503).
READ_DEADLINE_SECONDS = 1.0
# The expiry sweep reads a batch on a schedule's time, not a request's.
EXPIRY_READ_DEADLINE_SECONDS = 10.0

# The timestamp format of the API and the events (store.iso_utc).
_ISO_MS = """to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""

# One statement applies a whole batch, in one round trip and one implicit
# transaction (autocommit: a single statement is atomic).
#
# * ``incoming`` turns the parallel arrays into rows; it is referenced twice,
#   so PostgreSQL materializes it and parses each state into jsonb once.
#   The arrays go in binary format (``%b``): in text format psycopg escapes
#   every quote of every state JSON with a regex substitution, a third of
#   the consumer's time (docs/performance.md).  Casts and errors (22003,
#   22P05...) are the same either way.
# * ``inserted``: one row per (session, version).  A redelivered or
#   duplicated message conflicts on the primary key and is skipped: that is
#   what makes the consumer idempotent.  Rows go in key order so that two
#   concurrent batches take their index locks in the same order.
# * ``latest``: one row per session (DISTINCT ON: an upsert may not touch a
#   row twice in one statement), the batch's highest version; it replaces
#   the stored row only if newer (``WHERE s.version < EXCLUDED.version``),
#   so delivery order does not matter.  A duplicate event's version is never
#   newer than what its first delivery stored, so re-running it is a no-op.
#
# A (session, version) that is skipped as already there may be a duplicate
# (the same event delivered again) or a conflict (another write got the same
# version number: the id was reused after Redis forgot it, or a failover lost
# the last write).  The statement cannot tell: its snapshot predates rows
# that a concurrent batch committed while this one waited on their index
# entries.  So it returns the skipped rows (``skipped``) and CONFLICTS_SQL,
# a statement of its own with a fresh snapshot, compares them with what is
# stored now::
#
#     consumer A                          consumer B
#     INSERT (s, 7, X) ... (uncommitted)
#                                         APPLY_SQL snapshot taken
#                                         INSERT (s, 7, Y) waits on A's entry
#     COMMIT
#                                         ON CONFLICT: skipped; its snapshot
#                                         has no (s, 7): a same-statement
#                                         check would call Y a duplicate
#                                         CONFLICTS_SQL: sees X <> Y -> DLQ
#
# Data-modifying CTEs always run to completion, whether or not the final
# SELECT reads them; it returns (new events, sessions moved forward, and the
# ordinal of each skipped event).
APPLY_SQL = f"""
WITH incoming AS (
    SELECT t.session_id, t.version, t.event_type, t.state::jsonb AS state,
           t.created_at::timestamptz AS created_at, t.occurred_at::timestamptz AS occurred_at,
           t.ttl_seconds, t.owner_id, t.idx,
           -- an event written before events carried it: its write's time + TTL
           coalesce(t.expires_at::timestamptz,
                    t.occurred_at::timestamptz + make_interval(secs => t.ttl_seconds)) AS expires_at
    FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::int[],
                %b::text[], %b::text[])
         WITH ORDINALITY
         AS t(session_id, version, event_type, state, created_at, occurred_at, ttl_seconds, owner_id,
              expires_at, idx)
), inserted AS (
    INSERT INTO sync_events (session_id, version, event_type, state, occurred_at)
    SELECT session_id, version, event_type, state, occurred_at
    FROM incoming ORDER BY session_id, version
    ON CONFLICT (session_id, version) DO NOTHING
    RETURNING session_id, version
), latest AS (
    INSERT INTO sync_sessions AS s
        (session_id, version, state, deleted, created_at, updated_at, ttl_seconds, owner_id,
         expires_at, expired)
    SELECT DISTINCT ON (session_id)
           session_id, version, state, event_type = '{DELETED}', created_at, occurred_at,
           ttl_seconds, owner_id, expires_at, event_type = '{EXPIRED}'
    FROM incoming ORDER BY session_id, version DESC
    ON CONFLICT (session_id) DO UPDATE
        SET version = EXCLUDED.version, state = EXCLUDED.state, deleted = EXCLUDED.deleted,
            updated_at = EXCLUDED.updated_at, ttl_seconds = EXCLUDED.ttl_seconds,
            owner_id = coalesce(EXCLUDED.owner_id, s.owner_id),
            expires_at = EXCLUDED.expires_at, expired = EXCLUDED.expired,
            persisted_at = now()
        WHERE s.version < EXCLUDED.version
    RETURNING 1
)
SELECT (SELECT count(*) FROM inserted), (SELECT count(*) FROM latest),
       (SELECT array_agg(i.idx) FROM incoming i
        WHERE NOT EXISTS (SELECT 1 FROM inserted n
                          WHERE n.session_id = i.session_id AND n.version = i.version))
"""

# The skipped events whose (session, version) is stored with other content:
# the ordinals (from 1) of the conflicting ones.  Compares every part of the
# event that a duplicate delivery repeats: type, time and state.
CONFLICTS_SQL = """
SELECT t.idx
FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[])
     WITH ORDINALITY AS t(session_id, version, event_type, state, occurred_at, idx)
JOIN sync_events e USING (session_id, version)
WHERE e.event_type <> t.event_type
   OR e.occurred_at <> t.occurred_at::timestamptz
   OR e.state IS DISTINCT FROM t.state::jsonb
"""

LATEST_SQL = f"""
SELECT version, state::text, deleted, {_ISO_MS.format('created_at')},
       {_ISO_MS.format('updated_at')}, ttl_seconds, owner_id, expired
FROM sync_sessions WHERE session_id = %s
"""

# The expiry sweep's candidates: live sessions whose lifetime ended before
# the cutoff, ids after the cursor, a bounded batch.  A row written without
# expires_at (by the previous release's consumer) derives it.  The state is
# not read: the sweep writes none.
EXPIRY_CANDIDATES_SQL = f"""
SELECT session_id, version, {_ISO_MS.format('created_at')}, {_ISO_MS.format('updated_at')},
       ttl_seconds, owner_id
FROM sync_sessions
WHERE NOT deleted AND NOT expired AND session_id > %(after)s
  AND (expires_at < %(cutoff)s
       OR (expires_at IS NULL AND updated_at + make_interval(secs => ttl_seconds) < %(cutoff)s))
ORDER BY session_id
LIMIT %(limit)s
"""

# What an event adds to a page besides its state, in the estimate below
# (version, type, two timestamps, the keys and their quotes).
HISTORY_EVENT_OVERHEAD_BYTES = 200

# A page of history, newest first, bounded by count and by bytes.  The walk
# goes down the primary key one event at a time, adding up the size of each
# state as text, and stops after the first event that does not fit: so
# PostgreSQL converts and ships no more than the page (memory stays bounded
# whatever the limit).  The first event always fits (a page is never empty);
# the one past the page comes back with fits = false and no state, and only
# tells that there is more.
HISTORY_SQL = f"""
WITH RECURSIVE walk (version, taken, total, fits) AS (
    (SELECT version, 1, coalesce(octet_length(state::text), 4)::bigint + %(overhead)s, true
     FROM sync_events
     WHERE session_id = %(session_id)s AND version < %(before)s
     ORDER BY version DESC
     LIMIT 1)
  UNION ALL
    SELECT next.version, walk.taken + 1, walk.total + next.size,
           walk.taken < %(limit)s AND walk.total + next.size <= %(max_bytes)s
    FROM walk CROSS JOIN LATERAL (
        SELECT version, coalesce(octet_length(state::text), 4)::bigint + %(overhead)s AS size
        FROM sync_events
        WHERE session_id = %(session_id)s AND version < walk.version
        ORDER BY version DESC
        LIMIT 1) next
    WHERE walk.fits
)
SELECT e.version, e.event_type, {_ISO_MS.format('e.occurred_at')},
       {_ISO_MS.format('e.persisted_at')}, CASE WHEN walk.fits THEN e.state END, walk.fits
FROM walk JOIN sync_events e ON e.session_id = %(session_id)s AND e.version = walk.version
ORDER BY e.version DESC
"""

RECENT_SQL = f"""
SELECT session_id, version, event_type, {_ISO_MS.format('occurred_at')},
       {_ISO_MS.format('persisted_at')}
FROM sync_events ORDER BY persisted_at DESC LIMIT %s
"""

VERSIONS_SQL = "SELECT session_id, version FROM sync_sessions WHERE session_id = ANY(%s::text[])"

# A revoke-all's walk of an owner's rows, by id (sync_sessions_owner_id_idx):
# a bounded number of rows per statement, whatever they hold, each with
# whether the revoke-all must deal with it (live, created before it began,
# its lifetime not over), so that rows of sessions long gone cost a scan,
# not a call's budget.  A row written without expires_at derives it.
OWNER_SESSIONS_SQL = """
SELECT session_id,
       NOT deleted AND NOT expired AND created_at < %(created_before)s::timestamptz
       AND coalesce(expires_at, updated_at + make_interval(secs => ttl_seconds))
           >= %(ended_before)s::timestamptz
FROM sync_sessions
WHERE owner_id = %(owner_id)s AND session_id > %(after)s
ORDER BY session_id LIMIT %(limit)s
"""

# events persisted in the last N seconds (sync_events_persisted_at_idx):
# the queue's "completed" count, which SQS does not keep
PERSISTED_SINCE_SQL = """
SELECT count(*) FROM sync_events WHERE persisted_at > now() - make_interval(secs => %s)
"""


# --- the adapter -------------------------------------------------------------

@dataclass
class ApplyResult:
    """What ``apply_events`` did with a batch.

    ``failures`` maps the index of each event that was NOT persisted to its
    error; every other event is in ``sync_events`` now (``inserted`` new
    rows) or was already (``duplicates``).
    """

    inserted: int = 0
    duplicates: int = 0
    failures: dict[int, PersistenceError] = field(default_factory=dict)

    @property
    def persisted(self) -> int:
        return self.inserted + self.duplicates


def apply_parameters(events: Sequence[ChangeEvent]) -> tuple[list[Any], ...]:
    """APPLY_SQL's parameters for ``events``: parallel arrays, in its unnest order."""
    return ([e.session_id for e in events], [e.version for e in events],
            [e.event_type for e in events], [e.state_json for e in events],
            [e.created_at for e in events], [e.occurred_at for e in events],
            [e.ttl_seconds for e in events], [e.owner_id for e in events],
            [e.expires_at for e in events])


def _first_of_each_version(events: Sequence[ChangeEvent]) -> tuple[list[int], list[int]]:
    """Split a batch by (session, version): (indexes of the first event of
    each, indexes of the later ones).  One statement cannot insert a key
    twice; a later one is compared with what is stored once the first is
    (a duplicate, or a conflict: never silently dropped)."""
    first: dict[tuple[str, int], int] = {}
    later: list[int] = []
    for index, event in enumerate(events):
        if first.setdefault((event.session_id, event.version), index) != index:
            later.append(index)
    return sorted(first.values()), later


def _conflict_failures(events: Sequence[ChangeEvent], conflicts: Iterable[int],
                       offset: int = 0) -> dict[int, PersistenceError]:
    return {offset + i: PermanentPersistenceError(
                f"version {events[i].version} of session {events[i].session_id!r} is already "
                "persisted with different content: two writes got the same version number",
                constraint="sync_events_pkey", reason="version_conflict")
            for i in conflicts}


class Database:
    """The PostgreSQL side of sessionsync (``sync_sessions``, ``sync_events``).

    Thread-safe (one lock around the one connection), so the local server's
    request threads may share it; the worker uses its own instance.
    """

    def __init__(self, dsn_provider: Callable[[], str], *,
                 statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
                 refreshable: bool = False, clock: Callable[[], float] = time.monotonic,
                 pooled: bool = False) -> None:
        """``dsn_provider`` is called on (re)connect; with ``refreshable`` its
        answer is forgotten after a failed connect (rotated secret);
        ``pooled``: through a transaction pooler (DB_POOLED, ``connection.connect``)."""
        self._connector = Connector(dsn_provider, statement_timeout_ms=statement_timeout_ms,
                                    refreshable=refreshable, clock=clock, pooled=pooled)
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings: Settings, secrets_client_factory: Callable[[], Any],
                      **options: Any) -> Database:
        """DATABASE_URL, else DB_SECRET_ARN (read on first connect), else PG*."""
        return cls(lambda: resolve_dsn(settings, secrets_client_factory),
                   refreshable=bool(not settings.database_url and settings.db_secret_arn),
                   pooled=settings.db_pooled, **options)

    @classmethod
    def from_dsn(cls, dsn: str, **options: Any) -> Database:
        return cls(lambda: dsn, **options)

    # -- connection -----------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        return self._connector.connection()

    def close(self) -> None:
        with self._lock:
            self._connector.drop()

    @contextmanager
    def held_connection(self) -> Iterator[psycopg.Connection]:
        """The connection (autocommit), this object's other callers kept
        out until the block ends: for a job of several statements on one
        session (``retention``'s advisory lock).  Raises psycopg.Error (the
        caller classifies it; a broken connection is replaced on next use),
        ConfigurationError or ServiceUnavailable (the DSN)."""
        with self._lock:
            yield self._connection()

    def _fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any],
               deadline: float = READ_DEADLINE_SECONDS) -> list[tuple]:
        """Run a read; retryable trouble becomes ServiceUnavailable (503).

        A read serves an HTTP request, so it has a client-side deadline:
        past ``deadline`` the connection is severed (``severed_after``), the
        blocked read fails at once, and the next call reconnects.
        """
        if not self._lock.acquire(timeout=deadline):
            raise ServiceUnavailable(f"PostgreSQL did not answer within {deadline:g}s (busy)",
                                     dependency="postgresql")
        try:
            conn = self._connection()
            with severed_after(conn, deadline):
                return conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            error = classify(exc)
            if isinstance(error, RetryablePersistenceError):
                raise ServiceUnavailable(f"PostgreSQL is unavailable: {error.message}",
                                         dependency="postgresql",
                                         sqlstate=error.sqlstate) from exc
            raise error from exc
        finally:
            self._lock.release()

    # -- writes (the consumer) ------------------------------------------------

    def apply_events(self, events: Sequence[ChangeEvent]) -> ApplyResult:
        """Persist a batch: one statement, one transaction, one round trip.

        Idempotent (an event already in ``sync_events`` counts as a
        duplicate: success) and order-insensitive (``sync_sessions`` only
        moves forward).  An event whose (session, version) is stored, or
        earlier in the batch, with other content fails permanently
        (``reason=version_conflict``), whatever the batching and however
        many consumers run at once.  Never raises for database trouble: it
        returns the errors per event in ``ApplyResult.failures``.

        When the batch fails with a permanent error (a constraint or data
        error of some event), each event is retried in its own transaction,
        so that only the poison message fails and the rest are persisted.
        A retryable error (connection lost, timeout, deadlock...) fails the
        whole batch with that error: nothing in it is poison, SQS retries it.
        """
        if not events:
            return ApplyResult()
        with self._lock:
            try:
                inserted, conflicts = self._apply(events)
            except psycopg.Error as exc:
                error = classify(exc)
                if (isinstance(error, PermanentPersistenceError) and len(events) > 1
                        and self._connector.alive()):
                    return self._apply_one_by_one(events)
                return self._failed(events, error)
            except (ServiceUnavailable, ConfigurationError) as exc:
                # the DSN could not be resolved (Secrets Manager): retry later
                error = RetryablePersistenceError(exc.message, error_class=type(exc).__name__)
                error.__cause__ = exc
                return self._failed(events, error)
        failures = _conflict_failures(events, conflicts)
        return ApplyResult(inserted=inserted, duplicates=len(events) - inserted - len(failures),
                           failures=failures)

    @staticmethod
    def _failed(events: Sequence[ChangeEvent], error: PersistenceError) -> ApplyResult:
        log.warning("events not persisted", extra={
            "events": len(events), "retryable": error.retryable, "sqlstate": error.sqlstate,
            "error": error.message})
        return ApplyResult(failures={i: error for i in range(len(events))})

    def _apply(self, events: Sequence[ChangeEvent]) -> tuple[int, set[int]]:
        """(rows inserted, indexes in ``events`` of the conflicting ones)."""
        conn = self._connection()
        unique, later = _first_of_each_version(events)
        batch = [events[i] for i in unique]
        row = conn.execute(APPLY_SQL, apply_parameters(batch)).fetchone()
        assert row is not None
        # WITH ORDINALITY counts from 1
        compare = [unique[int(i) - 1] for i in row[2] or ()] + later
        if not compare:
            return int(row[0]), set()
        others = [events[i] for i in compare]
        clashing = conn.execute(CONFLICTS_SQL, (
            [e.session_id for e in others], [e.version for e in others],
            [e.event_type for e in others], [e.state_json for e in others],
            [e.occurred_at for e in others])).fetchall()
        return int(row[0]), {compare[int(i) - 1] for (i,) in clashing}

    def _apply_one_by_one(self, events: Sequence[ChangeEvent]) -> ApplyResult:
        result = ApplyResult()
        for index, event in enumerate(events):
            try:
                inserted, conflicts = self._apply([event])
            except psycopg.Error as exc:
                error = classify(exc)
                result.failures[index] = error
                if isinstance(error, RetryablePersistenceError):
                    # not this event's fault (the connection went away, a
                    # timeout): the rest would fail the same way
                    for rest in range(index + 1, len(events)):
                        result.failures[rest] = error
                    break
                continue
            if conflicts:
                result.failures.update(_conflict_failures([event], conflicts, index))
                continue
            result.inserted += inserted
            result.duplicates += 1 - inserted
        return result

    # -- reads ------------------------------------------------------------------

    def latest(self, session_id: str) -> Session | None:
        """The latest persisted state of a session, deleted ones included.

        Raises ServiceUnavailable when PostgreSQL cannot answer.
        """
        rows = self._fetch(LATEST_SQL, (session_id,))
        if not rows:
            return None
        version, state_json, deleted, created, updated, ttl, owner, expired = rows[0]
        return Session(session_id, int(version), state_json if state_json is not None else "null",
                       created, updated, int(ttl), bool(deleted), owner, expired=bool(expired))

    def expiry_candidates(self, cutoff: datetime, *, after: str = "", limit: int = 100) -> list[Session]:
        """Up to ``limit`` live sessions (ids after ``after``, in id order)
        whose lifetime ended before ``cutoff``, as PostgreSQL holds them
        (without their state: ``state_json`` is "null").  Raises
        ServiceUnavailable."""
        rows = self._fetch(EXPIRY_CANDIDATES_SQL, {"after": after, "cutoff": cutoff, "limit": limit},
                           deadline=EXPIRY_READ_DEADLINE_SECONDS)
        return [Session(sid, int(version), "null", created, updated, int(ttl), owner_id=owner)
                for sid, version, created, updated, ttl, owner in rows]

    def history(self, session_id: str, *, limit: int,
                before_version: int | None = None) -> list[dict[str, Any]]:
        """Persisted events of a session, newest first, versions below
        ``before_version``: ``history_page`` without its byte bound.

        Raises ServiceUnavailable.
        """
        return self.history_page(session_id, limit=limit, before_version=before_version,
                                 max_bytes=2 ** 62)[0]

    def history_page(self, session_id: str, *, limit: int, before_version: int | None,
                     max_bytes: int) -> tuple[list[dict[str, Any]], bool]:
        """A page of persisted events of a session, newest first, versions
        below ``before_version`` (the cursor of the next page), and whether
        older events remain.

        The page holds at most ``limit`` events and stops before their
        states, as text, pass ``max_bytes`` (an estimate of the response:
        the caller measures exactly); it always holds the newest event.
        Each event: version, event_type, occurred_at, persisted_at, state
        (a dict, or None for a deletion).  Raises ServiceUnavailable.
        """
        cursor = before_version if before_version is not None else 2 ** 63 - 1
        rows = self._fetch(HISTORY_SQL, {
            "session_id": session_id, "before": cursor, "limit": limit,
            "max_bytes": max_bytes, "overhead": HISTORY_EVENT_OVERHEAD_BYTES})
        events = [{"version": int(v), "event_type": t, "occurred_at": o, "persisted_at": p, "state": s}
                  for v, t, o, p, s, fits in rows if fits]
        return events, len(events) < len(rows)

    def recent_events(self, limit: int = 10) -> list[dict[str, Any]]:
        """The last persisted events of any session (for operators)."""
        rows = self._fetch(RECENT_SQL, (limit,))
        return [{"session_id": sid, "version": int(v), "event_type": t, "occurred_at": o,
                 "persisted_at": p} for sid, v, t, o, p in rows]

    def persisted_since(self, seconds: float) -> int:
        """How many events were persisted in the last ``seconds`` (for operators)."""
        return int(self._fetch(PERSISTED_SINCE_SQL, (seconds,))[0][0])

    def persisted_versions(self, session_ids: Iterable[str]) -> dict[str, int]:
        """session id -> version in ``sync_sessions`` (absent ids are left out)."""
        ids = list(session_ids)
        if not ids:
            return {}
        return {sid: int(v) for sid, v in self._fetch(VERSIONS_SQL, (ids,))}

    def owner_sessions(self, owner_id: str, *, after: str, limit: int, created_before: str,
                       ended_before: str) -> tuple[list[str], str | None]:
        """The next ``limit`` rows of the owner after the id ``after`` ('' from
        the start), in id order: the ids of those live, created before
        ``created_before`` and whose lifetime did not end before
        ``ended_before`` (ISO times), and the last id read (None: no more
        rows).  Raises ServiceUnavailable."""
        rows = self._fetch(OWNER_SESSIONS_SQL, {
            "owner_id": owner_id, "after": after, "limit": limit,
            "created_before": created_before, "ended_before": ended_before})
        return [sid for sid, doomed in rows if doomed], rows[-1][0] if len(rows) == limit else None

    def ping(self) -> float:
        """Round trip of ``SELECT 1`` in milliseconds (connecting if needed).

        Raises ServiceUnavailable.
        """
        start = time.perf_counter()
        self._fetch("SELECT 1", ())
        return (time.perf_counter() - start) * 1000
