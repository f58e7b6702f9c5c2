"""Where a demoted primary's history ended, read from its INFO replication
(client.ended_history): the evidence a failover lost nothing.  The INFO
fields are those Redis 7 reports; the integration tests read real ones
(tests/integration/redis/test_failover_evidence.py)."""
from __future__ import annotations

from chalicelib.adapters.redis.client import ended_history

OLD = "a" * 40
NEW = "b" * 40
NONE = "0" * 40


def test_a_demoted_node_not_yet_resynchronised_ends_its_own_history_where_it_stands():
    info = {"role": "slave", "master_link_status": "down", "master_replid": OLD,
            "master_repl_offset": "1091", "master_replid2": NONE, "second_repl_offset": "-1"}

    assert ended_history(info) == (OLD, 1091)


def test_a_demoted_node_the_new_primary_continued_names_the_history_it_left():
    info = {"role": "slave", "master_link_status": "up", "master_replid": NEW,
            "master_repl_offset": "1186", "master_replid2": OLD, "second_repl_offset": "1092"}

    assert ended_history(info) == (OLD, 1091)


def test_a_demoted_node_that_needed_a_full_resync_says_nothing():
    """The new primary lacked some of its writes: no evidence, the settle time."""
    info = {"role": "slave", "master_link_status": "up", "master_replid": NEW,
            "master_repl_offset": "1186", "master_replid2": NONE, "second_repl_offset": "-1"}

    assert ended_history(info) is None


def test_a_primary_or_a_garbled_answer_says_nothing():
    primary = {"role": "master", "master_replid": OLD, "master_repl_offset": "10",
               "master_replid2": NONE, "second_repl_offset": "-1"}
    short = {"role": "slave", "master_link_status": "down", "master_replid": "abc",
             "master_repl_offset": "10"}
    no_offset = {"role": "slave", "master_link_status": "down", "master_replid": OLD}

    assert [ended_history(i) for i in (primary, short, no_offset, {})] == [None] * 4
