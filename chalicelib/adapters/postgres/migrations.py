"""Versioned SQL migrations for the PostgreSQL schema (schema/*.sql beside this file).

A migration is a file ``NNNN_name.sql``; it runs once, with its row in
``schema_migrations`` (version, name, SHA-256 of the file, time).  A run
applies every pending migration in one transaction, so a failed migration
leaves nothing of that run behind and the run is retried whole next time.
Migrations are never edited once applied: a changed checksum stops
``migrate`` with an error instead of diverging silently.

Concurrency: two ``migrate`` runs (two deploy jobs, two developers) take an
advisory lock first, so the second waits, then finds nothing pending::

    A: BEGIN; lock ── 0001 ── 0002 ── COMMIT (the lock goes with it)
    B: BEGIN; lock ........ waits ......... got it: nothing pending; COMMIT

The lock is the transaction's, not the session's: through a transaction
pooler (PgBouncer in transaction mode, RDS Proxy) the statements after
``BEGIN`` stay on one server connection, while a session-level lock would
be taken on one server connection and released on another, then held for
good (RDS Proxy pins the connection instead).

The files are package data of ``chalicelib.adapters.postgres.schema``,
read through importlib.resources, so the same files are applied by
``sessionsync migrate`` (a checkout, an editable install or a wheel) and by
the deploy's migration function inside the VPC (``app.run_migrations``,
from the Lambda package: ``deploy_step`` below).
"""
from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import psycopg

from chalicelib.domain.errors import PersistenceError

MIGRATIONS_DIR: Traversable = resources.files("chalicelib.adapters.postgres.schema")
# pg_advisory_lock key: any bigint that no other tool on the database uses
LOCK_KEY = 0x5E55_1045_E7C0_0001
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

CREATE_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(PersistenceError):
    """The migrations on disk and in the database disagree, or the lock was
    not obtained.  An operator's error (``sessionsync migrate``), never an
    HTTP response: hence on the PostgreSQL side of the error tree."""

    code = "MigrationError"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def discover(directory: Traversable = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration in ``directory``, in version order.

    Raises MigrationError for a .sql file with a bad name or a version used
    twice (a merge of two branches that both added 0005_*).
    """
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    found: dict[int, Migration] = {}
    # a Traversable (a pathlib.Path, or a file inside an installed package)
    # has iterdir() but no glob()
    for path in sorted((p for p in directory.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: a migration must be named NNNN_name.sql")
        version = int(match[1])
        if version in found:
            raise MigrationError(f"two migrations have version {version}: "
                                 f"{found[version].filename} and {path.name}")
        found[version] = Migration(version, match[2], path.read_text())
    return [found[v] for v in sorted(found)]


def applied(conn: psycopg.Connection) -> dict[int, tuple[str, str]]:
    """version -> (name, checksum) of the migrations recorded in the database."""
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {int(v): (n, c) for v, n, c in rows}


def migrate(conn: psycopg.Connection, migrations: list[Migration] | None = None, *,
            lock_timeout: float = 60.0) -> list[Migration]:
    """Apply the pending migrations; return those applied (empty: up to date).

    ``conn`` must be in autocommit mode (the run opens its own
    transaction).  Safe to run twice and from two processes at once.
    Raises MigrationError (checksum mismatch, a recorded version missing on
    disk, the lock not obtained within ``lock_timeout`` seconds) and
    psycopg.Error when a migration's SQL fails (the run's transaction is
    rolled back: the migrations applied before this run stay).
    """
    if not conn.autocommit:
        raise ValueError("migrate() needs an autocommit connection")
    migrations = discover() if migrations is None else migrations
    with conn.transaction():
        _lock(conn, lock_timeout)
        conn.execute(CREATE_TABLE_SQL)
        done = applied(conn)
        on_disk = {m.version: m for m in migrations}
        for version, (name, checksum) in sorted(done.items()):
            migration = on_disk.get(version)
            if migration is None:
                raise MigrationError(f"the database has migration {version:04d}_{name}, which is not "
                                     "on disk (a newer release ran here?)")
            if migration.checksum != checksum:
                raise MigrationError(f"{migration.filename} changed after it was applied; "
                                     "add a new migration instead of editing an applied one")
        pending = [m for m in migrations if m.version not in done]
        for migration in pending:
            conn.execute(migration.sql)
            conn.execute("INSERT INTO schema_migrations (version, name, checksum) "
                         "VALUES (%s, %s, %s)",
                         (migration.version, migration.name, migration.checksum))
        return pending


def _lock(conn: psycopg.Connection, timeout: float) -> None:
    # pg_try_advisory_xact_lock in a loop rather than pg_advisory_xact_lock:
    # the wait is bounded and a statement_timeout on the connection cannot
    # cut it short.
    deadline = time.monotonic() + timeout
    while not conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_KEY,)).fetchone()[0]:  # type: ignore[index]
        if time.monotonic() >= deadline:
            raise MigrationError(f"another migration holds the lock for over {timeout:.0f} s")
        time.sleep(0.1)


# --- status: what is applied, what is pending ---------------------------------

APPLIED, PENDING, CHANGED, UNKNOWN = "applied", "pending", "changed", "unknown"


@dataclass(frozen=True)
class MigrationState:
    """One migration as the database sees it: ``applied``, ``pending``,
    ``changed`` (applied, but the file on disk differs) or ``unknown`` (in
    the database, not on disk: a newer release migrated it)."""

    version: int
    name: str
    state: str

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"

    def to_dict(self) -> dict[str, object]:
        return {"version": self.version, "name": self.name, "state": self.state}


def status(conn: psycopg.Connection, migrations: list[Migration] | None = None) -> list[MigrationState]:
    """Every migration on disk and in the database, in version order; reads
    only (no lock, no table created)."""
    migrations = discover() if migrations is None else migrations
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    done = applied(conn) if exists and exists[0] else {}
    states = []
    for migration in migrations:
        recorded = done.pop(migration.version, None)
        state = PENDING if recorded is None else APPLIED if recorded[1] == migration.checksum else CHANGED
        states.append(MigrationState(migration.version, migration.name, state))
    states += [MigrationState(version, name, UNKNOWN) for version, (name, _) in done.items()]
    return sorted(states, key=lambda s: s.version)


def release_checksum(migrations: list[Migration] | None = None) -> str:
    """One SHA-256 over every migration's file name and checksum: what a
    release's schema is.  The deploy passes it to the migration step, which
    re-runs when it changes (scripts/deploy_stage.py computes the same)."""
    migrations = discover() if migrations is None else migrations
    digest = hashlib.sha256()
    for migration in migrations:
        digest.update(f"{migration.filename} {migration.checksum}\n".encode())
    return digest.hexdigest()


# --- the deploy's migration step (a CloudFormation custom resource) ----------

PHYSICAL_ID = "sessionsync-schema"


class DeployStep:
    """``app.run_migrations``: the migrations applied from inside the VPC.

    Called two ways:

    * by CloudFormation, as the stack's custom resource (``RequestType``
      Create/Update/Delete, answered on the event's pre-signed ResponseURL
      through ``respond``).  The functions that use the schema depend on
      it, so an update applies the new migrations before any new code
      runs, and a failed migration fails the deploy before the code
      changes.  A rollback replays the previous release's properties to
      this code: their checksum is not this release's, and nothing is
      applied (migrations only go forward; each keeps the release before
      it working).  A database ahead of this release (a rollback of the
      code) is reported, not refused.  Delete keeps the schema.
    * directly (``{"action": "status"}`` or ``{"action": "migrate"}``), by
      an operator (``aws lambda invoke``; from a machine that reaches the
      database, ``sessionsync migrate --status`` reports the same states).
    """

    def __init__(self, dsn_provider: Callable[[], str],
                 respond: Callable[..., None],
                 migrations: list[Migration] | None = None, *, pooled: bool = False) -> None:
        """``pooled``: through a transaction pooler (DB_POOLED; the deploy's
        step connects to the instance itself, an operator may not)."""
        self._dsn_provider = dsn_provider
        self._respond = respond
        self._migrations = migrations
        self._pooled = pooled

    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        if "RequestType" in event and "ResponseURL" in event:
            return self._custom_resource(event)
        action = event.get("action", "status")
        if action not in ("status", "migrate"):
            raise ValueError(f"unknown action {action!r}: status or migrate")
        return self._run(migrate_now=action == "migrate")

    def _run(self, *, migrate_now: bool) -> dict[str, Any]:
        from chalicelib.adapters.postgres import connection

        migrations = discover() if self._migrations is None else self._migrations
        with connection.connect(self._dsn_provider(), statement_timeout_ms=None, lock_timeout_ms=None,
                                application_name="sessionsync-migrate", pooled=self._pooled) as conn:
            before = status(conn, migrations)
            ahead = [s for s in before if s.state == UNKNOWN]
            blocked = [s for s in before if s.state == CHANGED]
            applied_now: list[Migration] = []
            if migrate_now and blocked:
                raise MigrationError(f"{blocked[0].filename} changed after it was applied; "
                                     "add a new migration instead of editing an applied one")
            if migrate_now and not ahead:
                applied_now = migrate(conn, migrations)
            after = status(conn, migrations) if applied_now else before
        versions = [s.version for s in after if s.state in (APPLIED, UNKNOWN)]
        note = (f"the database is ahead of this release ({', '.join(s.filename for s in ahead)}): "
                "nothing applied" if ahead else "")
        return {"applied_now": [m.filename for m in applied_now],
                "version": max(versions) if versions else 0,
                "pending": [s.filename for s in after if s.state == PENDING],
                "release_checksum": release_checksum(migrations),
                "note": note,
                "migrations": [s.to_dict() for s in after]}

    def _custom_resource(self, event: dict[str, Any]) -> dict[str, Any]:
        physical = event.get("PhysicalResourceId") or PHYSICAL_ID
        try:
            if event["RequestType"] == "Delete":
                report: dict[str, Any] = {"applied_now": [], "version": 0, "note": "the schema is kept"}
            else:
                wanted = (event.get("ResourceProperties") or {}).get("MigrationsChecksum")
                mine = release_checksum(discover() if self._migrations is None else self._migrations)
                # not this release's migrations: a rollback replaying the
                # previous properties; report, apply nothing
                report = self._run(migrate_now=not wanted or wanted == mine)
                if wanted and wanted != mine:
                    report["note"] = "another release's migrations (a rollback): nothing applied"
            data = {"Version": str(report["version"]), "Applied": ",".join(report["applied_now"]),
                    "Note": str(report.get("note", ""))}
            self._respond(event, "SUCCESS", data, physical)
            return report
        except Exception as exc:  # any failure must reach CloudFormation, or it waits an hour
            self._respond(event, "FAILED", {}, physical, reason=f"{type(exc).__name__}: {exc}")
            raise
