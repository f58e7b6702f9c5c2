"""The outbox relay drains a backlog in linear work: a page reads from Redis
what it sends, not what is waiting.  Work is counted (the ids and bodies
Redis returns, through a client that counts them), not timed, on a
redis-server of the test's own."""
from __future__ import annotations

import uuid

import redis
from redis.client import Pipeline

from chalicelib.adapters.redis.keys import BUCKETS, bucket_of, outbox_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.pipeline.outbox import OutboxRelay
from sessionsync.redis_views import outbox_depth

BACKLOG = 20_000
PAGE = 200


class Counted:
    """What the client read: replies per command name, and elements in them."""

    def __init__(self) -> None:
        self.commands: dict[str, int] = {}
        self.elements: dict[str, int] = {}

    def add(self, command: str, reply) -> None:
        self.commands[command] = self.commands.get(command, 0) + 1
        if isinstance(reply, list):
            self.elements[command] = self.elements.get(command, 0) + len(reply)

    def reset(self) -> None:
        self.commands.clear()
        self.elements.clear()


class _CountingPipeline(Pipeline):
    counted: Counted

    def parse_response(self, connection, command_name, **options):
        reply = super().parse_response(connection, command_name, **options)
        self.counted.add(str(command_name).upper(), reply)
        return reply


class CountingRedis(redis.Redis):
    """redis.Redis that counts every reply, pipelined or not."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.counted = Counted()

    def parse_response(self, connection, command_name, **options):
        reply = super().parse_response(connection, command_name, **options)
        self.counted.add(str(command_name).upper(), reply)
        return reply

    def pipeline(self, transaction=True, shard_hint=None):
        pipe = _CountingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.counted = self.counted
        return pipe


def fill_outbox(client: redis.Redis, count: int, *, enqueued_ms: int = 1) -> set[str]:
    """``count`` outbox entries, one per session, spread over the buckets."""
    ids = set()
    pipe = client.pipeline(transaction=False)
    for n in range(count):
        sid = f"backlog-{n}"
        eid = f"{sid}:1"
        index, data = outbox_keys(bucket_of(sid))
        pipe.zadd(index, {eid: enqueued_ms})
        pipe.hset(data, eid, '{"session_id":"%s","version":1}' % sid)
        ids.add(eid)
        if n % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    return ids


class AckingSender:
    """A stand-in for SQS that accepts everything and acks it, as the producer does."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.sent: list[str] = []

    def send_many(self, events):
        ids = [eid for eid, _ in events]
        self.store.outbox_ack(ids)
        self.sent += ids
        return ids


def test_a_relay_page_reads_only_what_it_sends_however_large_the_backlog(throwaway_redis):
    client = CountingRedis.from_url(throwaway_redis.url)
    fill_outbox(client, BACKLOG)
    store = SessionStore(client)
    relay = OutboxRelay(store, AckingSender(store), age_seconds=0, page=PAGE)

    for _ in range(5):
        client.counted.reset()
        result = relay.run_once()
        assert (result.found, result.sent) == (PAGE, PAGE)
        elements = client.counted.elements
        # ids and bodies read are the page, not the backlog of BACKLOG entries
        assert elements.get("ZRANGEBYSCORE", 0) <= PAGE, elements
        assert elements.get("HMGET", 0) <= PAGE, elements
        # commands: counting buckets is bounded by BUCKETS, reads by the page
        assert sum(client.counted.commands.values()) <= BUCKETS + 2 * PAGE + 10, client.counted.commands
    client.close()


def test_a_large_backlog_drains_in_linear_work_every_entry_sent_once(throwaway_redis):
    client = CountingRedis.from_url(throwaway_redis.url)
    waiting = fill_outbox(client, BACKLOG)
    store = SessionStore(client)
    sender = AckingSender(store)
    relay = OutboxRelay(store, sender, age_seconds=0, page=PAGE)
    client.counted.reset()

    pages = 0
    while pages < 2 * BACKLOG // PAGE:  # bounded
        result = relay.run_once()
        if result.found == 0:
            break
        pages += 1

    assert len(sender.sent) == BACKLOG and set(sender.sent) == waiting
    assert outbox_depth(store) == 0
    assert pages == BACKLOG // PAGE
    # reading the whole backlog once; the quadratic relay read ~BACKLOG**2 / (2 * PAGE) ids
    assert client.counted.elements["ZRANGEBYSCORE"] <= BACKLOG, client.counted.elements
    assert client.counted.elements["HMGET"] <= BACKLOG, client.counted.elements
    client.close()


def test_entries_younger_than_the_age_are_left_and_a_sparse_outbox_is_found_past_the_first_buckets(
        throwaway_redis):
    client = redis.Redis.from_url(throwaway_redis.url)
    store = SessionStore(client, clock=lambda: 1000.0)  # now = 1,000,000 ms
    old = fill_outbox(client, 3, enqueued_ms=900_000)
    young = {f"young-{n}:1" for n in range(3)}
    for eid in young:
        sid = eid.rsplit(":", 1)[0]
        index, data = outbox_keys(bucket_of(sid))
        client.zadd(index, {eid: 999_500})
        client.hset(data, eid, "{}")
    # a start bucket far from any entry: the window of counted buckets grows
    buckets = {bucket_of(eid.rsplit(":", 1)[0]) for eid in old}
    start = next(b for b in range(BUCKETS) if all((o - b) % BUCKETS > 100 for o in buckets))

    found = dict(store.outbox_pending(older_than_s=5, limit=10, start_bucket=start))

    assert set(found) == old
    assert len(dict(store.outbox_pending(older_than_s=0, limit=10, start_bucket=start))) == 6
    assert len(dict(store.outbox_pending(older_than_s=0, limit=4, start_bucket=start))) == 4
    client.close()


def test_the_outbox_is_paged_on_a_redis_cluster_too(redis_cluster):
    store = SessionStore(redis_cluster)
    prefix = f"cluster-outbox-{uuid.uuid4().hex[:8]}"
    mine = {store.create(f"{prefix}-{n}", "{}", 60).event_id for n in range(50)}
    try:
        assert len(list(store.outbox_pending(-60, limit=10))) == 10
        assert mine <= set(dict(store.outbox_pending(-60, limit=100_000)))
    finally:
        store.outbox_ack(sorted(mine))
