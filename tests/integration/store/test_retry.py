"""retry_on_conflict: the client-side answer to ConcurrencyError, against
the real store (single node and cluster)."""
from __future__ import annotations

import json
import threading

import pytest

from chalicelib.domain.errors import ConcurrencyError, SessionNotFound
from sessionsync.retry import retry_on_conflict


def increment(store, session_id: str) -> None:
    retry_on_conflict(
        read=lambda: store.get(session_id),
        change=lambda session: {"n": session.state["n"] + 1},
        write=lambda session, state: store.update(session_id, json.dumps(state), session.version),
        attempts=200, base_delay=0.001, max_delay=0.01)


def test_concurrent_increments_through_retry_on_conflict_lose_no_update(store, session_id):
    store.create(session_id, '{"n":0}', 600)
    writers, each = 8, 25
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(each):
                increment(store, session_id)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    session = store.get(session_id)
    assert session.state == {"n": writers * each}
    assert session.version == 1 + writers * each


def test_retry_on_conflict_rereads_and_reapplies_the_change_after_a_lost_race(store, session_id):
    store.create(session_id, '{"items":[]}', 60)
    calls = []

    def change(session):
        calls.append(session.version)
        if len(calls) == 1:  # another writer gets in between our read and our write
            store.update(session_id, json.dumps({"items": ["theirs"]}), session.version)
        return {"items": session.state["items"] + ["ours"]}

    result = retry_on_conflict(
        read=lambda: store.get(session_id), change=change,
        write=lambda session, state: store.update(session_id, json.dumps(state), session.version),
        sleep=lambda s: None)
    assert calls == [1, 2]
    assert result.session.version == 3
    assert store.get(session_id).state == {"items": ["theirs", "ours"]}


def test_retry_on_conflict_gives_up_after_its_attempts_with_the_last_conflict():
    attempts = []

    def write(session, state):
        attempts.append(state)
        raise ConcurrencyError("s", expected_version=1, actual_version=2 + len(attempts))

    with pytest.raises(ConcurrencyError) as caught:
        retry_on_conflict(read=lambda: None, change=lambda s: "x", write=write, attempts=3,
                          sleep=lambda s: None)
    assert len(attempts) == 3 and caught.value.actual_version == 5


def test_retry_on_conflict_does_not_retry_other_errors():
    reads = []

    def read():
        reads.append(1)
        raise SessionNotFound("gone")

    with pytest.raises(SessionNotFound):
        retry_on_conflict(read=read, change=lambda s: s, write=lambda s, v: v, sleep=lambda s: None)
    assert len(reads) == 1
