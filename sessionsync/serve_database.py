"""PostgreSQL for ``sessionsync serve``'s request threads: a few connections.

In Lambda an invocation serves one request, so one connection per process
is right (``chalicelib.runtime.database``).  The local server runs one
thread per client connection, and they all share that process's
``Database``, whose one connection is taken in turn behind a lock with the
read's deadline: with a hundred clients creating sessions (each new id is
asked of PostgreSQL), the queue for that lock alone passed the deadline,
and creates got 503 "busy" although PostgreSQL was idle.

``DatabaseConnections`` spreads the calls over a fixed number of
``Database`` objects, each with its own connection and lock, so every
guarantee of ``Database`` (the read deadline, reconnecting, the severed
read) holds per call unchanged.
"""
from __future__ import annotations

import queue
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from chalicelib.adapters.postgres.database import READ_DEADLINE_SECONDS, Database
from chalicelib.domain.errors import ServiceUnavailable

#: connections ``sessionsync serve`` opens at most (PostgreSQL's default
#: max_connections is 100; the worker and the relay have their own)
SERVE_DB_CONNECTIONS = 8


class DatabaseConnections:
    """``Database``'s interface over ``members``: each call runs on a member
    no other call is using, waiting at most the read deadline for one."""

    def __init__(self, members: Sequence[Database], *,
                 wait_seconds: float = READ_DEADLINE_SECONDS) -> None:
        if not members:
            raise ValueError("DatabaseConnections needs at least one Database")
        self.members = tuple(members)
        self.wait_seconds = wait_seconds
        self._free: queue.SimpleQueue[Database] = queue.SimpleQueue()
        for member in self.members:
            self._free.put(member)

    @classmethod
    def build(cls, count: int, make: Callable[[], Database]) -> DatabaseConnections:
        return cls([make() for _ in range(count)])

    @contextmanager
    def _member(self) -> Iterator[Database]:
        try:
            member = self._free.get(timeout=self.wait_seconds)
        except queue.Empty:
            raise ServiceUnavailable(
                f"PostgreSQL did not answer within {self.wait_seconds:g}s (all "
                f"{len(self.members)} connections busy)", dependency="postgresql") from None
        try:
            yield member
        finally:
            self._free.put(member)

    @contextmanager
    def held_connection(self) -> Iterator[psycopg.Connection]:
        with self._member() as member, member.held_connection() as conn:
            yield conn

    def close(self) -> None:
        for member in self.members:
            member.close()

    def __getattr__(self, name: str) -> Any:
        # every other method of Database, run on a free member
        method = getattr(self.members[0], name)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._member() as member:
                return getattr(member, name)(*args, **kwargs)
        return call
