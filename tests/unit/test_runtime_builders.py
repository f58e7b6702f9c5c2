"""What each function's first call builds (chalicelib/runtime.py): the consumer
and the relay leave the SQS client, and so boto3, out of a cold start that
does not send anything, yet a missing DLQ setting still fails the first batch."""
from __future__ import annotations

import pytest

from chalicelib import runtime
from chalicelib.config import SESSION_DLQ_URL, Settings
from chalicelib.domain.errors import ConfigurationError

DLQ = "http://127.0.0.1:4566/000000000000/unit-dlq"
QUEUE = "http://127.0.0.1:4566/000000000000/unit-queue"
DSN = "postgresql://postgres@127.0.0.1:5432/unit_never_connected"


@pytest.fixture
def sqs_builds(use_settings, monkeypatch) -> list[str]:
    """Each call of runtime.sqs(), which builds the boto3 client."""
    built: list[str] = []
    monkeypatch.setattr(runtime, "sqs", lambda: built.append("sqs") or object())
    return built


def test_the_consumer_builds_its_sqs_client_only_when_a_batch_needs_the_dlq(use_settings, sqs_builds):
    use_settings(Settings(database_url=DSN, dlq_url=DLQ, queue_url=QUEUE))

    consumer = runtime.consumer()

    assert sqs_builds == []
    assert consumer.dead_letters.queue_url == DLQ
    assert sqs_builds == ["sqs"]


def test_the_consumer_without_a_dlq_setting_fails_before_its_first_batch(use_settings, sqs_builds):
    use_settings(Settings(database_url=DSN, queue_url=QUEUE))

    with pytest.raises(ConfigurationError) as raised:
        runtime.consumer()

    assert raised.value.setting == SESSION_DLQ_URL
    assert sqs_builds == []


def test_the_relay_builds_its_producer_only_when_a_drain_has_entries_to_send(use_settings, sqs_builds):
    use_settings(Settings(queue_url=QUEUE), store=object())

    relay = runtime.relay()

    assert sqs_builds == []
    assert relay.sender.queue_url == QUEUE
    assert sqs_builds == ["sqs"]


class LambdaContext:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.mark.parametrize(("context", "budget"), [
    (LambdaContext(60_000), 55.0), (LambdaContext(30_000), 25.0),
    (LambdaContext(4_000), 1.0),  # however close the timeout, a run gets a second
    (None, 50.0),  # called locally, without a Lambda context
])
def test_a_scheduled_run_stops_five_seconds_before_its_timeout(context, budget):
    assert runtime.schedule_budget(context) == budget
