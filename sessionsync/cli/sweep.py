"""``sessionsync sweep``: session_expired recorded for every lifetime that ended."""
from __future__ import annotations

from dataclasses import asdict

import click

from chalicelib import runtime
from sessionsync.cli._common import echo_json, exit_on_errors, output_format


@click.command()
@click.option("--dry-run", is_flag=True, help="Count the candidates; write nothing.")
@click.option("--grace", type=click.FloatRange(0), default=None,
              help="Only lifetimes that ended this many seconds ago (default "
                   "SESSION_EXPIRY_GRACE_SECONDS).")
@output_format()
def sweep(dry_run: bool, grace: float | None, fmt: str) -> None:
    """Record session_expired for every session whose lifetime ended (once)."""
    with exit_on_errors("sweep failed"):
        s = runtime.expiry_sweep()
        if grace is not None:
            s.grace_seconds = grace
        result = s.run(budget_seconds=300, dry_run=dry_run)
    if fmt == "json":
        echo_json({"dry_run": dry_run, **asdict(result)})
        return
    if dry_run:
        click.echo(f"candidates {result.candidates} (dry run: nothing written)")
        return
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(result.skipped.items())) or "none"
    click.echo(f"candidates {result.candidates}, expired {result.expired}, skipped: {skipped}")
