"""``sessionsync relay``: the outbox relay, as its schedule runs it."""
from __future__ import annotations

import threading

import click

from chalicelib import runtime
from chalicelib.constants import RELAY_SCHEDULE_SECONDS
from sessionsync.cli._common import echo_json, exit_on_errors, fail, output_format


@click.command()
@click.option("--once", is_flag=True, help="Send what is pending now and exit.")
@click.option("--age", type=click.FloatRange(0), default=None,
              help="With --once: only entries older than this many seconds (default 0: all).")
@output_format()
def relay(once: bool, age: float | None, fmt: str) -> None:
    """Ship committed changes from the outbox to SQS.

    Without --once, runs as the deployed relay function: a run every
    minute, each holding the relay's lease (one relay at a time, whatever
    else runs against this Redis) and sending each change as it commits.
    With --once, what is pending now, then what was sent (--format json for scripts).
    """
    from sessionsync.local_pipeline import run_relay_schedule

    with exit_on_errors("relay failed"):
        r = runtime.relay()
        if once:
            result = r.drain(budget_seconds=300, age_seconds=age or 0.0)
            if fmt == "json":
                echo_json({"found": result.found, "sent": result.sent})
            else:
                click.echo(f"found {result.found}, sent {result.sent}")
            if result.sent < result.found:
                fail("some entries could not be sent (SQS unavailable?)")
            return
    stop = threading.Event()
    click.echo(f"relaying as the schedule does: a run every {RELAY_SCHEDULE_SECONDS} s "
               "(Ctrl-C to stop)")
    try:
        run_relay_schedule(r, stop)
    except KeyboardInterrupt:
        stop.set()
