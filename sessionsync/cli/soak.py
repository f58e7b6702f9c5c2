"""``sessionsync soak``: load a running server, then check durability exactly
(sessionsync/bench/soak.py)."""
from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from chalicelib import runtime
from chalicelib.config import API_KEYS
from sessionsync.bench import soak as soak_module
from sessionsync.cli._common import (
    Progress,
    database_dsn,
    deprecated,
    echo_json,
    exit_on_errors,
    fail,
    output_format,
    quiet_option,
)


def _loopback_port(url: str | None) -> int | None:
    """The port of a URL served on this machine, else None."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    return (parts.port or 80) if local else None


def _pids(url: str, given: tuple[str, ...]) -> dict[str, int]:
    """The server's and LocalStack's PIDs (found by their listening ports),
    then the --pid ones."""
    pids: dict[str, int] = {}
    for label, port in (("server", _loopback_port(url)),
                        ("localstack", _loopback_port(runtime.settings().aws_endpoint_url))):
        pid = soak_module.listening_pid(port) if port else None
        if pid is not None:
            pids[label] = pid
    for item in given:
        label, _, given_pid = item.partition("=")
        if not given_pid.isdigit():
            raise click.BadParameter(f"expected LABEL=PID, got {item!r}", param_hint="--pid")
        pids[label] = int(given_pid)
    return pids


def _probes() -> dict[str, Any]:
    """Outbox and queue depth, from the settings the server also reads."""
    settings = runtime.settings()
    probes: dict[str, Any] = {"outbox": lambda: runtime.store().outbox_depth()}
    if settings.has_queue:
        probes["queue"] = lambda: soak_module.queue_depth(runtime.sqs(), runtime.queue_url())
    return probes


def _sample_line(sample: dict[str, Any]) -> str:
    depths = "".join(f", {name} {sample[name]}" for name in ("outbox", "queue")
                     if sample.get(name) is not None)
    return (f"{sample['t']:>6.0f} s: {sample['acknowledged']} writes acknowledged, "
            f"{'-' if sample.get('persisted') is None else sample['persisted']} persisted{depths}")


def _write(report: dict[str, Any], output: Path, chart: bool) -> list[tuple[str, Path]]:
    """The report's JSON at ``output`` and, with ``chart``, its timeline beside it."""
    output.write_text(json.dumps(report, indent=1, default=str))
    written = [("report", output)]
    if chart:
        try:
            from sessionsync.bench.chart import soak_timeline
            written.append(("chart", soak_timeline(report, output.with_suffix(".png"))))
        except ImportError as exc:
            click.echo(f"no chart ({exc.name} is not installed: pip install 'sessionsync[bench]')",
                       err=True)
    return written


@click.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True,
              help="The running server (sessionsync serve).")
@click.option("--api-key", default=None,
              help=f"A key the server accepts (default: the first of {API_KEYS}).")
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Clients, each with one keep-alive connection.")
@click.option("--duration", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Seconds of mixed load (after the sessions are created).")
@click.option("--sessions", type=click.IntRange(1, 1_000_000), default=200, show_default=True,
              help="Sessions created before the load; creates and deletes then change the pool.")
@click.option("--mix", default=soak_module.DEFAULT_MIX, show_default=True,
              help="Weights of read, update (compare-and-set, retried on 409), create, delete.")
@click.option("--state-bytes", type=click.IntRange(40, 200_000), default=100, show_default=True)
@click.option("--request-timeout", type=click.FloatRange(0.1, 120), default=10.0, show_default=True)
@click.option("--settle-timeout", type=click.FloatRange(0, 3600), default=180.0, show_default=True,
              help="Seconds to wait after the load for every acknowledged write to persist.")
@click.option("--database-url", default=None,
              help="The server's PostgreSQL (default: the settings', as sessionsync serve).")
@click.option("--server-log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The server's output (e.g. `make run 2>&1 | tee serve.log`): the relay's "
                   "share is counted from its OutboxRelayed metric lines.")
@click.option("--pid", "pids", multiple=True, metavar="LABEL=PID",
              help="Also sample this process's memory (the server and LocalStack are found "
                   "by their ports).")
@click.option("--output", "output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the whole report (timeline included) here, and its chart beside it "
                   "(the same name, .png).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              hidden=True, help="Deprecated: --output.")
@click.option("--chart/--no-chart", default=True, show_default=True,
              help="With --output, draw the timeline as a PNG beside the report.")
@click.option("--seed", type=int, default=None, help="Make the mix reproducible.")
@output_format()
@quiet_option
def soak(url: str, api_key: str | None, threads: int, duration: float, sessions: int, mix: str,
         state_bytes: int, request_timeout: float, settle_timeout: float, database_url: str | None,
         server_log: Path | None, pids: tuple[str, ...], output: Path | None,
         json_path: Path | None, chart: bool, seed: int | None, fmt: str, quiet: bool) -> None:
    """Soak a running server with a client's mix, then check durability exactly.

    The summary on stdout (--format json: the whole report); each phase and
    a line a second on stderr.  Exit code 1 if any request failed or
    durability is not exact.
    """
    from chalicelib.adapters.postgres import connection

    if json_path is not None:
        deprecated("--json PATH", "--output PATH")
        output = output or json_path

    try:
        weights = soak_module.parse_mix(mix)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--mix") from None
    api_key = api_key or next((k.strip() for k in os.environ.get(API_KEYS, "").split(",")
                               if k.strip()), None)
    if not api_key:
        raise click.UsageError(f"give --api-key (or set {API_KEYS})")
    progress = Progress(quiet)

    def phase(line: str) -> None:
        progress.done()
        if progress.enabled:
            click.echo(line, err=True)

    with exit_on_errors("soak cannot start", unexpected=True):
        dsn = database_url or database_dsn()
        options = soak_module.SoakOptions(
            url=url.rstrip("/"), api_key=api_key, database_url=dsn, threads=threads,
            duration=duration, sessions=sessions, mix=weights, state_bytes=state_bytes,
            request_timeout=request_timeout, settle_timeout=settle_timeout,
            server_log=server_log, pids=_pids(url, pids), seed=seed)
        report = soak_module.run_soak(
            options, connect=lambda: connection.connect(dsn, statement_timeout_ms=10_000),
            probes=_probes(), log=phase, on_sample=lambda sample: progress(_sample_line(sample)))
    progress.done()
    written = _write(report, output, chart) if output is not None else []
    if fmt == "json":
        echo_json(report)
    else:
        for line in soak_module.summary_lines(report):
            click.echo(line)
        for label, path in written:
            click.echo(f"{label}: {path}")
    if report["errors"]["count"] or not report["durability"]["exact"]:
        fail("soak failed: " + ("errors" if report["errors"]["count"] else "durability not exact"))
