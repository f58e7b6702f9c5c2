"""The local worker (`sessionsync serve`'s pollers, `sessionsync worker`)
against a slow LocalStack: a long poll's reply that comes late is still
taken, not abandoned with the messages it took (they would stay invisible
for the whole visibility timeout: minutes of persistence lag, found by
`sessionsync soak`)."""
from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import pytest

from tests.support.pipeline import event_body
from tests.support.servers import TcpProxy

pytestmark = [pytest.mark.localstack]


@pytest.fixture
def slow_sqs(localstack_settings):
    proxy = TcpProxy(int(localstack_settings.aws_endpoint_url.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


def test_an_idle_long_poll_longer_than_a_request_s_read_timeout_ends_empty_not_in_an_error(
        pipeline, localstack_settings, use_settings):
    # `sessionsync worker` long-polls 10 s by default; on the shared SQS
    # client (a 3 s read timeout) every idle poll was a timeout, retried.
    from sessionsync.local_pipeline import build_worker
    use_settings(dataclasses.replace(localstack_settings, queue_url=pipeline.queues.url,
                                     dlq_url=pipeline.queues.dlq_url, database_url=pipeline.dsn))
    worker = build_worker(wait_seconds=4)

    assert worker.poll_once().received == 0


def test_a_long_poll_answered_late_by_a_stalled_localstack_delivers_its_messages(
        pipeline, slow_sqs, localstack_settings, use_settings):
    from sessionsync.local_pipeline import build_worker
    use_settings(dataclasses.replace(
        localstack_settings, aws_endpoint_url=f"http://127.0.0.1:{slow_sqs.port}",
        queue_url=pipeline.queues.url, dlq_url=pipeline.queues.dlq_url, database_url=pipeline.dsn))
    worker = build_worker(wait_seconds=2, visibility_timeout=120)
    worker.queue_arn()  # looked up now, not through the stall
    receives = []
    sent = threading.Event()

    def sending(**_) -> None:  # a before-send hook that returns something replaces the response
        receives.append(1)
        sent.set()
    worker.sqs.meta.events.register("before-send.sqs.ReceiveMessage", sending)
    results = []
    poller = threading.Thread(target=lambda: results.append(worker.poll_once()), daemon=True)
    poller.start()
    assert sent.wait(10)
    time.sleep(0.3)  # the long poll is waiting in LocalStack
    slow_sqs.freeze()
    sid = f"late-{uuid.uuid4().hex[:10]}"
    # straight to LocalStack: the waiting poll takes it, and its reply stalls
    pipeline.sqs.send_message(QueueUrl=pipeline.queues.url, MessageBody=event_body(sid, 1))
    time.sleep(4.0)  # longer than a default read timeout, shorter than the worker's
    slow_sqs.thaw()
    poller.join(timeout=60)

    assert not poller.is_alive()
    assert [r.received for r in results] == [1], results
    assert receives == [1]  # taken from the first reply, not from a second poll
    assert pipeline.event_rows([sid]) == [(sid, 1)]
