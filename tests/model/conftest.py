"""The model test's world: a whole sessionsync, all real, for one test."""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from sessionsync import provisioning
from tests.model.machine import ModelMachine
from tests.model.model import PROMISES
from tests.model.world import ClusterWorld, World
from tests.support.constants import LOCALSTACK_URL
from tests.support.servers import ReplicatedRedisCluster, running


@pytest.fixture
def world(replicated_redis, queue_pair, empty_dsn) -> Iterator[World]:
    """A database of the world's own: the expiry sweep walks every session of it."""
    provisioning.migrate(empty_dsn)
    built = World(replicated_redis, empty_dsn, LOCALSTACK_URL, queue_pair,
                  channel=f"model-{uuid.uuid4().hex[:8]}")
    yield built
    built.close()


@pytest.fixture
def cluster_world(tmp_path, queue_pair, empty_dsn) -> Iterator[ClusterWorld]:
    """The same, on a Redis Cluster of the world's own (three shards of a
    master and a replica, each node behind a proxy it announces)."""
    provisioning.migrate(empty_dsn)
    with running(ReplicatedRedisCluster(tmp_path / "cluster")) as cluster:
        built = ClusterWorld(cluster, empty_dsn, LOCALSTACK_URL, queue_pair,
                             channel=f"model-{uuid.uuid4().hex[:8]}")
        yield built
        built.close()


def _machine_on(world: World):
    ModelMachine.world = world
    ModelMachine.promises = frozenset(PROMISES)

    def make() -> ModelMachine:
        state = ModelMachine()
        state.start()
        return state
    return make


@pytest.fixture
def machine(world):
    """``machine()``: a machine on the world, started (a replay of steps)."""
    return _machine_on(world)


@pytest.fixture
def cluster_machine(cluster_world):
    """``machine()`` on the cluster's world."""
    return _machine_on(cluster_world)
