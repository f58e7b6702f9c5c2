"""Fixtures of the fault-injection suite: a whole stack per test, torn down after."""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.chaos.stack import ChaosStack
from tests.support.constants import LOCALSTACK_URL


@pytest.fixture
def make_stack(queue_pair) -> Iterator[Callable[..., ChaosStack]]:
    """``make_stack(redis_url=..., pg_dsn=..., **options)``: a started stack."""
    stacks: list[ChaosStack] = []

    def make(*, redis_url: str, pg_dsn: str, **options) -> ChaosStack:
        stack = ChaosStack(redis_url=redis_url, pg_dsn=pg_dsn, localstack_url=LOCALSTACK_URL,
                           queues=queue_pair, channel=f"chaos-{uuid.uuid4().hex[:8]}", **options)
        stacks.append(stack)
        return stack.start()

    yield make
    for stack in stacks:
        stack.close()
