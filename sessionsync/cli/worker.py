"""``sessionsync worker``: the local worker, as the SQS event source mapping runs the consumer."""
from __future__ import annotations

import threading

import click

from chalicelib.constants import CONSUMER_BATCH_SIZE, CONSUMER_MAX_CONCURRENCY, QUEUE_VISIBILITY_TIMEOUT
from sessionsync.cli._common import echo_json, exit_on_errors, output_format
from sessionsync.local_pipeline import LOCAL_CONCURRENCY, build_worker


@click.command()
@click.option("--batch-size", type=click.IntRange(1, 10), default=CONSUMER_BATCH_SIZE, show_default=True)
@click.option("--wait-seconds", type=click.IntRange(0, 20), default=10, show_default=True,
              help="Long-poll wait.")
@click.option("--visibility-timeout", type=click.IntRange(1, 43200), default=QUEUE_VISIBILITY_TIMEOUT,
              show_default=True)
@click.option("--retry-delay", type=click.FloatRange(0), default=2.0, show_default=True,
              help="First retry delay of a failed message, doubling per receive; 0 waits the "
                   "whole visibility timeout, as Lambda does.")
@click.option("--concurrency", type=click.IntRange(1, CONSUMER_MAX_CONCURRENCY),
              default=LOCAL_CONCURRENCY, show_default=True,
              help="Batches in flight at once (pollers, each with its own database connection).")
@click.option("--report-batch-item-failures/--no-report-batch-item-failures", default=True,
              show_default=True,
              help="Play a mapping with ReportBatchItemFailures (chalice package + "
                   "infra/chalice-merge.json), or one without it (chalice deploy).")
@click.option("--once", is_flag=True, help="Process one batch and exit.")
@output_format()
def worker(batch_size: int, wait_seconds: int, visibility_timeout: int, retry_delay: float,
           concurrency: int, report_batch_item_failures: bool, once: bool, fmt: str) -> None:
    """Long-poll the queue and run the consumer, as the Lambda event source mapping would.

    With --once, one batch, then what happened to it (--format json for scripts).
    """
    with exit_on_errors("worker cannot start"):
        workers = [build_worker(batch_size=batch_size, wait_seconds=wait_seconds,
                                visibility_timeout=visibility_timeout, retry_delay=retry_delay,
                                report_batch_item_failures=report_batch_item_failures)
                   for _ in range(1 if once else concurrency)]
    if once:
        with exit_on_errors("worker failed"):
            result = workers[0].poll_once()
        if fmt == "json":
            echo_json({"received": result.received, "deleted": result.deleted,
                       "retried": result.retried})
        else:
            click.echo(f"received {result.received}, deleted {result.deleted}, retried {result.retried}")
        return
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,), name=f"sqs-worker-{i}", daemon=True)
               for i, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    click.echo(f"worker polling {workers[0].queue_url} with {concurrency} poller(s) (Ctrl-C to stop)")
    try:
        while any(t.is_alive() for t in threads):
            stop.wait(0.5)
    except KeyboardInterrupt:
        stop.set()
