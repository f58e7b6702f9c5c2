"""The soak's durability check, fed each anomaly it exists to find (a checker
that passes everything proves nothing): a missing row, other content,
an unacknowledged row, a session row behind, a delete not marked."""
from __future__ import annotations

import random

import pytest

from sessionsync.bench.soak import Ack, Pool, check_durability, parse_mix


class FakeRows:
    """What psycopg's connection.execute(...).fetchall() gives the check."""

    def __init__(self, events, sessions):
        self.events, self.sessions = events, sessions

    def execute(self, sql, params):
        rows = self.events if "FROM sync_events" in sql else self.sessions
        ids = set(params[0])
        return type("Cursor", (), {"fetchall": lambda _: [r for r in rows if r[0] in ids]})()


ACKS = [Ack("a", 1, "create", {"n": 1}), Ack("a", 2, "update", {"n": 2}),
        Ack("b", 1, "create", {"n": 1}), Ack("b", 2, "delete", None)]
EVENTS = [("a", 1, "session_created", {"n": 1}), ("a", 2, "session_updated", {"n": 2}),
          ("b", 1, "session_created", {"n": 1}), ("b", 2, "session_deleted", None)]
SESSIONS = [("a", 2, False, {"n": 2}), ("b", 2, True, None)]


def test_what_was_acknowledged_and_persisted_is_exact():
    result = check_durability(FakeRows(EVENTS, SESSIONS), ACKS, unknown_writes=0)
    assert result.exact and result.summary()["checked_writes"] == 4


@pytest.mark.parametrize(("events", "sessions", "field"), [
    (EVENTS[1:], SESSIONS, "missing"),
    ([EVENTS[0], ("a", 2, "session_updated", {"n": 3}), *EVENTS[2:]], SESSIONS, "wrong_content"),
    ([*EVENTS, ("a", 3, "session_updated", {"n": 9})], SESSIONS, "unacknowledged_rows"),
    (EVENTS, [("a", 1, False, {"n": 1}), SESSIONS[1]], "sessions_wrong"),
    (EVENTS, [SESSIONS[0], ("b", 2, False, {"n": 1})], "deletes_unmarked"),
    (EVENTS, [("a", 2, False, {"n": 1}), SESSIONS[1]], "sessions_wrong"),
])
def test_each_anomaly_fails_the_check(events, sessions, field):
    result = check_durability(FakeRows(events, sessions), ACKS, unknown_writes=0)
    assert not result.exact
    assert result.summary()[field] == 1


def test_a_row_of_a_write_whose_answer_never_came_is_tolerated_once():
    events = [*EVENTS, ("a", 3, "session_updated", {"n": 9})]
    assert check_durability(FakeRows(events, SESSIONS), ACKS, unknown_writes=1).exact
    events.append(("a", 4, "session_updated", {"n": 10}))
    assert not check_durability(FakeRows(events, SESSIONS), ACKS, unknown_writes=1).exact


def test_the_mix_is_parsed_and_refused_with_a_reason():
    assert parse_mix("read=1, delete=2") == {"read": 1, "update": 0, "create": 0, "delete": 2}
    for bad, reason in (("read=x", "whole number"), ("write=1", "unknown"), ("read=0", "no operation"),
                        ("read=-1", "negative")):
        with pytest.raises(ValueError, match=reason):
            parse_mix(bad)


def test_the_pool_hands_out_each_session_to_one_deleter():
    pool = Pool("p")
    ids = [pool.new_id() for _ in range(3)]
    for sid in ids:
        pool.add(sid)
    assert pool.discard(ids[0]) and not pool.discard(ids[0])
    assert len(pool) == 2
    assert {pool.pick(random.Random(seed)) for seed in range(20)} == set(ids[1:])
