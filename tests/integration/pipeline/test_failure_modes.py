"""Failure modes found in review, each a test that fails without its fix:
a hung (not stopped) PostgreSQL or SQS, a connection that breaks after Redis
ran a write, a second write
under an existing version, an event SQS would refuse, DLQ batches over
1 MiB, and an outbox whose first buckets hold entries SQS keeps refusing.

Hangs are made with tests/support/servers.TcpProxy in front of the real server,
so the shared servers are never stopped."""
from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
from botocore.exceptions import EndpointConnectionError

from chalicelib.adapters import aws
from chalicelib.adapters.postgres.database import Database
from chalicelib.adapters.redis.keys import BUCKETS, bucket_of
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.domain.validation import create_request
from chalicelib.pipeline.outbox import OutboxRelay
from chalicelib.service.sessions import SessionService
from tests.support.constants import TEST_CHANNEL
from tests.support.pipeline import event_body, outbox_entries_of
from tests.support.servers import TcpProxy, free_port

pytestmark = [pytest.mark.localstack]

# A call that must not hang gets several times the one-second budget it is
# built with (docs/guarantees.md, 5): a busy machine is slow, a hang never ends.
HANG_BOUND_SECONDS = 5.0


@pytest.fixture
def proxy_factory():
    proxies = []

    def make(port: int, host: str = "127.0.0.1") -> TcpProxy:
        proxies.append(TcpProxy(port, host))
        return proxies[-1]
    yield make
    for p in proxies:
        p.close()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_a_recovery_read_from_a_hung_postgresql_answers_503_at_its_deadline_instead_of_hanging(
        pipeline, proxy_factory, pg_test_dsn):
    proxy = proxy_factory(5432)
    dsn = pg_test_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert dsn != pg_test_dsn
    db = Database.from_dsn(dsn)
    try:
        db.ping()  # a warm connection, then the server stops answering
        proxy.freeze()
        service = SessionService(pipeline.store, durable=db)
        start = time.monotonic()
        with pytest.raises(ServiceUnavailable) as caught:
            service.get(new_id("gone"))  # not in Redis: recovery reads PostgreSQL
        # without the read deadline the frozen socket waits forever; the
        # margin is for a busy machine, not for the code
        assert time.monotonic() - start < HANG_BOUND_SECONDS
        assert caught.value.dependency == "postgresql"
        proxy.thaw()
        assert db.ping() > 0  # reconnects by itself
    finally:
        db.close()


def test_with_sqs_hung_writes_through_the_app_answer_without_trying_it_and_the_relay_ships_them(
        pipeline, pipeline_settings, proxy_factory, localstack_settings, use_settings):
    # the request path has no SQS call at all: a write answers once Redis
    # committed it; the relay, SQS's only client, ships it once SQS answers
    import dataclasses

    from chalice.test import Client

    from app import app
    from tests.support.constants import API_KEY
    proxy = proxy_factory(int(localstack_settings.aws_endpoint_url.rsplit(":", 1)[1]))
    proxy.freeze()
    use_settings(dataclasses.replace(pipeline_settings,
                                     aws_endpoint_url=f"http://127.0.0.1:{proxy.port}"))
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    sid = new_id("hung-sqs")
    with Client(app, stage_name="local") as client:
        start = time.monotonic()
        reply = client.http.post("/sessions", headers=headers,
                                 body=json.dumps({"session_id": sid, "state": {"n": 1}}))
        assert reply.status_code == 201, reply.body
        for step in (2, 3):
            reply = client.http.put(f"/sessions/{sid}", headers={**headers, "If-Match": f'"{step - 1}"'},
                                    body=json.dumps({"state": {"n": step}}))
            assert reply.status_code == 200, reply.body
        took = time.monotonic() - start
    assert took < HANG_BOUND_SECONDS, f"three writes took {took:.2f}s with SQS hung"
    assert outbox_entries_of(pipeline.store, [sid]) == [f"{sid}:{v}" for v in (1, 2, 3)]

    proxy.thaw()
    pipeline.deliver(timeout=60)
    assert outbox_entries_of(pipeline.store, [sid]) == []
    assert pipeline.event_rows([sid]) == [(sid, 1), (sid, 2), (sid, 3)]


def test_a_connection_cut_after_redis_ran_a_write_is_a_503_never_a_false_conflict(
        redis_single, proxy_factory, session_id):
    proxy = proxy_factory(redis_single.connection_pool.connection_kwargs["port"])
    from chalicelib.adapters.redis.client import connect_redis
    from chalicelib.config import Settings
    db = redis_single.connection_pool.connection_kwargs["db"]
    client = connect_redis(Settings(redis_url=f"redis://127.0.0.1:{proxy.port}/{db}"))
    store = SessionStore(client, channel=TEST_CHANNEL)
    store.create(session_id, '{"n":0}', 60)

    proxy.cut_after_request()  # the script runs; its reply never arrives
    with pytest.raises(ServiceUnavailable):
        store.update(session_id, '{"n":1}', 1)

    # applied exactly once: not re-sent (that would answer ConcurrencyError
    # for a write that succeeded, and a retry loop would apply it twice)
    assert SessionStore(redis_single).get(session_id).version == 2
    assert store.get(session_id).state == {"n": 1}  # reads recover on a new connection


def test_a_second_write_under_a_persisted_version_goes_to_the_dlq_as_a_version_conflict(pipeline):
    sid = new_id("reused")
    pipeline.send_bodies([event_body(sid, 1, {"owner": "alice"}, occurred_at="2026-11-28T10:00:00.000Z")])
    pipeline.drain(timeout=60)
    # the id is created again after Redis lost its marker: version 1 again
    pipeline.send_bodies([event_body(sid, 1, {"owner": "bob"}, occurred_at="2026-11-28T11:00:00.000Z"),
                          event_body(sid, 1, {"owner": "alice"}, occurred_at="2026-11-28T10:00:00.000Z")])
    pipeline.drain(timeout=60)

    assert pipeline.event_rows([sid]) == [(sid, 1)]
    letters = pipeline.dlq_messages(expected=1)
    assert len(letters) == 1  # bob's; alice's redelivery is a plain duplicate
    assert json.loads(letters[0]["body"])["state"] == {"owner": "bob"}
    assert letters[0]["error_code"] == "version_conflict"


def test_a_state_with_unicode_noncharacters_reaches_postgresql(pipeline):
    sid = new_id("nonchar")
    state = {"a": "x\ufffe\uffff", "\uffff": 1}
    service = SessionService(pipeline.store)
    service.create(create_request(json.dumps({"session_id": sid, "state": state}).encode(), 4096))
    pipeline.deliver(timeout=60)
    assert outbox_entries_of(pipeline.store, [sid]) == []  # SQS took it
    assert pipeline.session_rows([sid])[sid][1] == state


def test_poison_messages_too_big_to_dead_letter_in_one_batch_all_reach_the_dlq_with_a_reason(pipeline):
    bodies = [("not json " + str(i)) * 20_000 for i in range(6)]  # ~200 KB each, ~1.2 MB in all
    for body in bodies:
        pipeline.sqs.send_message(QueueUrl=pipeline.queues.url, MessageBody=body)
    pipeline.drain(timeout=60)
    letters = pipeline.dlq_messages(expected=6)
    assert len(letters) == 6
    assert {m["error_class"] for m in letters} == {"MalformedMessage"}
    assert all(m["receive_count"] == "1" for m in letters)  # at once, not after five receives


def test_entries_the_queue_keeps_refusing_do_not_starve_the_other_buckets(throwaway_redis):
    # a Redis of the test's own: the relay pages through every entry it
    # holds, and another test's leftovers would change what a page is
    store = SessionStore(redis.Redis.from_url(throwaway_redis.url))
    refused = set()
    # a full page of entries in the first buckets, which the sender refuses
    while len(refused) < 20:
        sid = new_id("stuck")
        if bucket_of(sid) < 10:
            refused.add(store.create(sid, "{}", 60).event_id)
    healthy = None
    while healthy is None:
        sid = new_id("healthy")
        if bucket_of(sid) > BUCKETS - 10:
            healthy = store.create(sid, "{}", 60).event_id

    class Refusing:
        def __init__(self):
            self.sent = []

        def send_many(self, events):
            ok = [eid for eid, _ in events if eid not in refused]
            self.sent += ok
            store.outbox_ack(ok)
            return ok

    sender = Refusing()
    relay = OutboxRelay(store, sender, age_seconds=0, page=20)
    for _ in range(3):
        relay.run_once()
    assert healthy in sender.sent


@pytest.mark.parametrize("attempts", [1, 2])
def test_an_aws_client_makes_exactly_the_attempts_it_was_built_with(attempts, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    client = aws.client("sqs", Settings(aws_endpoint_url=f"http://127.0.0.1:{free_port()}",
                                        aws_region="us-east-1"), attempts=attempts)
    sent = []
    client.meta.events.register("before-send.sqs.SendMessage", lambda **_: sent.append(1))
    with pytest.raises(EndpointConnectionError):  # a closed port: refused at once
        client.send_message(QueueUrl="http://127.0.0.1/000000000000/q", MessageBody="x")
    assert len(sent) == attempts
