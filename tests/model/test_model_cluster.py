"""The model test on a Redis Cluster (REDIS_CLUSTER=true): the machine of
test_model.py over a world whose Redis is three shards of a master and a
replica, every node behind a proxy it announces (tests/model/world.py,
``ClusterWorld``; what each fault is there: world.REDIS_FAULTS).  A file of
its own, so that the README test command runs it beside the single node's
(``--dist loadfile``).

Its fixed budget (MODEL_CLUSTER_EXAMPLES, 3 derandomized examples: about
40 s here) is smaller than the single node's: the machine, the model and
the service's code paths are the same, and what differs (the cluster
client, MOVED, one shard failing over or restarting while the others
serve) shows in any example that draws a Redis fault.  `make model` runs
MODEL_EXAMPLES here too.
"""
from __future__ import annotations

import os

import pytest

from tests.model.test_model import run_model

pytestmark = [pytest.mark.model, pytest.mark.localstack, pytest.mark.cluster]

EXAMPLES = int(os.environ.get("MODEL_CLUSTER_EXAMPLES", os.environ.get("MODEL_EXAMPLES", "3")))


@pytest.mark.timeout(max(300, EXAMPLES * 60))
def test_every_answer_under_every_fault_is_one_the_model_allows_on_a_cluster(cluster_world):
    run_model(cluster_world, EXAMPLES)


def test_each_redis_fault_hits_a_shard_and_every_answer_is_one_the_model_allows(cluster_machine):
    """Each fault of world.REDIS_FAULTS once, on the shard of the session the
    step names, with writes around it and every session read after each
    step (the fixed budget's random examples need not draw them all): the
    reply cut, a key and a marker evicted, a planned CLUSTER FAILOVER, a
    TAKEOVER by a replica cut off before the last write, a master restarted
    empty with its nodes.conf, a flush.  At the end the pipeline drains and
    the history checker runs (teardown)."""
    state = cluster_machine()
    world = state.world
    cluster = world.redis
    for i in (0, 1):
        state.create(i=i, ttl=60, owned=True, via_put=False)
    s0 = state.ids[0]

    def master() -> int:
        return int(world._master(s0).port)

    def step(rule: str, **args: object) -> None:
        getattr(state, rule)(**args)
        state.every_session_reads_as_the_model_allows()

    def forget(kind: str, i: int) -> None:
        """A fault, then its settle time waited out (its 503s are
        allowed, and the writes after it are to land)."""
        step("redis_forgets", kind=kind, i=i)
        world.settled(state.stored_ids())
        if kind in ("restart-without-persistence", "flush"):
            # and the hold of a session Redis lost (its key and marker
            # gone), which the first read after the bucket settled starts
            for _ in range(2):
                step("time_passes", seconds=1.5, memory_pressure=False)

    step("pipeline_fault", kind="reply-cut-after-the-script-ran")
    step("put", i=0, precondition="if-match", stale=False, ttl=None)  # its reply cut: a 503
    step("put", i=1, precondition="if-match", stale=False, ttl=None)
    step("key_evicted", i=0)
    forget("marker-evicted", 1)
    step("patch", i=0, if_match=False, stale=False)
    before = master()
    forget("failover", 0)  # planned: the replica caught up
    assert master() != before
    step("put", i=0, precondition="if-match", stale=False, ttl=None)
    forget("replica-falls-behind", 0)
    step("put", i=0, precondition="if-match", stale=False, ttl=None)  # on the master alone
    before = master()
    forget("failover", 0)  # TAKEOVER: that write gone from Redis
    assert master() != before and not world.cut_off
    step("put", i=0, precondition="if-match", stale=False, ttl=None)
    forget("restart-without-persistence", 0)
    step("put", i=0, precondition="if-match", stale=False, ttl=None)
    forget("flush", 1)
    step("delete", i=1, if_match=False, stale=False)
    assert cluster.healthy()
    state.teardown()
