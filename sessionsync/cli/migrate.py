"""``sessionsync migrate``: the pending SQL migrations, applied."""
from __future__ import annotations

import click

from sessionsync.cli._common import (
    Progress,
    database_dsn,
    echo_json,
    exit_on_errors,
    output_format,
    quiet_option,
)


@click.command()
@output_format()
@quiet_option
def migrate(fmt: str, quiet: bool) -> None:
    """Apply pending SQL migrations (safe to run twice, or twice at once).

    While they run, a line on stderr says so (a migration that rewrites a
    big table can take minutes); then the migrations applied.
    """
    from sessionsync import provisioning

    progress = Progress(quiet)
    with exit_on_errors("migrate failed", unexpected=True):  # psycopg.Error too
        dsn = database_dsn()
        progress("applying the pending migrations ...")
        applied = provisioning.migrate(dsn)
    progress.done()
    if fmt == "json":
        echo_json({"applied": [m.filename for m in applied]})
    else:
        click.echo(f"applied: {', '.join(m.filename for m in applied)}" if applied else "up to date")
