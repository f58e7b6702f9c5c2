"""boto3 clients with the timeouts a request path needs.

botocore's defaults (60 s connect and read, 4-5 attempts) would hang a
Lambda for minutes when SQS or Secrets Manager is unreachable; these give
up within a couple of seconds and let the outbox relay catch up later.
boto3 is imported here only, lazily, to keep it off the cold-start path of
routes that never call AWS.
"""
from __future__ import annotations

from typing import Any

from chalicelib.config import Settings


def client(service: str, settings: Settings, *, connect_timeout: float = 1.0,
           read_timeout: float = 3.0, attempts: int = 2) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                    retries={"max_attempts": attempts, "mode": "standard"},
                    region_name=settings.aws_region)
    return boto3.session.Session().client(
        service, endpoint_url=settings.aws_endpoint_url, config=config)


def queue_url(sqs: Any, url: str | None, name: str | None, setting: str) -> str:
    """The queue URL given, or looked up by name.  Raises ConfigurationError."""
    from chalicelib.errors import ConfigurationError

    if url:
        return url
    if not name:
        raise ConfigurationError(setting, "is not set (give the queue URL or its name)")
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        raise ConfigurationError(setting, f"queue {name!r} not found: {exc}") from exc
    except BotoCoreError as exc:
        from chalicelib.errors import ServiceUnavailable
        raise ServiceUnavailable(f"SQS is unavailable: {exc}", dependency="sqs") from exc
