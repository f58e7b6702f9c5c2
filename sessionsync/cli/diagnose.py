"""``sessionsync diagnose``: the configuration and every dependency in depth."""
from __future__ import annotations

import os
import sys

import click

from chalicelib import runtime
from sessionsync.cli._common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    MARKS,
    echo_json,
    exits_on_errors,
    operator_command,
    output_format,
)


@click.command()
@click.option("--pings", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="PINGs per Redis node for the latency percentiles.")
@click.option("--sample", type=click.IntRange(1, 100_000), default=200, show_default=True,
              help="Session keys to sample (SCAN, bounded) for TTLs and persistence lag.")
@output_format()
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too.")
@exits_on_errors
@operator_command
def diagnose(pings: int, sample: int, fmt: str, strict: bool) -> None:
    """Check the configuration and every dependency in depth.

    Configuration (names a bad setting, and shows the escaped form of a
    DATABASE_URL password with an unescaped '@' or '/'), Redis latency
    percentiles, key count, memory and eviction policy per node, a sample
    of session TTLs, the outbox, queue and DLQ depth, PostgreSQL
    reachability, the last events persisted and how far PostgreSQL lags
    Redis for sampled sessions.  Read-only.

    Exit 0 (warnings included, unless --strict), 1 when a check failed,
    2 on a configuration error.
    """
    from sessionsync import operations

    settings, findings = operations.check_configuration(os.environ)
    report = operations.Diagnosis(findings)
    if settings is not None:
        report.findings.extend(operations.diagnose(settings, runtime, pings=pings,
                                                   sample=sample).findings)
    if fmt == "json":
        echo_json(report.to_dict())
    else:
        section = None
        for finding in report.findings:
            if finding.section != section:
                section = finding.section
                click.echo(("" if finding is report.findings[0] else "\n") + section)
            click.echo(f"  {MARKS[finding.level]} {finding.summary}")
            if finding.fix and finding.level != "ok":
                click.echo(f"         fix: {finding.fix}")
        click.echo(f"\noverall: {report.level}")
    if report.configuration_failed:
        sys.exit(EXIT_CONFIG)
    if report.level == "fail" or (strict and report.level == "warn"):
        sys.exit(EXIT_FAILED)
