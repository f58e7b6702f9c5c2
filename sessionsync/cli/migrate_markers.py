"""``sessionsync migrate-markers``: the previous release's marker keys moved
into the per-bucket marker hashes, online, in bounded batches
(sessionsync.marker_migration); ``--dry-run`` counts what is left."""
from __future__ import annotations

import sys

import click

from sessionsync.cli._common import (
    EXIT_FAILED,
    Progress,
    echo_json,
    exit_on_errors,
    output_format,
    quiet_option,
)


@click.command("migrate-markers")
@click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True,
              help="Marker keys per SCAN page and at most per script: the longest a script "
                   "holds the server is about this many moves.")
@click.option("--pause", "pause_ms", type=click.IntRange(0, 60_000), default=0, show_default=True,
              help="Milliseconds to wait between pages, to spare a busy server.")
@click.option("--dry-run", is_flag=True, help="Count the marker keys left to move; move nothing.")
@output_format()
@quiet_option
def migrate_markers(batch: int, pause_ms: int, dry_run: bool, fmt: str, quiet: bool) -> None:
    """Move the previous release's marker keys (ss:{NNNN}:m:<id>) into their
    bucket's marker hash (ss:{NNNN}:m), beside live traffic.

    Run it once every process runs this release.  Safe to run twice, or
    twice at once; a key is moved only over an older version or none.
    Progress (moved / already / scanned) on stderr, then the totals and
    what is left; exit 1 when marker keys are left (a process of the
    previous release still writing: run again once none is).
    """
    from chalicelib import runtime
    from sessionsync import marker_migration

    progress = Progress(quiet)
    with exit_on_errors("migrate-markers failed"):
        client = runtime.redis()
        if dry_run:
            left = marker_migration.remaining(client, batch)
            if fmt == "json":
                echo_json({"dry_run": True, "remaining": left})
            else:
                click.echo(f"remaining {left} (dry run: nothing moved)")
            sys.exit(EXIT_FAILED if left else 0)
        result = marker_migration.migrate(
            client, batch=batch, pause_seconds=pause_ms / 1000,
            report=lambda p: progress(f"moved {p.moved}, already {p.already}, "
                                      f"scanned {p.scanned} ..."))
    progress.done()
    if fmt == "json":
        echo_json(result.to_dict())
    else:
        click.echo(f"moved {result.moved}, already {result.already}, gone {result.gone}, "
                   f"kept (with a TTL) {result.kept}, remaining {result.remaining}")
    if result.remaining:
        sys.exit(EXIT_FAILED)
