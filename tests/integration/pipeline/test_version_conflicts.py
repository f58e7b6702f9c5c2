"""Two different events under one (session, version) never vanish as a
"duplicate": whatever the batching and however many consumers run at once,
every event whose version is taken by other content fails permanently with
``reason=version_conflict`` (the consumer dead-letters it), and a true
duplicate (the same event delivered again) is a success.
"""
from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from chalicelib.domain.errors import PermanentPersistenceError
from chalicelib.domain.events import parse_event
from tests.support.pipeline import event_body


def _event(session_id, version, state=None, **kwargs):
    return parse_event(event_body(session_id, version, state, **kwargs))


@pytest.fixture
def sid() -> str:
    return f"vc-{uuid.uuid4().hex[:12]}"


def _conflict_indexes(result) -> set[int]:
    return {i for i, error in result.failures.items()
            if isinstance(error, PermanentPersistenceError)
            and error.details.get("reason") == "version_conflict"}


def _stored_states(database, sid):
    rows = database._fetch("SELECT version, state FROM sync_events WHERE session_id = %s "
                           "ORDER BY version", (sid,))
    return [(int(v), s) for v, s in rows]


def test_two_different_events_for_one_version_in_one_batch_make_one_row_and_one_conflict(database, sid):
    result = database.apply_events([_event(sid, 1), _event(sid, 2, {"who": "a"}),
                                    _event(sid, 2, {"who": "b"})])

    assert result.inserted == 2
    assert _conflict_indexes(result) == {2}
    assert result.duplicates == 0
    assert _stored_states(database, sid) == [(1, {"v": 1}), (2, {"who": "a"})]


def test_the_same_event_twice_in_one_batch_is_one_row_and_one_duplicate(database, sid):
    result = database.apply_events([_event(sid, 1), _event(sid, 1)])

    assert (result.inserted, result.duplicates, result.failures) == (1, 1, {})


def test_an_event_that_differs_only_in_its_state_is_a_conflict_not_a_duplicate(database, sid):
    assert database.apply_events([_event(sid, 1, {"a": 1})]).inserted == 1

    result = database.apply_events([_event(sid, 1, {"a": 2})])

    assert _conflict_indexes(result) == {0}
    assert _stored_states(database, sid) == [(1, {"a": 1})]


def test_an_event_that_differs_only_in_its_time_or_type_is_a_conflict(database, sid):
    assert database.apply_events([_event(sid, 1), _event(sid, 2)]).inserted == 2

    later = database.apply_events([_event(sid, 2, occurred_at="2026-11-28T16:40:00.000Z")])
    deleted = database.apply_events([_event(sid, 2, event_type="session_deleted")])

    assert _conflict_indexes(later) == {0}
    assert _conflict_indexes(deleted) == {0}


def test_the_same_document_spelled_differently_is_a_duplicate(database, sid):
    first = parse_event(event_body(sid, 1, {"a": 1, "b": 2}))
    database.apply_events([first])
    reordered = parse_event(event_body(sid, 1, {"b": 2, "a": 1}))

    result = database.apply_events([reordered])

    assert (result.inserted, result.duplicates, result.failures) == (0, 1, {})


def test_a_conflict_committed_by_a_concurrent_batch_is_seen_after_waiting_for_it(database, pg_test_dsn, sid):
    """Consumer A holds (s, 1) uncommitted; consumer B's insert of another
    (s, 1) waits for it.  Once A commits, B must report a conflict, not a
    duplicate (B's statement snapshot predates A's row)."""
    other = psycopg.connect(pg_test_dsn)
    try:
        other.execute("INSERT INTO sync_events (session_id, version, event_type, state, occurred_at) "
                      "VALUES (%s, 1, 'session_created', '{\"who\": \"a\"}', now())", (sid,))
        results = []
        b = threading.Thread(target=lambda: results.append(
            database.apply_events([_event(sid, 1, {"who": "b"})])), daemon=True)
        b.start()
        # B is blocked on A's index entry until A commits
        b.join(timeout=1.0)
        assert b.is_alive(), "consumer B did not wait for A's uncommitted row"
        other.commit()
        b.join(timeout=30)
        assert not b.is_alive()
    finally:
        other.close()

    assert _conflict_indexes(results[0]) == {0}
    assert results[0].duplicates == 0
    assert _stored_states(database, sid) == [(1, {"who": "a"})]


def test_two_consumers_racing_on_the_same_versions_leave_one_row_and_one_conflict_per_version(
        pg_test_dsn, sid):
    from chalicelib.adapters.postgres.database import Database
    consumers = [Database.from_dsn(pg_test_dsn) for _ in range(2)]
    versions = range(1, 41)
    batches = [[_event(sid, v, {"writer": w, "v": v}) for v in versions] for w in ("a", "b")]
    results: list = [None, None]
    start = threading.Barrier(2)

    def run(i: int) -> None:
        start.wait(timeout=10)
        # in batches of 10, as SQS delivers them
        merged = {"inserted": 0, "conflicts": 0, "other": 0}
        for chunk in range(0, len(batches[i]), 10):
            result = consumers[i].apply_events(batches[i][chunk:chunk + 10])
            merged["inserted"] += result.inserted
            merged["conflicts"] += len(_conflict_indexes(result))
            merged["other"] += len(result.failures) - len(_conflict_indexes(result)) + result.duplicates
        results[i] = merged

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    finally:
        for db in consumers:
            db.close()

    assert results[0]["inserted"] + results[1]["inserted"] == len(versions)
    assert results[0]["conflicts"] + results[1]["conflicts"] == len(versions)
    assert results[0]["other"] == results[1]["other"] == 0
    assert len(_stored_states(consumers[0], sid)) == len(versions)
