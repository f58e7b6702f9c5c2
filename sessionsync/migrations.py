"""Versioned SQL migrations: the runner and the SQL files live in the Lambda
package (``chalicelib.adapters.postgres.migrations`` and ``schema/``), since
the deploy applies them from a function inside the VPC; the operator's
``sessionsync migrate`` applies the same files from here."""
from __future__ import annotations

from chalicelib.adapters.postgres.migrations import (
    APPLIED,
    CHANGED,
    LOCK_KEY,
    MIGRATIONS_DIR,
    PENDING,
    UNKNOWN,
    Migration,
    MigrationError,
    MigrationState,
    applied,
    discover,
    migrate,
    release_checksum,
    status,
)

__all__ = ["APPLIED", "CHANGED", "LOCK_KEY", "MIGRATIONS_DIR", "PENDING", "UNKNOWN", "Migration",
           "MigrationError", "MigrationState", "applied", "discover", "migrate", "release_checksum",
           "status"]
