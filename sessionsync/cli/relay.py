"""``sessionsync relay``: the outbox relay, as its schedule runs it."""
from __future__ import annotations

import threading

import click

from chalicelib import runtime
from sessionsync.cli._common import echo_json, exit_on_errors, fail, output_format


@click.command()
@click.option("--once", is_flag=True, help="Relay what is pending now and exit.")
@click.option("--age", type=click.FloatRange(0), default=None,
              help="Only entries older than this many seconds (default OUTBOX_RELAY_AGE_SECONDS).")
@click.option("--interval", type=click.FloatRange(0.1), default=1.0, show_default=True)
@output_format()
def relay(once: bool, age: float | None, interval: float, fmt: str) -> None:
    """Re-send outbox entries that never reached SQS.

    With --once, what is pending now, then what was sent (--format json for scripts).
    """
    with exit_on_errors("relay failed"):
        r = runtime.relay()
        if age is not None:
            r.age_seconds = age
        if once:
            result = r.drain(budget_seconds=300)
            if fmt == "json":
                echo_json({"found": result.found, "sent": result.sent})
            else:
                click.echo(f"found {result.found}, sent {result.sent}")
            if result.sent < result.found:
                fail("some entries could not be sent (SQS unavailable?)")
            return
    stop = threading.Event()
    click.echo(f"relaying entries older than {r.age_seconds:g} s every {interval:g} s (Ctrl-C to stop)")
    try:
        r.run(stop, interval=interval)
    except KeyboardInterrupt:
        stop.set()
