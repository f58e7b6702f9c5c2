"""Helpers of the client tests (their fixtures are in conftest.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.support.constants import PROJECT_DIR
from tests.support.pipeline import wait_until
from tests.support.servers import RedisServer

PYTHON_CLIENT = PROJECT_DIR / "clients" / "python"
TYPESCRIPT_CLIENT = PROJECT_DIR / "clients" / "typescript"


@dataclass(frozen=True)
class Served:
    url: str
    port: int
    dsn: str
    log: Path
    #: the server's Redis (a test may pause it, and must resume it)
    redis: RedisServer

    def event_versions(self, session_id: str) -> list[int]:
        """The versions sync_events holds of a session, duplicates kept, in order."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return [v for (v,) in conn.execute(
                "SELECT version FROM sync_events WHERE session_id = %s ORDER BY version", (session_id,))]

    def wait_for_events(self, session_id: str, count: int, timeout: float = 30.0) -> list[int]:
        """The versions once PostgreSQL holds ``count`` events of the session
        (the pipeline persists within a second or two; the margin is for a
        busy machine)."""
        wait_until(lambda: len(self.event_versions(session_id)) >= count, timeout=timeout,
                   what=f"{count} events of {session_id} in sync_events", interval=0.1)
        return self.event_versions(session_id)
