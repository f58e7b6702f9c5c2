"""How fast the outbox relay drains a backlog, and that it stays linear.

A backlog of outbox entries (as writes leave them while SQS is down) is put
straight into the outbox keys of a redis-server of the bench's own, then
drained by ``OutboxRelay`` with a sender that acks every entry as the SQS
producer does once SQS took it (no network: the figure is the relay's own
cost).  Two backlog sizes are drained: a relay whose page cost grew with
the backlog would show a per-entry cost that grows with it; a linear one
shows a ratio near 1.  Within each drain every page is timed too: as the
backlog shrinks, a page must cost the same (``page_flatness``: the median
page time of the first tenth of the drain / of the last tenth).

The sender of those drains is a null sender (no network).  One more drain
goes to an SQS queue of the bench's own on LocalStack through the relay's
real sender (``SqsProducer``: SendMessageBatch of 10, then the ack): its
entries/s are bounded by LocalStack, not by the relay.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from chalicelib.adapters.redis.keys import bucket_of, outbox_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.domain.events import EVENT_SCHEMA_VERSION, UPDATED
from chalicelib.pipeline.outbox import PAGE, OutboxRelay
from sessionsync.bench.aws_local import localstack_sqs_unavailable
from sessionsync.bench.context import BenchContext
from sessionsync.bench.harness import local_queue
from sessionsync.bench.redis_server import ThrowawayRedis
from sessionsync.bench.stats import ratio
from sessionsync.redis_views import outbox_depth

# an event of a small state: the relay's work per entry does not depend on it
EVENT_TEMPLATE = (f'{{"schema_version":{EVENT_SCHEMA_VERSION},"event_type":"{UPDATED}",'
                  '"session_id":"%s","version":1,"occurred_at":"2026-01-01T00:00:00.000Z","ttl_seconds":3600,'
                  '"state":{"cart":[1,2,3],"pad":"%s"}}')
FILL_CHUNK = 50_000
#: entries drained to LocalStack's SQS, by profile (LocalStack takes a few
#: thousand a second: the relay's own cost is the null-sender figure)
SQS_BACKLOG = {"full": 10_000, "quick": 2_000, "smoke": 300}


class _AckingSender:
    """Stands in for SQS: takes every event and acks it, as the producer does."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    def send_many(self, events: Iterable[tuple[str, str]]) -> list[str]:
        ids = [eid for eid, _ in events]
        self.store.outbox_ack(ids)
        return ids


def fill_outbox(client: redis.Redis, prefix: str, count: int) -> None:
    """``count`` due entries, one per session, a chunk at a time (one ZADD
    and one HSET per bucket per chunk: filling is not what is measured)."""
    pad = "x" * 100
    for first in range(0, count, FILL_CHUNK):
        by_bucket: dict[int, tuple[dict[Any, int], dict[Any, str]]] = {}  # redis-py's key types
        for n in range(first, min(first + FILL_CHUNK, count)):
            sid = f"{prefix}-{n}"
            index, data = by_bucket.setdefault(bucket_of(sid), ({}, {}))
            index[f"{sid}:1"] = 1  # enqueued long ago: every entry is due
            data[f"{sid}:1"] = EVENT_TEMPLATE % (sid, pad)
        pipe = client.pipeline(transaction=False)
        for bucket, (index, data) in by_bucket.items():
            index_key, data_key = outbox_keys(bucket)
            pipe.zadd(index_key, index)
            pipe.hset(data_key, mapping=data)
        pipe.execute()


def _drain(client: redis.Redis, prefix: str, backlog: int) -> dict[str, Any]:
    client.flushall()
    fill_outbox(client, prefix, backlog)
    store = SessionStore(client)
    relay = OutboxRelay(store, _AckingSender(store), age_seconds=0)
    server_cpu, cpu, start = _server_cpu(client), time.process_time(), time.perf_counter()
    page_ns = _pages(relay, store, backlog)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu + _server_cpu(client) - server_cpu
    return {
        "backlog": backlog,
        "pages": len(page_ns),
        "seconds": round(seconds, 3),
        "entries_per_second": round(backlog / seconds),
        # CPU time, the relay's and redis-server's: other load on a shared
        # machine moves the wall time, far less the work done
        "cpu_us_per_entry": round(cpu_seconds / backlog * 1e6, 3),
        "page_flatness": page_flatness(page_ns),
    }


def _pages(relay: OutboxRelay, store: SessionStore, backlog: int) -> list[int]:
    """``run_once`` until the outbox is empty: the time (ns) of each page
    that found entries.  Raises unless all ``backlog`` entries were sent."""
    page_ns: list[int] = []
    sent = 0
    clock = time.perf_counter_ns
    for _ in range(2 * backlog // PAGE + 3):  # bounded: every page but the last is full
        t0 = clock()
        result = relay.run_once()
        elapsed = clock() - t0
        if result.found == 0:
            break
        page_ns.append(elapsed)
        sent += result.sent
    left = outbox_depth(store)
    if sent != backlog or left:
        raise RuntimeError(f"the relay sent {sent} of {backlog} entries, {left} left")
    return page_ns


def page_flatness(page_ns: Sequence[int]) -> dict[str, Any]:
    """Median time of a page in the first tenth of a drain (the largest
    backlog) and in the last tenth (the smallest), full pages only (the
    last, partial page is left out by the caller), and their ratio: about 1
    when a page costs the same whatever is left behind it."""
    full = list(page_ns[:-1]) if len(page_ns) > 1 else list(page_ns)
    tenth = max(1, len(full) // 10)
    first = statistics.median(full[:tenth]) / 1e6
    last = statistics.median(full[-tenth:]) / 1e6
    return {"pages_compared": tenth, "first_tenth_median_ms": round(first, 3),
            "last_tenth_median_ms": round(last, 3), "first/last": ratio(first, last)}


def _sqs_drain(ctx: BenchContext, client: redis.Redis, backlog: int) -> dict[str, Any]:
    """Drain ``backlog`` entries to a LocalStack queue of the bench's own
    through the relay's real sender (SqsProducer: send, then ack)."""
    from chalicelib.pipeline.producer import SqsProducer

    if why_not := localstack_sqs_unavailable(ctx.aws_endpoint_url):
        return {"skipped": why_not}
    client.flushall()
    fill_outbox(client, ctx.session_prefix("relay-sqs"), backlog)
    store = SessionStore(client)
    with local_queue(ctx, "relay") as (sqs, url):
        relay = OutboxRelay(store, SqsProducer(sqs, url, store), age_seconds=0)
        start = time.perf_counter()
        page_ns = _pages(relay, store, backlog)
        seconds = time.perf_counter() - start
        queued = int(sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"])
    return {"sender": "SqsProducer to a LocalStack queue of the bench's own",
            "endpoint": ctx.aws_endpoint_url, "backlog": backlog, "pages": len(page_ns),
            "seconds": round(seconds, 3), "entries_per_second": round(backlog / seconds),
            "messages_in_queue": queued, "page_flatness": page_flatness(page_ns)}


def _server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run(ctx: BenchContext) -> dict[str, Any]:
    sizes = ctx.profile.relay_backlogs
    with ThrowawayRedis(cpus=ctx.server_cpus) as server:
        client = server.client()
        try:
            runs = [_drain(client, ctx.session_prefix("relay"), size) for size in sizes]
            to_sqs = _sqs_drain(ctx, client, SQS_BACKLOG.get(ctx.profile.name, SQS_BACKLOG["quick"]))
        finally:
            client.close()
    small, large = runs[0], runs[-1]
    return {
        "page": PAGE,
        "sender": "null: acks each entry as SqsProducer does after a send, no network",
        "drains": runs,
        "drain_to_localstack_sqs": to_sqs,
        "linearity": {
            "backlog_ratio": ratio(large["backlog"], small["backlog"]),
            "per_entry_cost_ratio": ratio(large["cpu_us_per_entry"], small["cpu_us_per_entry"]),
        },
        "notes": "OutboxRelay.run_once until the outbox is empty, on a redis-server of the "
                 "bench's own; the sender acks each entry (ZREM + HDEL, as after an SQS send) "
                 "without a network call. cpu_us_per_entry: CPU time of the bench process and "
                 "of redis-server per entry drained. per_entry_cost_ratio: that at the larger "
                 "backlog / at the smaller; about 1 means linear (a sparse backlog costs a "
                 "little more per entry: a page touches more buckets).",
    }
