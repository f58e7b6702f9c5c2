"""The warm Lambda handler: API Gateway events through the Chalice app.

An API Gateway REST proxy event goes into ``app(event, context)`` in this
process, exactly as the Lambda runtime calls it once warm, and a response
dict comes out: routing, validation, the store call and the response
encoding are all inside the timing.  A PATCH (a merge patch as large as
the PUT's state, naming the same members, so that the merged state is as
large too) is timed beside the PUT, and its cost given as a ratio to it:
a read, the merge in Python and the same script.  The PUT runs with the SQS send
switched off (no queue configured), so the figure is the handler's own
cost; the send is timed separately against LocalStack, both alone and as
part of a full PUT, because LocalStack's latency says little about real
SQS (typically a few ms inside a region).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from chalicelib import runtime
from chalicelib.config import Settings
from chalicelib.domain.session import Session
from sessionsync.bench.aws_local import localstack_sqs_unavailable
from sessionsync.bench.context import STATE_BYTES, BenchContext, state_json
from sessionsync.bench.events import (
    LambdaContext,
    session_get_event,
    session_patch_event,
    session_put_event,
)
from sessionsync.bench.harness import ack_all, delete_session_keys, local_queue
from sessionsync.bench.stats import interleaved, ratio, summarize_ns, time_calls
from sessionsync.project import import_app

API_KEY = "bench-api-key-0123456789abcdef"


def _app() -> Any:
    return import_app().app  # the deployed entry point, imported as Lambda does


def _put_sequence(app: Any, context: LambdaContext, session_id: str, state: str,
                  first_version: int, count: int) -> Callable[[], Any]:
    """A PUT op that sends events prepared up front (building a 1 KB body is
    the client's work, not the handler's), each with the next version."""
    events = iter([session_put_event(session_id, state, v, API_KEY)
                   for v in range(first_version, first_version + count)])

    def put() -> Any:
        response = app(next(events), context)
        if response["statusCode"] != 200:
            raise AssertionError(f"PUT answered {response['statusCode']}: {response['body'][:300]}")
        return response
    return put


def _patch(app: Any, context: LambdaContext, session_id: str, state: str) -> Callable[[], Any]:
    """A PATCH op: the same event each time (it names no version)."""
    event = session_patch_event(session_id, state, API_KEY)

    def patch() -> Any:
        response = app(event, context)
        if response["statusCode"] != 200:
            raise AssertionError(f"PATCH answered {response['statusCode']}: {response['body'][:300]}")
        return response
    return patch


def run(ctx: BenchContext) -> dict[str, Any]:
    profile = ctx.profile
    app = _app()
    context = LambdaContext()
    prefix = ctx.session_prefix("handler")
    state = state_json(STATE_BYTES)
    read_id, write_id, patch_id = f"{prefix}-read", f"{prefix}-write", f"{prefix}-patch"

    runtime.reset()
    # A channel of the run's own: a --redis-url Redis may have `watch`ers.
    channel = f"{prefix}-updates"
    # With a database configured, as deployed: reads check the epoch
    # (docs/guarantees.md); PostgreSQL itself is only touched on a miss.
    runtime.install(settings=Settings(redis_url=ctx.redis_url, api_keys=(API_KEY,), channel=channel,
                                      database_url=ctx.dsn))
    store = runtime.store()
    try:
        store.create(read_id, state, 3600)
        store.create(write_id, state, 3600)
        store.create(patch_id, state, 3600)
        get_event = session_get_event(read_id, API_KEY)
        first = app(get_event, context)
        if first["statusCode"] != 200 or first["headers"].get("ETag") != '"1"':
            raise AssertionError(f"GET answered {first['statusCode']}: {first['body'][:300]}")

        def handler_get() -> Any:
            response = app(get_event, context)
            if response["statusCode"] != 200:
                raise AssertionError(f"GET answered {response['statusCode']}")
            return response

        n, warmup = profile.handler_iterations, max(10, profile.handler_iterations // 10)
        ops = {
            "store_get": lambda: store.get(read_id, verify=True),
            "handler_get": handler_get,
            "handler_put": _put_sequence(app, context, write_id, state, 1, n + warmup),
            "handler_patch": _patch(app, context, patch_id, state),
        }
        samples = interleaved(ops, n, warmup=warmup, between_rounds=lambda _: _drain_outbox(store))
        latency = {name: summarize_ns(values) for name, values in samples.items()}
        result: dict[str, Any] = {
            "iterations": n,
            "state_bytes": STATE_BYTES,
            "latency": latency,
            "handler_overhead_us": {
                "get_p50": round(latency["handler_get"]["p50_us"] - latency["store_get"]["p50_us"], 2),
            },
            "ratios": {"handler_get/store_get": ratio(latency["handler_get"]["p50_us"],
                                                      latency["store_get"]["p50_us"]),
                       # what a server-side merge costs over a PUT of the same size
                       "handler_patch/handler_put": ratio(latency["handler_patch"]["p50_us"],
                                                          latency["handler_put"]["p50_us"])},
            "sqs": _sqs(ctx, app, context, state, f"{prefix}-sqs"),
        }
        return result
    finally:
        if not ctx.redis_is_own:
            delete_session_keys(runtime.redis(), [read_id, write_id, patch_id, f"{prefix}-sqs"])
        runtime.reset()


def _drain_outbox(store: Any) -> None:
    """The PUTs run without SQS, so nothing acks their outbox entries: drop
    them between rounds (untimed) to keep the outbox at its usual size."""
    ack_all(store, [eid for eid, _ in store.outbox_pending(older_than_s=-3600, limit=100_000)])


def _sqs(ctx: BenchContext, app: Any, context: LambdaContext, state: str,
         session_id: str) -> dict[str, Any]:
    """SendMessage alone, and the full PUT (script + send + outbox ack),
    against a LocalStack queue of this run's own."""
    if why_not := localstack_sqs_unavailable(ctx.aws_endpoint_url):
        return {"skipped": why_not}
    n = ctx.profile.sqs_iterations
    with local_queue(ctx, "handler") as (client, queue_url):
        # The same app, now with a queue: the service sends every change.
        runtime.reset()
        runtime.install(settings=Settings(redis_url=ctx.redis_url, api_keys=(API_KEY,),
                                          queue_url=queue_url, channel=f"{session_id}-updates"),
                        sqs=client)
        store = runtime.store()
        created = store.create(session_id, state, 3600)
        store.outbox_ack([created.event_id])  # created directly, not through the producer
        body = cast(Session, store.get(session_id)).to_json()
        send = summarize_ns(time_calls(
            lambda: client.send_message(QueueUrl=queue_url, MessageBody=body), n))
        put = _put_sequence(app, context, session_id, state, 1, n + 5)
        for _ in range(5):
            put()
        full_put = summarize_ns(time_calls(put, n))
        outbox_left = store.outbox_depth()
    return {
        "endpoint": ctx.aws_endpoint_url,
        "iterations": n,
        "send_message": send,
        "handler_put_with_sqs": full_put,
        "outbox_left_after_puts": outbox_left,
        "notes": "LocalStack on loopback; real SQS SendMessage inside a region is typically 3-10 ms",
    }
