"""``sessionsync watch``: the session changes published on Pub/Sub, as they happen."""
from __future__ import annotations

import json
import time

import click

from chalicelib import runtime
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.domain.tenants import tenant_of
from sessionsync.cli._common import exit_on_errors, fail
from sessionsync.redis_views import subscribe


@click.command()
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Stop after this many updates.")
@click.option("--tenant", default=None,
              help="Only this tenant's changes (its session ids start with '<tenant>/'; the "
                   "default tenant's with no '/').")
def watch(seconds: float | None, count: int | None, tenant: str | None) -> None:
    """Print every session change published on Pub/Sub, one JSON line each.

    A stream for scripts as it is (JSON lines), so it takes no --format.
    An event's ``session_id`` is the internal id: ``<tenant>/<id>`` for a
    tenant other than the default one.
    """
    deadline = None if seconds is None else time.monotonic() + seconds
    seen = 0
    with exit_on_errors("cannot subscribe"):
        updates = subscribe(runtime.store(), timeout=0.5)
    try:
        for event in updates:
            if event is not None and (tenant is None or tenant_of(str(event.get("session_id"))) == tenant):
                click.echo(json.dumps(event, separators=(",", ":")))
                seen += 1
                if count is not None and seen >= count:
                    return
            if deadline is not None and time.monotonic() >= deadline:
                return
    except KeyboardInterrupt:
        pass
    except ServiceUnavailable as exc:
        # Pub/Sub is fire-and-forget: what was published while we were
        # disconnected is gone, so say so instead of silently resubscribing.
        fail(f"lost the subscription after {seen} updates: {exc.message}")
    finally:
        updates.close()
