"""sessionsync serve's PostgreSQL connections: calls spread over members."""
from __future__ import annotations

import threading
from contextlib import contextmanager

import pytest

from chalicelib.domain.errors import ServiceUnavailable
from sessionsync.serve_database import DatabaseConnections


class Member:
    """A Database stand-in that records which calls ran on it, and can be
    held busy until released."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[str] = []
        self.closed = False
        self.release = threading.Event()
        self.release.set()

    def latest(self, session_id: str) -> str:
        self.calls.append(session_id)
        assert self.release.wait(timeout=10)
        return self.name

    @contextmanager
    def held_connection(self):
        yield f"conn-{self.name}"

    def close(self) -> None:
        self.closed = True


def test_a_call_runs_on_a_member_no_other_call_is_using():
    first, second = Member("a"), Member("b")
    spread = DatabaseConnections([first, second], wait_seconds=5)
    first.release.clear()
    busy = threading.Thread(target=spread.latest, args=("s1",))
    busy.start()
    try:
        for _ in range(200):  # until the busy call has taken its member
            if first.calls:
                break
            threading.Event().wait(0.01)
        assert spread.latest("s2") == "b"
    finally:
        first.release.set()
        busy.join(timeout=10)
    assert first.calls == ["s1"] and second.calls == ["s2"]


def test_when_every_member_is_busy_past_the_deadline_the_call_is_a_503_naming_postgresql():
    only = Member("a")
    spread = DatabaseConnections([only], wait_seconds=0.05)
    only.release.clear()
    busy = threading.Thread(target=spread.latest, args=("s1",))
    busy.start()
    try:
        for _ in range(200):
            if only.calls:
                break
            threading.Event().wait(0.01)
        with pytest.raises(ServiceUnavailable) as raised:
            spread.latest("s2")
    finally:
        only.release.set()
        busy.join(timeout=10)
    assert raised.value.details["dependency"] == "postgresql"
    assert only.calls == ["s1"]


def test_a_held_connection_keeps_its_member_until_the_block_ends_and_close_closes_all():
    first, second = Member("a"), Member("b")
    spread = DatabaseConnections([first, second], wait_seconds=5)
    with spread.held_connection() as conn:
        assert conn == "conn-a"
        assert spread.latest("s") == "b"  # a was taken
    spread.close()
    assert first.closed and second.closed
