"""Nothing after the Redis commit fails an acknowledged write.

Once the Lua script ran, the write is committed (state, marker, outbox
entry).  Any error after that, from SQS, from building the publisher, or
from the outbox acknowledgement, must not turn the answer into an error:
the client would retry a write that succeeded.  The relay sends the entry.
"""
from __future__ import annotations

import uuid

import redis

from chalicelib.adapters.redis.keys import session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.pipeline.producer import SqsProducer
from chalicelib.service.sessions import SessionService


def _restricted_store(server) -> SessionStore:
    """A store logged in as a Redis ACL user that may run the scripts but
    not ZREM/HDEL, which the outbox acknowledgement uses."""
    admin = redis.Redis.from_url(server.url)
    admin.acl_setuser("app", enabled=True, passwords=["+app-password-1"], keys=["*"],
                      channels=["*"], commands=["+@all", "-zrem", "-hdel"])
    admin.close()
    client = redis.Redis(port=server.port, username="app", password="app-password-1", socket_timeout=5)
    return SessionStore(client)


def test_a_write_whose_outbox_ack_is_refused_by_an_acl_is_still_acknowledged(
        throwaway_redis, sqs, queue_pair):
    store = _restricted_store(throwaway_redis)
    service = SessionService(store, publisher=SqsProducer(sqs, queue_pair.url, store))
    sid = f"acl-{uuid.uuid4().hex[:8]}"

    created = service.create(CreateRequest(sid, '{"a":1}', None))
    updated = service.update(UpdateRequest(sid, '{"a":2}', 1))

    assert (created.version, updated.version) == (1, 2)
    # sent to SQS, and the entries stay for the relay (a duplicate is harmless)
    outbox = store.client.zrange(session_keys(sid)[2], 0, -1)
    assert sorted(outbox) == [f"{sid}:1".encode(), f"{sid}:2".encode()]
    store.client.close()


def test_a_publisher_that_cannot_even_be_built_does_not_fail_the_write(throwaway_redis):
    class Unbuildable:
        def publish(self, result):
            raise RuntimeError("no region configured")  # e.g. botocore's NoRegionError

    store = SessionStore(redis.Redis.from_url(throwaway_redis.url, socket_timeout=5))
    sid = f"acl-{uuid.uuid4().hex[:8]}"

    session = SessionService(store, publisher=Unbuildable()).create(CreateRequest(sid, '{"a":1}', None))

    assert session.version == 1
    assert store.client.zrange(session_keys(sid)[2], 0, -1) == [f"{sid}:1".encode()]
