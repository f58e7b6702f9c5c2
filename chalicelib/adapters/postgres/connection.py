"""PostgreSQL connections: where the DSN comes from, how a connection is
opened, kept and given up on.

One connection per process, opened on first use and reused across warm
Lambda invocations (a pool would only multiply connections: a Lambda runs
one invocation at a time).  A broken connection is dropped and the next
call reconnects, so the service recovers by itself after a restart of the
server.  Timeouts are short so that an unreachable server is an error
within seconds, not a Lambda hanging until its own timeout.
"""
from __future__ import annotations

import json
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import conninfo, pq

from chalicelib.config import DB_SECRET_ARN, DB_SSL_ROOT_CERT, Settings
from chalicelib.domain.errors import ConfigurationError, ServiceUnavailable
from chalicelib.observability.tracing import instrument_psycopg

CONNECT_TIMEOUT_SECONDS = 2  # libpq's minimum that is honoured exactly
STATEMENT_TIMEOUT_MS = 5000
LOCK_TIMEOUT_MS = 2000
# A secret fetched for a DSN that then failed to connect is fetched again
# (the password may have been rotated), but at most this often.
SECRET_REFRESH_SECONDS = 30.0
# After a failed connect, calls fail at once for this long instead of
# each trying (and timing out) again.
RECONNECT_PAUSE_SECONDS = 1.0


# --- DSN -------------------------------------------------------------------

def dsn_from_secret(secret: Mapping[str, Any], sslrootcert: str = Settings.db_ssl_root_cert,
                    host_override: str | None = None) -> str:
    """A PostgreSQL URL from a Secrets Manager secret in the RDS JSON format.

    ``{"username", "password", "host", "port"?, "dbname"?, "sslmode"?}``;
    user and password are percent-encoded (a password with ``@`` or ``/`` is
    common).  The secret names a deployed database, so the connection uses
    TLS and checks the server's certificate and host name
    (``sslmode=verify-full``) against ``sslrootcert`` (DB_SSL_ROOT_CERT, the
    RDS CA bundle); a secret's own ``sslmode`` wins (a local database
    without TLS: ``"disable"``).  Raises ConfigurationError naming
    DB_SECRET_ARN when a field is missing, DB_SSL_ROOT_CERT when the bundle
    a verifying mode needs is not there.  ``host_override`` (DB_HOST,
    ``host`` or ``host:port``) replaces the secret's host and port: RDS
    Proxy in front of the instance the secret names.
    """
    if host_override:
        host, _, port_text = host_override.partition(":")
        secret = {**secret, "host": host, "port": port_text or secret.get("port")}
    missing = [k for k in ("username", "password", "host") if not secret.get(k)]
    if missing:
        raise ConfigurationError(DB_SECRET_ARN, f"the secret has no {', '.join(missing)}")
    host = str(secret["host"])
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    port = f":{int(secret['port'])}" if secret.get("port") else ""
    dbname = quote(str(secret["dbname"]), safe="") if secret.get("dbname") else ""
    sslmode = str(secret.get("sslmode") or "verify-full")
    query = f"?sslmode={quote(sslmode, safe='')}"
    if sslmode.startswith("verify"):
        # checked here: libpq's own error would come at every connect, as
        # a retryable connection failure rather than a setting to fix
        if not os.path.isfile(sslrootcert):
            raise ConfigurationError(DB_SSL_ROOT_CERT, f"the CA bundle {sslrootcert} does not exist "
                                                       "(`make deploy` fetches the RDS bundle)")
        query += f"&sslrootcert={quote(sslrootcert, safe='/')}"
    return (f"postgresql://{quote(str(secret['username']), safe='')}:"
            f"{quote(str(secret['password']), safe='')}@{host}{port}/{dbname}{query}")


def fetch_secret_dsn(secrets_client: Any, secret_arn: str,
                     sslrootcert: str = Settings.db_ssl_root_cert, host_override: str | None = None) -> str:
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
    return dsn_from_secret(secret, sslrootcert, host_override)


def resolve_dsn(settings: Settings, secrets_client_factory: Callable[[], Any]) -> str:
    """The connection string: DATABASE_URL, else the DB_SECRET_ARN secret
    (read now), else "" (libpq's PGHOST, PGDATABASE... variables).

    Raises ConfigurationError, ServiceUnavailable (Secrets Manager).
    """
    if settings.database_url:
        return settings.database_url
    if settings.db_secret_arn:
        return fetch_secret_dsn(secrets_client_factory(), settings.db_secret_arn,
                                settings.db_ssl_root_cert, settings.db_host)
    return ""


def connect(dsn: str, *, statement_timeout_ms: int | None = STATEMENT_TIMEOUT_MS,
            lock_timeout_ms: int | None = LOCK_TIMEOUT_MS, autocommit: bool = True,
            application_name: str = "sessionsync", pooled: bool = False) -> psycopg.Connection:
    """Open a connection with sessionsync's timeouts (None: the server's).

    ``dsn`` may be a URL, key=value pairs, or "" for libpq's PG* variables.
    Sessions run in UTC so that a timestamp without a zone is read as UTC
    (the SQL does not depend on it: it formats and compares in UTC itself).
    Raises psycopg.OperationalError when the server cannot be reached.

    ``pooled`` (DB_POOLED): a transaction pooler stands in front.  Each
    transaction may then run on another server connection, where nothing a
    session set is found: so no startup options (RDS Proxy refuses them,
    "doesn't support command-line options"; PgBouncer too, "unsupported
    startup parameter"), the timeouts come from the pooler's init query
    instead (RDS Proxy's InitQuery, PgBouncer's connect_query: docs/deploy.md),
    and no server-side prepared statements: psycopg prepares a query on its
    sixth execution, which pins the connection on RDS Proxy and fails on
    PgBouncer (``_pg3_0`` does not exist, or exists already, on the server
    connection the next transaction gets).
    """
    given = conninfo.conninfo_to_dict(dsn).get("options") if dsn else None
    options = [str(given)] if given else []
    extra: dict[str, Any] = {}
    if pooled:
        extra["prepare_threshold"] = None
    else:
        options.append("-c TimeZone=UTC")
        if statement_timeout_ms is not None:
            options.append(f"-c statement_timeout={int(statement_timeout_ms)}")
        if lock_timeout_ms is not None:
            options.append(f"-c lock_timeout={int(lock_timeout_ms)}")
    if options:
        extra["options"] = " ".join(options)
    conn = psycopg.connect(
        dsn, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_SECONDS,
        application_name=application_name,
        # a server that vanished without closing the socket (failover, a
        # cut network) is noticed in about 45 s instead of two hours
        keepalives=1, keepalives_idle=30, keepalives_interval=5, keepalives_count=3, **extra)
    # at LOG_LEVEL=DEBUG each statement is logged with its duration; a no-op otherwise
    return instrument_psycopg(conn)


class Connector:
    """The one connection of a process and what it remembers between tries.

    Not thread-safe: its owner serializes the calls (``Database``'s lock).
    """

    def __init__(self, dsn_provider: Callable[[], str], *, statement_timeout_ms: int,
                 refreshable: bool, clock: Callable[[], float], pooled: bool = False) -> None:
        """``dsn_provider`` is called on (re)connect; with ``refreshable`` its
        answer is forgotten after a failed connect (rotated secret);
        ``pooled``: through a transaction pooler (``connect``)."""
        self._dsn_provider = dsn_provider
        self._pooled = pooled
        self._dsn: str | None = None
        self._dsn_fetched_at = 0.0
        self._refreshable = refreshable
        self._statement_timeout_ms = statement_timeout_ms
        self._clock = clock
        self._conn: psycopg.Connection | None = None
        self._connect_failed = False
        self._connect_failed_at = float("-inf")

    def connection(self) -> psycopg.Connection:
        """The open connection, reconnecting if it is gone.

        Raises psycopg.Error (OperationalError when the server cannot be
        reached), ConfigurationError or ServiceUnavailable (the DSN).
        """
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken and not _closed_by_server(conn):
            return conn
        self.drop()
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
            self._conn = connect(self._dsn, statement_timeout_ms=self._statement_timeout_ms,
                                 pooled=self._pooled)
        except psycopg.Error:
            self._connect_failed = True
            self._connect_failed_at = self._clock()
            raise
        self._connect_failed = False
        return self._conn

    def alive(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.closed and not conn.broken

    def drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:  # already gone; nothing to release
                pass
            self._conn = None


def _closed_by_server(conn: psycopg.Connection) -> bool:
    """Whether the other end closed ``conn`` while it sat idle.

    A warm Lambda keeps its connection between invocations, frozen; an idle
    timeout (RDS Proxy's), a failover or an administrator may end it
    meanwhile.  The server then sends why (FATAL 57P01...) and closes, but
    the client learns it only from the next query, which fails: a 503 for
    a read, a retried batch for the consumer.  An idle connection in
    autocommit that listens to no channel is sent nothing otherwise, so
    anything readable on its socket means it is gone (or, rarely, a
    parameter the server reports changed: a reconnect then costs a
    connect, nothing more).  One poll of the socket, no round trip.
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        return False
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, psycopg.Error):
        return True


# --- the severing watchdog ---------------------------------------------------------

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


@contextmanager
def severed_after(conn: psycopg.Connection, deadline: float) -> Iterator[None]:
    """Within the block, ``conn`` is cut off once ``deadline`` seconds pass.

    ``statement_timeout`` is enforced by the server and keepalives are
    answered by its kernel, so neither ends the wait when the server
    process hangs.  Past ``deadline`` a watchdog shuts the socket down,
    the blocked read fails at once, and the next call reconnects.
    """
    watchdog = threading.Timer(deadline, _sever, args=(conn,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
