"""``sessionsync health``: the checks of GET /health, with an exit code."""
from __future__ import annotations

import sys

import click

from chalicelib import runtime
from chalicelib.domain.errors import ConfigurationError
from sessionsync.cli._common import EXIT_CONFIG, EXIT_FAILED, echo_json, exits_on_errors, output_format, table


@click.command()
@output_format()
@click.option("--timeout", type=click.FloatRange(0.1, 30), default=None,
              help="Seconds to wait for the slowest dependency (default: as /health, 1 s).")
@exits_on_errors
def health(fmt: str, timeout: float | None) -> None:
    """Check Redis, PostgreSQL, the queue and the DLQ, as GET /health does.

    Exit 0 when every configured dependency is up, 1 when one is down, 2 on
    a configuration error.  A non-empty DLQ is a warning (exit 0).  "degraded"
    (Redis down, PostgreSQL up: /health answers 200) exits 1: Redis is down.
    """
    from chalicelib.api import health as health_checks

    runtime.settings()  # a bad setting is exit 2, before probing anything
    report = health_checks.check(runtime.health_probes(),
                                 timeout if timeout is not None else health_checks.DEADLINE_SECONDS)
    if fmt == "json":
        echo_json(report.to_dict())
    else:
        rows = []
        for check in report.checks:
            detail = " ".join(f"{k}={v}" for k, v in check.details.items())
            note = check.error or check.warning or ""
            rows.append((check.name, check.status,
                         "-" if check.latency_ms is None else f"{check.latency_ms:.2f}",
                         (detail + ("  " if detail and note else "") + note).strip()))
        click.echo(table(("DEPENDENCY", "STATUS", "LATENCY_MS", "DETAILS"), rows))
        click.echo(f"overall: {report.to_dict()['status']}")
    if not report.healthy:
        config_broken = any(c.error_code == ConfigurationError.code for c in report.checks
                            if c.status != "ok")
        sys.exit(EXIT_CONFIG if config_broken else EXIT_FAILED)
