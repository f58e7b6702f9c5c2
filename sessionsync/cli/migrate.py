"""``sessionsync migrate``: the pending SQL migrations, applied; with
``--status``, what is applied and what is pending, applying nothing."""
from __future__ import annotations

import sys

import click

from sessionsync.cli._common import (
    EXIT_FAILED,
    Progress,
    database_dsn,
    echo_json,
    exit_on_errors,
    output_format,
    quiet_option,
    table,
)


@click.command()
@click.option("--status", "show_status", is_flag=True,
              help="List each migration (applied, pending, changed, unknown) and apply nothing; "
                   "exit 1 unless every migration of this release is applied.")
@output_format()
@quiet_option
def migrate(show_status: bool, fmt: str, quiet: bool) -> None:
    """Apply pending SQL migrations (safe to run twice, or twice at once).

    While they run, a line on stderr says so (a migration that rewrites a
    big table can take minutes); then the migrations applied.  Through a
    transaction pooler (RDS Proxy, PgBouncer in transaction mode) set
    DB_POOLED=true: no startup options, and the lock is the transaction's.
    """
    from chalicelib import runtime
    from sessionsync import provisioning

    if show_status:
        _status(fmt)
        return
    progress = Progress(quiet)
    with exit_on_errors("migrate failed", unexpected=True):  # psycopg.Error too
        dsn = database_dsn()
        progress("applying the pending migrations ...")
        applied = provisioning.migrate(dsn, pooled=runtime.settings().db_pooled)
    progress.done()
    if fmt == "json":
        echo_json({"applied": [m.filename for m in applied]})
    else:
        click.echo(f"applied: {', '.join(m.filename for m in applied)}" if applied else "up to date")


def _status(fmt: str) -> None:
    """The database's migrations against this release's files.  Up to date
    when every file is applied unchanged; a row the files do not know
    (``unknown``: a newer release migrated, then the code was rolled back)
    is listed but does not make this release's schema incomplete."""
    from chalicelib import runtime
    from sessionsync import migrations, provisioning

    with exit_on_errors("migrate --status failed", unexpected=True):
        states = provisioning.migration_status(database_dsn(), pooled=runtime.settings().db_pooled)
    pending = [s.filename for s in states if s.state == migrations.PENDING]
    changed = [s.filename for s in states if s.state == migrations.CHANGED]
    up_to_date = not pending and not changed
    if fmt == "json":
        echo_json({"up_to_date": up_to_date, "pending": pending, "changed": changed,
                   "migrations": [s.to_dict() for s in states]})
    else:
        click.echo(table(("version", "name", "state"),
                         ((f"{s.version:04d}", s.name, s.state) for s in states)))
        if changed:
            click.echo(f"changed after they were applied (migrate refuses them): {', '.join(changed)}",
                       err=True)
        click.echo("up to date" if up_to_date else f"pending: {', '.join(pending) or 'none'}", err=True)
    if not up_to_date:
        sys.exit(EXIT_FAILED)
