"""`sessionsync serve` runs the worker and the relay beside the API: a write
is in PostgreSQL within seconds, with nothing else started."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid

import pytest

from tests.support.constants import API_KEY, LOCALSTACK_URL
from tests.support.pipeline import outbox_entries_of, wait_until
from tests.support.servers import serve_process

pytestmark = [pytest.mark.localstack, pytest.mark.slow]


@pytest.fixture
def served(pipeline, pipeline_redis, tmp_path):
    env = {**os.environ, "REDIS_URL": pipeline_redis.url, "DATABASE_URL": pipeline.dsn,
           "SESSION_QUEUE_URL": pipeline.queues.url, "SESSION_DLQ_URL": pipeline.queues.dlq_url,
           "AWS_ENDPOINT_URL": LOCALSTACK_URL, "SESSIONSYNC_API_KEYS": API_KEY,
           "OUTBOX_RELAY_AGE_SECONDS": "1", "LOG_LEVEL": "WARNING"}
    with serve_process(env, tmp_path) as (port, _log):
        yield f"http://127.0.0.1:{port}"


def _send(method, url, body):
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode(), headers={
        "Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return reply.status


def test_a_write_through_sessionsync_serve_reaches_postgresql_with_nothing_else_started(served, pipeline):
    sid = f"served-{uuid.uuid4().hex[:8]}"

    assert _send("POST", f"{served}/sessions", {"session_id": sid, "state": {"a": 1}}) == 201
    # usually a second or two; the margin is for a busy machine (a missing
    # worker never delivers at all)
    wait_until(lambda: pipeline.event_rows([sid]), timeout=30, what="the row in sync_events",
               interval=0.05)

    # an entry that never reached SQS is picked up by the relay thread (age 1 s)
    pipeline.store.update(sid, '{"a":2}', 1)
    wait_until(lambda: (sid, 2) in pipeline.event_rows([sid]), timeout=30,
               what="the relayed version 2", interval=0.05)
    wait_until(lambda: outbox_entries_of(pipeline.store, [sid]) == [], timeout=10,
               what="the relay's acknowledgement of version 2")
