"""The checker catches what it is for: each rule is fed a small history
with exactly its anomaly (and a clean one), so that a green chaos run
means the rules held, not that the checker looked away.  No servers."""
from __future__ import annotations

import json

from tests.chaos.history import History, Observed, Op, check, never_sent

SID = "s"


def _write(kind, version, state, start, end, outcome="ok", sid=SID, process=1, ttl=None):
    return Op(process, kind, sid, start, end, outcome, version, state, ttl=ttl)


def _read(version, state, start, end, absent=None, sid=SID):
    return Op(9, "read", sid, start, end, "ok", version, state, absent=absent)


def _observed(rows=None, sessions=None, dead=(), published=None):
    rows = rows if rows is not None else {}
    if published is None:
        published = [{"session_id": sid, "version": v, "event_type": t, "state": s}
                     for (sid, v), (t, s) in rows.items()]
    return Observed(rows, sessions or {}, list(dead), published)


def _clean():
    history = History([_write("create", 1, {"w": "a"}, 0, 1), _write("update", 2, {"w": "b"}, 2, 3),
                       _read(2, {"w": "b"}, 4, 5)])
    rows = {(SID, 1): ("session_created", {"w": "a"}), (SID, 2): ("session_updated", {"w": "b"})}
    return history, _observed(rows, {SID: (2, False)})


def _rules(violations):
    return sorted({v[:3] for v in violations})


def test_a_clean_history_passes():
    assert check(*_clean()) == []


def test_a_lost_acknowledged_write_breaks_rule_a():
    history, observed = _clean()
    del observed.rows[(SID, 2)]
    observed.published.pop()

    assert "(a)" in _rules(check(history, observed))


def test_an_acknowledged_write_persisted_with_other_content_breaks_rules_a_and_d():
    history, observed = _clean()
    observed.rows[(SID, 2)] = ("session_updated", {"w": "other"})

    assert _rules(check(history, observed)) == ["(a)", "(d)", "(e)"]


def test_a_read_older_than_an_earlier_acknowledged_write_breaks_rule_b():
    history, observed = _clean()
    history.add(_read(1, {"w": "a"}, 6, 7))

    assert _rules(check(history, observed)) == ["(b)"]


def test_a_read_that_finds_nothing_after_an_acknowledged_create_breaks_rule_b():
    history, observed = _clean()
    history.add(_read(None, None, 6, 7, absent="missing"))

    assert _rules(check(history, observed)) == ["(b)"]


def test_a_read_overlapping_a_write_may_see_either_version():
    history, observed = _clean()
    history.add(_read(1, {"w": "a"}, 2.5, 3.5))  # began before v2 was acknowledged

    assert check(history, observed) == []


def test_a_session_back_after_its_acknowledged_delete_breaks_rule_c():
    history, observed = _clean()
    history.add(_write("delete", 3, None, 6, 7))
    observed.rows[(SID, 3)] = ("session_deleted", None)
    observed.published.append({"session_id": SID, "version": 3, "event_type": "session_deleted",
                               "state": None})
    observed.sessions[SID] = (3, True)
    assert check(history, observed) == []

    history.add(_read(4, {"w": "zombie"}, 8, 9))
    observed.sessions[SID] = (4, False)

    assert _rules(check(history, observed)) == ["(c)"]


def test_two_contents_for_one_version_anywhere_break_rule_d():
    history, observed = _clean()
    observed.published.append({"session_id": SID, "version": 2, "event_type": "session_updated",
                               "state": {"w": "fork"}})

    assert "(d)" in _rules(check(history, observed))


def test_a_published_change_neither_persisted_nor_dead_lettered_breaks_rule_e():
    history, observed = _clean()
    observed.published.append({"session_id": SID, "version": 3, "event_type": "session_updated",
                               "state": {"w": "unacknowledged"}})

    assert _rules(check(history, observed)) == ["(e)"]

    letter = {"body": json.dumps({"session_id": SID, "version": 3, "event_type": "session_updated",
                                  "state": {"w": "unacknowledged"}}),
              "error_code": "version_conflict", "error_class": "PermanentPersistenceError"}
    observed.dead_letters.append(letter)
    assert check(history, observed) == []


def test_a_dead_letter_without_its_reason_breaks_rule_e():
    history, observed = _clean()
    observed.dead_letters.append({"body": "garbage"})

    assert _rules(check(history, observed)) == ["(e)"]


def test_a_write_of_unknown_outcome_may_or_may_not_be_persisted():
    history, observed = _clean()
    history.add(_write("update", 3, {"w": "maybe"}, 6, 7, outcome="info"))

    assert check(history, observed) == []


def test_a_loss_the_system_reported_is_left_out_of_rules_a_b_d():
    history, observed = _clean()
    del observed.rows[(SID, 2)]
    observed.published.pop()
    history.add(_read(1, {"w": "a"}, 6, 7))

    assert check(history, observed, allow_lost={(SID, 2)}) == []


def test_a_touch_and_an_expiry_in_the_history_pass():
    history, observed = _clean()
    history.add(_write("touch", 3, {"w": "b"}, 6, 7, ttl=5))
    observed.rows[(SID, 3)] = ("session_touched", {"w": "b"})
    observed.rows[(SID, 4)] = ("session_expired", None)
    observed.published.extend([
        {"session_id": SID, "version": 3, "event_type": "session_touched", "state": {"w": "b"}},
        {"session_id": SID, "version": 4, "event_type": "session_expired", "state": None}])
    history.add(_read(None, None, 13, 14, absent="expired"))

    assert check(history, observed) == []


def test_a_touch_persisted_with_another_state_breaks_rules_a_and_d():
    history, observed = _clean()
    history.add(_write("touch", 3, {"w": "b"}, 6, 7))
    observed.rows[(SID, 3)] = ("session_touched", {"w": "other"})

    assert _rules(check(history, observed)) == ["(a)", "(d)"]


def _owned(sid, start, end, outcome="ok", owner="u"):
    return Op(1, "create", sid, start, end, outcome, 1 if outcome == "ok" else None, {"w": sid},
              owner=owner)


def _revoke(start, end, remaining=False, owner="u"):
    return Op(2, "revoke", owner, start, end, "ok", 1, {"remaining": remaining})


def test_an_owned_session_created_before_a_complete_revoke_all_that_survives_breaks_rule_f():
    history = History([_owned("o1", 0, 1), _owned("o2", 0, 1, "info"), _revoke(2, 3)])
    rows = {("o1", 1): ("session_created", {"w": "o1"}), ("o1", 2): ("session_deleted", None)}
    assert check(history, _observed(rows, {"o1": (2, True)})) == []
    survived = _observed({("o1", 1): ("session_created", {"w": "o1"})}, {"o1": (1, False)})
    assert _rules(check(history, survived)) == ["(f)"]
    unknown_live = _observed({**rows, ("o2", 1): ("session_created", {"w": "o2"})},
                             {"o1": (2, True), "o2": (1, False)})
    assert _rules(check(history, unknown_live)) == ["(f)"]
    read_back = History([*history.ops, Op(9, "read", "o1", 4, 5, "ok", 1, {"w": "o1"})])
    assert "(f)" in _rules(check(read_back, _observed(rows, {"o1": (2, True)})))


def test_rule_f_spares_creates_racing_the_revoke_all_other_owners_and_unfinished_revokes():
    rows = {("o1", 1): ("session_created", {"w": "o1"})}
    live = {"o1": (1, False)}
    for history in (History([_owned("o1", 0, 2.5), _revoke(2, 3)]),  # ended after it started
                    History([_owned("o1", 0, 1, owner="v"), _revoke(2, 3)]),
                    History([_owned("o1", 0, 1), _revoke(2, 3, remaining=True)])):
        assert check(history, _observed(rows, live)) == []


def test_rule_f_spares_an_unknown_create_whose_id_another_create_made_and_no_other():
    """The owner's create got 503s (PostgreSQL down: it could not learn the
    id was new) and never ran; a create of the same id without an owner
    made it later, before the revoke-all, which rightly left it."""
    theirs = Op(3, "create", "o1", 4, 5, "ok", 1, {"w": "other"})
    history = History([_owned("o1", 0, 1, "info"), theirs, _revoke(6, 7),
                       Op(9, "read", "o1", 8, 9, "ok", 1, {"w": "other"})])
    made_by_other = _observed({("o1", 1): ("session_created", {"w": "other"})}, {"o1": (1, False)})
    assert check(history, made_by_other) == []
    # had the owner's create made it, it should not have survived
    history = History([_owned("o1", 0, 1, "info"), _revoke(6, 7),
                       Op(9, "read", "o1", 8, 9, "ok", 1, {"w": "o1"})])
    made_by_owner = _observed({("o1", 1): ("session_created", {"w": "o1"})}, {"o1": (1, False)})
    assert _rules(check(history, made_by_owner)) == ["(f)"]


def _revoke_wrote(start, end, tombstones, owner="u"):
    return Op(2, "revoke", owner, start, end, "ok", len(tombstones),
              {"remaining": False, "deleted": tombstones})


def test_rule_f_excuses_a_revoke_all_tombstone_reported_lost_and_nothing_else():
    """The revoke-all deleted o1 (v2); Redis forgot that tombstone with its
    outbox (reported): o1 came back at v1.  Only that loss is excused: a
    revoke-all begun after Redis forgot must delete o1 again."""
    rows = {("o1", 1): ("session_created", {"w": "o1"})}
    published = [{"session_id": "o1", "version": 1, "event_type": "session_created",
                  "state": {"w": "o1"}},
                 {"session_id": "o1", "version": 2, "event_type": "session_deleted", "state": None}]
    history = History([_owned("o1", 0, 1), _revoke_wrote(2, 3, [["o1", 2, 2.1, 2.2]]),
                       Op(0, "forget", "redis", 4, 4, "ok"),
                       Op(9, "read", "o1", 5, 5.5, "ok", 1, {"w": "o1"})])
    came_back = _observed(rows, {"o1": (1, False)}, published=published)
    assert check(history, came_back, allow_lost={("o1", 2)}) == []
    assert _rules(check(history, came_back)) == ["(e)", "(f)"]
    # a loss Redis did not have (no forget after the revoke-all began)
    not_forgotten = History([op for op in history.ops if op.kind != "forget"])
    assert _rules(check(not_forgotten, came_back, allow_lost={("o1", 2)})) == ["(f)"]
    # a revoke-all begun after Redis forgot, that left o1 live
    history.add(_revoke_wrote(6, 7, []))
    history.add(Op(9, "read", "o1", 8, 9, "ok", 1, {"w": "o1"}))
    assert _rules(check(history, came_back, allow_lost={("o1", 2)})) == ["(f)"]


def test_a_revoke_all_tombstone_never_sent_and_lost_by_a_failover_is_excused_one_sent_is_not():
    """Replication stopped at 1.5; the revoke-all deleted o1 (v2) on the
    primary; its send to SQS timed out, and before the relay ran, a failover
    to the replica lost it (at 2.5, while the send was still waiting): o1
    is back at v1, as any acknowledged write that never reached SQS may be
    lost (reported).  Had SQS accepted the tombstone, it must have been
    persisted: then the same history breaks rules (e) and (f)."""
    history = History([_owned("o1", 0, 1), _revoke_wrote(2, 3, [["o1", 2, 2.1, 2.6]]),
                       Op(0, "forget", "redis", 2.5, 2.5, "ok"),
                       Op(9, "read", "o1", 4, 4.5, "ok", 1, {"w": "o1"})])
    published = [{"session_id": "o1", "version": 1, "event_type": "session_created",
                  "state": {"w": "o1"}},
                 {"session_id": "o1", "version": 2, "event_type": "session_deleted", "state": None}]
    came_back = _observed({("o1", 1): ("session_created", {"w": "o1"})}, {"o1": (1, False)},
                          published=published)
    created = ("o1", 1, json.dumps({"w": "o1"}, sort_keys=True))

    lost = never_sent(history, [created], since=1.5)
    assert lost == {("o1", 2)}
    assert check(history, came_back, allow_lost=lost) == []

    sent = never_sent(history, [created, ("o1", 2, "null")], since=1.5)
    assert sent == set()
    assert _rules(check(history, came_back, allow_lost=sent)) == ["(e)", "(f)"]
    # written before replication stopped: on the replica too, not lost by it
    assert never_sent(history, [created], since=2.2) == set()


def test_a_revoke_all_that_ends_a_session_created_after_it_began_breaks_rule_f():
    """The revoke-all took its snapshot of the owner's ids at 2.2: o1 (created
    before) is its to end, o2 (its create began at 2.5) is not."""
    def revoke(tombstones):
        return Op(2, "revoke", "u", 2, 3, "ok", len(tombstones),
                  {"remaining": False, "deleted": tombstones, "began": 2.2})

    rows = {("o1", 1): ("session_created", {"w": "o1"}), ("o1", 2): ("session_deleted", None),
            ("o2", 1): ("session_created", {"w": "o2"})}
    creates = [_owned("o1", 0, 1), _owned("o2", 2.5, 2.6)]
    fine = History([*creates, revoke([["o1", 2, 2.3, 2.4]])])
    assert check(fine, _observed(rows, {"o1": (2, True), "o2": (1, False)})) == []
    rows[("o2", 2)] = ("session_deleted", None)
    chased = History([*creates, revoke([["o1", 2, 2.3, 2.4], ["o2", 2, 2.7, 2.8]])])
    assert _rules(check(chased, _observed(rows, {"o1": (2, True), "o2": (2, True)}))) == ["(f)"]


def test_a_patch_persisted_with_other_content_than_it_answered_breaks_rules_a_and_d():
    # a patch is recorded with the whole state the service answered
    history, observed = _clean()
    history.add(_write("patch", 3, {"w": "c", "patched_by": 1}, 6, 7))
    observed.rows[(SID, 3)] = ("session_updated", {"w": "c"})  # e.g. merged into a stale read
    observed.published.append({"session_id": SID, "version": 3, "event_type": "session_updated",
                               "state": {"w": "c"}})

    assert _rules(check(history, observed)) == ["(a)", "(d)"]


def test_an_expired_answer_before_the_lifetime_could_end_breaks_rule_g():
    history, observed = _clean()
    history.add(_write("touch", 3, {"w": "b"}, 6, 7, ttl=60))
    observed.rows[(SID, 3)] = ("session_touched", {"w": "b"})
    observed.published.append({"session_id": SID, "version": 3, "event_type": "session_touched",
                               "state": {"w": "b"}})
    history.add(_read(None, None, 8, 9, absent="expired"))

    assert _rules(check(history, observed)) == ["(g)"]


def test_an_expired_answer_at_the_millisecond_the_stamped_lifetime_ends_keeps_rule_g():
    """The service stamps a write to the millisecond, truncated: a write sent
    at 6.0004 may be stamped 6.000 and, with a TTL of 1 s, end at 7.000, the
    expires_at it answered.  An expiry judged then is the service keeping
    its word; one judged a millisecond before the stamp could be is not."""
    for read, broken in (((7.0000, 7.0002), []), ((6.9984, 6.9988), ["(g)"])):
        history, observed = _clean()
        history.add(_write("touch", 3, {"w": "b"}, 6.0004, 6.002, ttl=1))
        observed.rows[(SID, 3)] = ("session_touched", {"w": "b"})
        observed.published.append({"session_id": SID, "version": 3, "event_type": "session_touched",
                                   "state": {"w": "b"}})
        history.add(_read(None, None, *read, absent="expired"))

        assert _rules(check(history, observed)) == broken, read


def test_a_session_back_after_it_was_seen_expired_breaks_rule_g():
    history, observed = _clean()
    history.add(_read(None, None, 6, 7, absent="expired"))
    history.add(_read(2, {"w": "b"}, 8, 9))

    assert _rules(check(history, observed)) == ["(g)"]


def test_a_write_after_the_session_expired_event_breaks_rule_g():
    history, observed = _clean()
    observed.rows[(SID, 3)] = ("session_expired", None)
    observed.rows[(SID, 4)] = ("session_updated", {"w": "late"})
    observed.published[:] = [{"session_id": s, "version": v, "event_type": t, "state": st}
                             for (s, v), (t, st) in observed.rows.items()]
    history.add(_write("update", 4, {"w": "late"}, 6, 7))

    assert _rules(check(history, observed)) == ["(g)"]


def test_an_expiry_and_a_write_under_one_version_break_rule_d():
    history, observed = _clean()
    history.add(_write("update", 3, {"w": "c"}, 6, 7))
    observed.rows[(SID, 3)] = ("session_updated", {"w": "c"})
    observed.published.append({"session_id": SID, "version": 3, "event_type": "session_expired",
                               "state": None})

    assert "(d)" in _rules(check(history, observed))


def test_a_patch_acknowledged_after_a_delete_breaks_rule_c():
    history, observed = _clean()
    history.add(_write("delete", 3, None, 6, 7))
    history.add(_write("patch", 4, {"w": "c"}, 8, 9))
    observed.rows[(SID, 3)] = ("session_deleted", None)
    observed.rows[(SID, 4)] = ("session_updated", {"w": "c"})
    observed.sessions[SID] = (4, False)

    assert "(c)" in _rules(check(history, observed))


def test_rule_f_takes_a_session_whose_lifetime_ended_as_over_but_not_one_read_live_after():
    """The revoke-all leaves an expired session to the sweep: its
    session_expired row is enough; a read that finds it live after the
    revoke-all still breaks the rule."""
    rows = {("o1", 1): ("session_created", {"w": "o1"}), ("o1", 2): ("session_expired", None)}
    history = History([_owned("o1", 0, 1), _revoke(2, 3)])
    assert "(f)" not in _rules(check(history, _observed(rows, {"o1": (2, False)})))
    read_back = History([*history.ops, Op(9, "read", "o1", 4, 5, "ok", 1, {"w": "o1"})])
    assert "(f)" in _rules(check(read_back, _observed(rows, {"o1": (2, False)})))
