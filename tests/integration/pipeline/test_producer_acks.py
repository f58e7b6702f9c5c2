"""The outbox entry of a write leaves only once SQS took its message, and an
acknowledgement that fails after SQS took it is no error (the relay sends a
duplicate, which the consumer skips).  Real Redis; SQS is moto's, in
process.  docs/guarantees.md: "every acknowledged write appears exactly once".
"""
from __future__ import annotations

import redis

from chalicelib.adapters.redis.store import SessionStore
from chalicelib.pipeline.producer import SqsProducer
from tests.support.constants import TEST_CHANNEL
from tests.support.pipeline import outbox_entries_of


def _bodies(client, url):
    reply = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    return [m["Body"] for m in reply.get("Messages", [])]


def test_a_send_sqs_refuses_leaves_the_outbox_entry_for_the_relay(moto_sqs, redis_single, session_id):
    client, url = moto_sqs.client, moto_sqs.queue
    store = SessionStore(redis_single, channel=TEST_CHANNEL)
    written = store.create(session_id, '{"a":1}', 60)
    producer = SqsProducer(client, url + "-deleted", store)  # the queue is gone: refused

    assert producer.publish(written) is False

    assert outbox_entries_of(store, [session_id]) == [written.event_id]
    # the relay's send, once SQS takes it, clears it
    assert SqsProducer(client, url, store).send_many([(written.event_id, written.event_json)]) == [
        written.event_id]
    assert outbox_entries_of(store, [session_id]) == []
    assert _bodies(client, url) == [written.event_json]


def test_an_outbox_ack_that_fails_after_sqs_took_the_message_is_not_an_error(
        moto_sqs, throwaway_redis, session_id):
    client, url = moto_sqs.client, moto_sqs.queue
    admin = redis.Redis.from_url(throwaway_redis.url)
    # a user that may run the scripts but not ZREM/HDEL, which the ack uses
    admin.acl_setuser("app", enabled=True, passwords=["+app-password-1"], keys=["*"],
                      channels=["*"], commands=["+@all", "-zrem", "-hdel"])
    store = SessionStore(redis.Redis(port=throwaway_redis.port, username="app",
                                     password="app-password-1", socket_timeout=5))
    written = store.create(session_id, '{"a":1}', 60)
    producer = SqsProducer(client, url, store)

    assert producer.publish(written) is True
    assert producer.send_many([(written.event_id, written.event_json)]) == [written.event_id]

    assert _bodies(client, url) == [written.event_json] * 2  # a duplicate, harmless downstream
    assert outbox_entries_of(store, [session_id]) == [written.event_id]  # the relay will send it again
    store.client.close()
    admin.close()
