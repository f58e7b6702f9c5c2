"""``sessionsync bench``: the performance benchmark (see docs/performance.md)."""
from __future__ import annotations

import os
from pathlib import Path

import click

from sessionsync.bench.context import PROFILES
from sessionsync.bench.runner import SECTION_ORDER, BenchOptions, run_bench, summary_lines
from sessionsync.cli._common import Progress, echo_json, output_format, quiet_option


def _sections(value: str | None) -> tuple[str, ...]:
    if not value:
        return SECTION_ORDER
    chosen = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SECTION_ORDER]
    if unknown:
        raise click.BadParameter(f"unknown: {', '.join(unknown)} (choose from {', '.join(SECTION_ORDER)})")
    return chosen


@click.command()
@click.option("--quick", "profile", flag_value="quick", help="Fewer iterations (about a minute).")
@click.option("--smoke", "profile", flag_value="smoke",
              help="Tiny iterations: proves every section runs (the test suite's mode).")
@click.option("--full", "profile", flag_value="full", default=True,
              help="The run docs/performance.md reports (default; about 5 minutes).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench-results"), show_default=True)
@click.option("--sections", default=None,
              help=f"Comma-separated subset of: {', '.join(SECTION_ORDER)} (default: all).")
@click.option("--redis-url", default=None,
              help="Measure the latency sections on this Redis instead of a redis-server the "
                   "bench starts (memory and scale always use their own).")
@click.option("--database-url", default=None,
              help="PostgreSQL for the consumer section (default: sessionsync_bench on "
                   "127.0.0.1:5432, created and migrated).")
@click.option("--aws-endpoint-url", default=None,
              help="LocalStack for the SQS figures (default: AWS_ENDPOINT_URL, else "
                   "http://127.0.0.1:4566).")
@click.option("--chart/--no-chart", default=True, show_default=True, help="Write the PNG chart.")
@click.option("--pin/--no-pin", default=True, show_default=True,
              help="Pin the bench's redis-servers to the last CPU and the bench to the others, "
                   "so that every round trip crosses CPUs (reproducible on VMs).")
@click.option("--lambda-runtime", default=None, metavar="python3.X",
              help="The Lambda runtime the coldstart section builds the package for and runs it with "
                   "(its interpreter must be installed; default: the template's LambdaRuntime).")
@output_format()
@quiet_option
def bench(profile: str, output_dir: Path, sections: str | None, redis_url: str | None,
          database_url: str | None, aws_endpoint_url: str | None, chart: bool, pin: bool,
          lambda_runtime: str | None, fmt: str, quiet: bool) -> None:
    """Benchmark the store, handler, cold start, consumer, memory, scale and contention.

    Writes bench-<profile>-<time>.json and .png to --output-dir and prints
    every performance target (docs/performance.md), met or missed (--format
    json: the targets, the errors and the files written).  Which section
    runs shows on stderr.  Exit code 1 if a section failed.
    """
    options = BenchOptions(
        profile=profile if profile in PROFILES else "full", output_dir=output_dir,
        sections=_sections(sections), redis_url=redis_url, database_url=database_url,
        aws_endpoint_url=aws_endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        or "http://127.0.0.1:4566",
        chart=chart, pin_cpus=pin, lambda_runtime=lambda_runtime)
    progress = Progress(quiet)

    def note(line: str) -> None:
        progress.done()
        click.echo(line, err=True)

    results, json_path, png_path = run_bench(options, log=note, progress=progress)
    progress.done()
    if fmt == "json":
        echo_json({"results": str(json_path), "chart": str(png_path) if png_path else None,
                   "profile": results["profile"], "duration_seconds": results["duration_seconds"],
                   "errors": {name: results["sections"][name]["error"] for name in results["errors"]},
                   "targets": results["targets"]})
    else:
        for line in summary_lines(results):
            click.echo(line)
        click.echo(f"results: {json_path}" + (f"\nchart:   {png_path}" if png_path else ""))
    if results["errors"]:
        raise SystemExit(1)
