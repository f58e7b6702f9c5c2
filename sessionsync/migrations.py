"""Versioned SQL migrations for the PostgreSQL schema (sessionsync/sql).

A migration is a file ``NNNN_name.sql``; it runs once, in its own
transaction together with its row in ``schema_migrations`` (version, name,
SHA-256 of the file, time), so a failed migration leaves nothing behind and
is retried whole next time.  Migrations are never edited once applied: a
changed checksum stops ``migrate`` with an error instead of diverging
silently.

Concurrency: two ``migrate`` runs (two deploy jobs, two developers) take a
session-level advisory lock first, so the second waits, then finds nothing
pending::

    A: lock ───── 0001 (tx) ── 0002 (tx) ── unlock
    B: lock ........ waits ....................... got it: nothing pending

The files are package data of ``sessionsync.sql``, read through
importlib.resources, so ``sessionsync migrate`` works the same from a
checkout, an editable install or an installed wheel; never inside a
Lambda, whose package holds ``chalicelib`` only.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import psycopg

from chalicelib.domain.errors import PersistenceError

MIGRATIONS_DIR: Traversable = resources.files("sessionsync.sql")
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

    ``conn`` must be in autocommit mode (each migration opens its own
    transaction).  Safe to run twice and from two processes at once.
    Raises MigrationError (checksum mismatch, a recorded version missing on
    disk, the lock not obtained within ``lock_timeout`` seconds) and
    psycopg.Error when a migration's SQL fails (its transaction is rolled
    back; the ones before it stay applied).
    """
    if not conn.autocommit:
        raise ValueError("migrate() needs an autocommit connection")
    migrations = discover() if migrations is None else migrations
    _lock(conn, lock_timeout)
    try:
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
            with conn.transaction():
                conn.execute(migration.sql)
                conn.execute("INSERT INTO schema_migrations (version, name, checksum) "
                             "VALUES (%s, %s, %s)",
                             (migration.version, migration.name, migration.checksum))
        return pending
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def _lock(conn: psycopg.Connection, timeout: float) -> None:
    # pg_try_advisory_lock in a loop rather than pg_advisory_lock: the wait is
    # bounded and a statement_timeout on the connection cannot cut it short.
    deadline = time.monotonic() + timeout
    while not conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:  # type: ignore[index]
        if time.monotonic() >= deadline:
            raise MigrationError(f"another migration holds the lock for over {timeout:.0f} s")
        time.sleep(0.1)
