"""LocalStack SQS for the sections that time real SQS calls.

Each use gets a queue of its own (deleted afterwards) so that a run never
touches the queues ``make run`` uses.  LocalStack is optional: without it
those measurements are reported as skipped, with the reason.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_ENDPOINT = "http://127.0.0.1:4566"


def localstack_sqs_unavailable(endpoint: str | None) -> str | None:
    """None if LocalStack answers with SQS available; else why not."""
    if not endpoint:
        return "no AWS endpoint configured (set AWS_ENDPOINT_URL or --aws-endpoint-url)"
    try:
        with urllib.request.urlopen(f"{endpoint.rstrip('/')}/_localstack/health", timeout=2) as reply:
            services = json.load(reply).get("services", {})
    except (OSError, urllib.error.URLError, ValueError) as exc:
        return f"LocalStack does not answer at {endpoint}: {exc}"
    if services.get("sqs") not in ("available", "running"):
        return f"LocalStack at {endpoint} has no SQS (status {services.get('sqs')!r})"
    return None


def sqs_client(endpoint: str | None) -> Any:
    """A boto3 SQS client for LocalStack (it accepts any credentials)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1",
    ).client("sqs", endpoint_url=endpoint,
             config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 2}))


@contextmanager
def temporary_queue(client: Any, name: str) -> Iterator[str]:
    """Create a queue, yield its URL, delete it."""
    url = client.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    try:
        yield url
    finally:
        client.delete_queue(QueueUrl=url)
