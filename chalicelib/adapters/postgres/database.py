"""PostgreSQL adapter: the durable copy of every session change.

One connection per process, opened on first use and reused across warm
Lambda invocations (a pool would only multiply connections: a Lambda runs
one invocation at a time).  A broken connection is dropped and the next
call reconnects, so the service recovers by itself after a restart of the
server.  Timeouts are short so that an unreachable server is an error
within seconds, not a Lambda hanging until its own timeout.

Errors are classified by SQLSTATE (the psycopg error class), never by
message text:

* retryable -> ``RetryablePersistenceError``: connection failures (class
  08, or no SQLSTATE at all: the socket is gone), query_canceled 57014
  (statement_timeout), admin/crash shutdown and cannot-connect-now
  57P01-57P03, serialization failure 40001, deadlock 40P01, lock timeout
  55P03, insufficient resources (class 53, e.g. too many connections).
  Anything not known to be permanent is retryable: SQS retries it and the
  redrive policy moves it to the DLQ after maxReceiveCount, so nothing is
  lost and a transient error never dead-letters a good change.
* permanent -> ``PermanentPersistenceError`` with ``sqlstate`` and
  ``constraint``: integrity constraint violation (class 23), data exception
  (class 22, e.g. ``\\u0000`` in jsonb: 22P05), program limit exceeded
  (class 54: a row that can never fit).

Read methods used by HTTP routes raise ``ServiceUnavailable`` (503) for
retryable errors instead, as every other dependency adapter does.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import conninfo

from chalicelib.config import DB_SECRET_ARN, Settings
from chalicelib.domain.errors import (
    ConfigurationError,
    PermanentPersistenceError,
    PersistenceError,
    RetryablePersistenceError,
    ServiceUnavailable,
)
from chalicelib.domain.events import ChangeEvent
from chalicelib.domain.session import Session
from chalicelib.observability.logs import instrument_psycopg

log = logging.getLogger("sessionsync.persistence")

CONNECT_TIMEOUT_SECONDS = 2  # libpq's minimum that is honoured exactly
STATEMENT_TIMEOUT_MS = 5000
LOCK_TIMEOUT_MS = 2000
# A secret fetched for a DSN that then failed to connect is fetched again
# (the password may have been rotated), but at most this often.
SECRET_REFRESH_SECONDS = 30.0

PERMANENT_CLASSES = ("22", "23", "54")

# A read serves an HTTP request: past this, 503 (guarantee 5), not a hang.
READ_DEADLINE_SECONDS = 1.0
# After a failed connect, calls fail at once for this long instead of
# each trying (and timing out) again.
RECONNECT_PAUSE_SECONDS = 1.0

# The timestamp format of the API and the events (store.iso_utc).
_ISO_MS = """to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""

# One statement applies a whole batch, in one round trip and one implicit
# transaction (autocommit: a single statement is atomic).
#
# * ``incoming`` turns the parallel arrays into rows; it is referenced twice,
#   so PostgreSQL materializes it and parses each state into jsonb once.
#   The arrays go in binary format (``%b``): in text format psycopg escapes
#   every quote of every state JSON with a regex substitution, a third of
#   the consumer's time (``sessionsync bench``: 7,000 -> 9,700 events/s at
#   batch 10).  Casts and errors (22003, 22P05...) are the same either way.
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
APPLY_SQL = """
WITH incoming AS (
    SELECT t.session_id, t.version, t.event_type, t.state::jsonb AS state,
           t.created_at::timestamptz AS created_at, t.occurred_at::timestamptz AS occurred_at,
           t.ttl_seconds, t.idx
    FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::int[])
         WITH ORDINALITY
         AS t(session_id, version, event_type, state, created_at, occurred_at, ttl_seconds, idx)
), inserted AS (
    INSERT INTO sync_events (session_id, version, event_type, state, occurred_at)
    SELECT session_id, version, event_type, state, occurred_at
    FROM incoming ORDER BY session_id, version
    ON CONFLICT (session_id, version) DO NOTHING
    RETURNING session_id, version
), latest AS (
    INSERT INTO sync_sessions AS s
        (session_id, version, state, deleted, created_at, updated_at, ttl_seconds)
    SELECT DISTINCT ON (session_id)
           session_id, version, state, event_type = 'session_deleted', created_at, occurred_at,
           ttl_seconds
    FROM incoming ORDER BY session_id, version DESC
    ON CONFLICT (session_id) DO UPDATE
        SET version = EXCLUDED.version, state = EXCLUDED.state, deleted = EXCLUDED.deleted,
            updated_at = EXCLUDED.updated_at, ttl_seconds = EXCLUDED.ttl_seconds,
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
       {_ISO_MS.format('updated_at')}, ttl_seconds
FROM sync_sessions WHERE session_id = %s
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

# events persisted in the last N seconds (sync_events_persisted_at_idx):
# the queue's "completed" count, which SQS does not keep
PERSISTED_SINCE_SQL = """
SELECT count(*) FROM sync_events WHERE persisted_at > now() - make_interval(secs => %s)
"""


# --- DSN -------------------------------------------------------------------

def dsn_from_secret(secret: Mapping[str, Any]) -> str:
    """A PostgreSQL URL from a Secrets Manager secret in the RDS JSON format.

    ``{"username", "password", "host", "port"?, "dbname"?}``; user and
    password are percent-encoded (a password with ``@`` or ``/`` is common).
    Raises ConfigurationError naming DB_SECRET_ARN when a field is missing.
    """
    missing = [k for k in ("username", "password", "host") if not secret.get(k)]
    if missing:
        raise ConfigurationError(DB_SECRET_ARN, f"the secret has no {', '.join(missing)}")
    host = str(secret["host"])
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    port = f":{int(secret['port'])}" if secret.get("port") else ""
    dbname = quote(str(secret["dbname"]), safe="") if secret.get("dbname") else ""
    return (f"postgresql://{quote(str(secret['username']), safe='')}:"
            f"{quote(str(secret['password']), safe='')}@{host}{port}/{dbname}")


def fetch_secret_dsn(secrets_client: Any, secret_arn: str) -> str:
    """Read the database secret.  Raises ConfigurationError (no such secret,
    not JSON) or ServiceUnavailable (Secrets Manager unreachable)."""
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        reply = secrets_client.get_secret_value(SecretId=secret_arn)
    except ClientError as exc:
        raise ConfigurationError(
            DB_SECRET_ARN, f"cannot read the secret: {exc.response['Error'].get('Code')}") from exc
    except BotoCoreError as exc:
        raise ServiceUnavailable(f"Secrets Manager is unavailable: {type(exc).__name__}",
                                 dependency="secretsmanager") from exc
    try:
        secret = json.loads(reply["SecretString"])
    except (KeyError, ValueError) as exc:
        raise ConfigurationError(DB_SECRET_ARN, "the secret is not a JSON SecretString") from exc
    if not isinstance(secret, dict):
        raise ConfigurationError(DB_SECRET_ARN, "the secret is not a JSON object")
    return dsn_from_secret(secret)


def resolve_dsn(settings: Settings, secrets_client_factory: Callable[[], Any]) -> str:
    """The connection string: DATABASE_URL, else the DB_SECRET_ARN secret
    (read now), else "" (libpq's PGHOST, PGDATABASE... variables).

    Raises ConfigurationError, ServiceUnavailable (Secrets Manager).
    """
    if settings.database_url:
        return settings.database_url
    if settings.db_secret_arn:
        return fetch_secret_dsn(secrets_client_factory(), settings.db_secret_arn)
    return ""


def connect(dsn: str, *, statement_timeout_ms: int | None = STATEMENT_TIMEOUT_MS,
            lock_timeout_ms: int | None = LOCK_TIMEOUT_MS, autocommit: bool = True,
            application_name: str = "sessionsync") -> psycopg.Connection:
    """Open a connection with sessionsync's timeouts (None: the server's).

    ``dsn`` may be a URL, key=value pairs, or "" for libpq's PG* variables.
    Sessions run in UTC so that a timestamp without a zone is read as UTC.
    Raises psycopg.OperationalError when the server cannot be reached.
    """
    options = ["-c TimeZone=UTC"]
    if statement_timeout_ms is not None:
        options.append(f"-c statement_timeout={int(statement_timeout_ms)}")
    if lock_timeout_ms is not None:
        options.append(f"-c lock_timeout={int(lock_timeout_ms)}")
    given = conninfo.conninfo_to_dict(dsn).get("options") if dsn else None
    if given:
        options.insert(0, str(given))
    conn = psycopg.connect(
        dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_SECONDS,
        application_name=application_name, options=" ".join(options),
        # a server that vanished without closing the socket (failover, a
        # cut network) is noticed in about 45 s instead of two hours
        keepalives=1, keepalives_idle=30, keepalives_interval=5, keepalives_count=3)
    # at LOG_LEVEL=DEBUG each statement is logged with its duration; a no-op otherwise
    return instrument_psycopg(conn)


# --- error classification --------------------------------------------------

def classify(exc: psycopg.Error) -> PersistenceError:
    """Map a psycopg error to Retryable- or PermanentPersistenceError.

    Decided by SQLSTATE only; the result's ``__cause__`` is ``exc`` and its
    ``details["error_class"]`` the psycopg class name (e.g. CheckViolation).
    """
    sqlstate = exc.sqlstate
    constraint = exc.diag.constraint_name
    message = exc.diag.message_primary
    if not message:
        text = str(exc).strip()
        message = text.splitlines()[0] if text else type(exc).__name__
    cls = (PermanentPersistenceError if sqlstate and sqlstate[:2] in PERMANENT_CLASSES
           else RetryablePersistenceError)
    error = cls(message, sqlstate=sqlstate, constraint=constraint, error_class=type(exc).__name__)
    error.__cause__ = exc  # kept when the caller raises it later
    return error


# --- the adapter -------------------------------------------------------------

def _sever(conn: psycopg.Connection) -> None:
    """Shut down ``conn``'s socket (from the watchdog thread) so that a read
    blocked on a hung server fails now.  The fd stays owned by libpq."""
    try:
        fd = conn.fileno()
    except psycopg.Error:  # already closed
        return
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # not connected any more
        pass
    finally:
        sock.close()


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
                 refreshable: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        """``dsn_provider`` is called on (re)connect; with ``refreshable`` its
        answer is forgotten after a failed connect (rotated secret)."""
        self._dsn_provider = dsn_provider
        self._dsn: str | None = None
        self._dsn_fetched_at = 0.0
        self._refreshable = refreshable
        self._statement_timeout_ms = statement_timeout_ms
        self._clock = clock
        self._conn: psycopg.Connection | None = None
        self._connect_failed = False
        self._connect_failed_at = float("-inf")
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, settings: Settings, secrets_client_factory: Callable[[], Any],
                      **options: Any) -> Database:
        """DATABASE_URL, else DB_SECRET_ARN (read on first connect), else PG*."""
        return cls(lambda: resolve_dsn(settings, secrets_client_factory),
                   refreshable=bool(not settings.database_url and settings.db_secret_arn), **options)

    @classmethod
    def from_dsn(cls, dsn: str, **options: Any) -> Database:
        return cls(lambda: dsn, **options)

    # -- connection -----------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop()
        now = self._clock()
        if self._connect_failed and now - self._connect_failed_at < RECONNECT_PAUSE_SECONDS:
            # Requests queued behind a connect that just failed would each
            # wait out their own connect timeout in turn: fail them now.
            raise psycopg.OperationalError("PostgreSQL could not be reached a moment ago")
        stale = (self._refreshable and self._connect_failed
                 and now - self._dsn_fetched_at > SECRET_REFRESH_SECONDS)
        if self._dsn is None or stale:
            self._dsn = self._dsn_provider()
            self._dsn_fetched_at = now
        try:
            self._conn = connect(self._dsn, statement_timeout_ms=self._statement_timeout_ms)
        except psycopg.Error:
            self._connect_failed = True
            self._connect_failed_at = self._clock()
            raise
        self._connect_failed = False
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:  # already gone; nothing to release
                pass
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any],
               deadline: float = READ_DEADLINE_SECONDS) -> list[tuple]:
        """Run a read; retryable trouble becomes ServiceUnavailable (503).

        A read serves an HTTP request, so it has a client-side deadline:
        ``statement_timeout`` is enforced by the server and keepalives are
        answered by its kernel, so neither ends the wait when the server
        process hangs.  Past ``deadline`` a watchdog shuts the socket down,
        the blocked read fails at once, and the next call reconnects.
        """
        if not self._lock.acquire(timeout=deadline):
            raise ServiceUnavailable(f"PostgreSQL did not answer within {deadline:g}s (busy)",
                                     dependency="postgresql")
        try:
            conn = self._connection()
            watchdog = threading.Timer(deadline, _sever, args=(conn,))
            watchdog.daemon = True
            watchdog.start()
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                watchdog.cancel()
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
                if isinstance(error, PermanentPersistenceError) and len(events) > 1 and self._alive():
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
        # parallel arrays, in APPLY_SQL's unnest order
        columns = ([e.session_id for e in batch], [e.version for e in batch],
                   [e.event_type for e in batch], [e.state_json for e in batch],
                   [e.created_at for e in batch], [e.occurred_at for e in batch],
                   [e.ttl_seconds for e in batch])
        row = conn.execute(APPLY_SQL, columns).fetchone()
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

    def _alive(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.closed and not conn.broken

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

    def apply_event(self, event: ChangeEvent) -> bool:
        """Persist one event; True if new, False if already there.

        Raises RetryablePersistenceError or PermanentPersistenceError.
        """
        result = self.apply_events([event])
        if result.failures:
            raise result.failures[0]  # its __cause__ is the psycopg error
        return result.inserted == 1

    # -- reads ------------------------------------------------------------------

    def latest(self, session_id: str) -> Session | None:
        """The latest persisted state of a session, deleted ones included.

        Raises ServiceUnavailable when PostgreSQL cannot answer.
        """
        rows = self._fetch(LATEST_SQL, (session_id,))
        if not rows:
            return None
        version, state_json, deleted, created, updated, ttl = rows[0]
        return Session(session_id, int(version), state_json if state_json is not None else "null",
                       created, updated, int(ttl), bool(deleted))

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

    def ping(self) -> float:
        """Round trip of ``SELECT 1`` in milliseconds (connecting if needed).

        Raises ServiceUnavailable.
        """
        start = time.perf_counter()
        self._fetch("SELECT 1", ())
        return (time.perf_counter() - start) * 1000
