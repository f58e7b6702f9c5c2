"""``sessionsync retention``: the sync_events purge, by hand.

The same ``chalicelib.pipeline.retention.purge_events`` as the hourly
schedule, with progress per batch, a dry run, and the setting overridable.
"""
from __future__ import annotations

import click

from chalicelib import runtime
from chalicelib.config import DATABASE_URL, SYNC_EVENTS_RETENTION_DAYS
from chalicelib.constants import (
    DEFAULT_RETENTION_BATCH,
    MAX_RETENTION_BATCH,
    MAX_RETENTION_DAYS,
    MIN_RETENTION_DAYS,
)
from chalicelib.domain.errors import ConfigurationError
from chalicelib.pipeline.retention import PurgeReport, purge_events
from sessionsync.cli._common import Progress, echo_json, exit_on_errors, output_format, quiet_option


def _counts(report: PurgeReport) -> str:
    verb = "would purge" if report.dry_run else "purged"
    return f"scanned {report.scanned}, {verb} {report.purged}, kept {report.kept}"


@click.command()
@click.option("--days", type=click.IntRange(MIN_RETENTION_DAYS, MAX_RETENTION_DAYS), default=None,
              help=f"Keep this many days instead of {SYNC_EVENTS_RETENTION_DAYS} "
                   f"(at least {MIN_RETENTION_DAYS}).")
@click.option("--batch-size", type=click.IntRange(1, MAX_RETENTION_BATCH),
              default=DEFAULT_RETENTION_BATCH, show_default=True,
              help="Rows one statement looks at (and deletes at most).")
@click.option("--dry-run", is_flag=True, help="Count what would be purged; delete nothing.")
@click.option("--budget", type=click.FloatRange(1), default=None,
              help="Stop after this many seconds (the next run resumes there).")
@output_format()
@quiet_option
def retention(days: int | None, batch_size: int, dry_run: bool, budget: float | None, fmt: str,
              quiet: bool) -> None:
    """Purge sync_events rows older than SYNC_EVENTS_RETENTION_DAYS (or --days).

    A session's latest row is always kept, and so is every row younger than
    the retention (docs/decisions/audit-retention.md).  Progress per batch
    on stderr.  Exit 0 when done, 1 when PostgreSQL failed or another purge
    is running, 2 on a configuration error.
    """
    with exit_on_errors("retention failed"):
        settings = runtime.settings()
        days = days if days is not None else settings.events_retention_days
        if days is None:
            note = (f"{SYNC_EVENTS_RETENTION_DAYS} is not set: sync_events rows are kept forever "
                    "(--days purges anyway)")
            if fmt == "json":
                echo_json({**PurgeReport(days=None, dry_run=dry_run).to_dict(), "note": note})
            else:
                click.echo(note)
            return
        database = runtime.database()
        if database is None:
            raise ConfigurationError(DATABASE_URL, "is not set (nor DB_SECRET_ARN, nor PG* variables)")
        if fmt == "text":
            click.echo(f"{'dry run: ' if dry_run else ''}purging sync_events rows persisted more "
                       f"than {days} days ago, {batch_size} rows per batch")
        progress = Progress(quiet)
        report = purge_events(database, days, batch_size=batch_size, dry_run=dry_run,
                              budget_seconds=budget, on_batch=lambda r: progress(
                                  f"batch {r.batches}: {_counts(r)}"))
        progress.done()
    if fmt == "json":
        echo_json(report.to_dict())
    if report.busy:
        click.echo("another purge is running: nothing done", err=True)
        raise SystemExit(1)
    if fmt == "text":
        click.echo(f"{'done' if report.complete else 'budget spent (the next run resumes here)'}: "
                   f"{report.batches} batches, {_counts(report)} (sessions' latest rows)")
