"""boto3 clients with the timeouts a request path needs.

botocore's defaults (60 s connect and read, 4-5 attempts) would hang a
Lambda for minutes when SQS or Secrets Manager is unreachable; these give
up within a couple of seconds and let the outbox relay catch up later.
boto3 is imported here only, lazily, to keep it off the cold-start path of
routes that never call AWS.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from chalicelib.config import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class Budget:
    """How long an AWS call may take: seconds to connect, seconds to wait for
    each reply, and requests in all (the first and its retries)."""

    connect_timeout: float
    read_timeout: float
    attempts: int


#: a request's, and the pipeline functions': give up within seconds (a
#: Lambda that hangs on SQS holds its caller; the outbox catches up later)
REQUEST_BUDGET = Budget(connect_timeout=1.0, read_timeout=3.0, attempts=2)


def client(service: str, settings: Settings, *, budget: Budget = REQUEST_BUDGET,
           read_timeout: float | None = None, connect_timeout: float | None = None,
           attempts: int | None = None, max_pool_connections: int = 10) -> Any:
    """A boto3 client of ``service`` with ``budget`` (each of its parts
    overridable on its own)."""
    import boto3
    from botocore.config import Config

    # total_max_attempts counts the first request; botocore's max_attempts
    # counts only the retries (attempts=1 would make two requests)
    config = Config(connect_timeout=budget.connect_timeout if connect_timeout is None else connect_timeout,
                    read_timeout=budget.read_timeout if read_timeout is None else read_timeout,
                    retries={"total_max_attempts": budget.attempts if attempts is None else attempts,
                             "mode": "standard"},
                    region_name=settings.aws_region, max_pool_connections=max_pool_connections)
    return boto3.session.Session().client(
        service, endpoint_url=settings.aws_endpoint_url, config=config)


def queue_url(sqs: Any, url: str | None, name: str | None, setting: str) -> str:
    """The queue URL given, or looked up by name.  Raises ConfigurationError."""
    from chalicelib.domain.errors import ConfigurationError

    if url:
        return url
    if not name:
        raise ConfigurationError(setting, "is not set (give the queue URL or its name)")
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        return sqs.get_queue_url(QueueName=name)["QueueUrl"]
    except ClientError as exc:
        # the code only: the error's text carries the account id; and an
        # AccessDenied is not a missing queue
        code = exc.response.get("Error", {}).get("Code", "")
        if "NonExistentQueue" in code or code == "QueueDoesNotExist":
            raise ConfigurationError(setting, f"queue {name!r} does not exist") from exc
        raise ConfigurationError(setting, f"cannot look up queue {name!r}: SQS answered "
                                          f"{code or 'an error'}") from exc
    except BotoCoreError as exc:
        from chalicelib.domain.errors import ServiceUnavailable
        raise ServiceUnavailable(f"SQS is unavailable: {type(exc).__name__}", dependency="sqs") from exc


# SendMessageBatch takes at most 10 entries and 1 MiB in all (bodies and
# attributes); the margin covers ids, attribute names and types.
SQS_BATCH_ENTRIES = 10
SQS_BATCH_BYTES = 1024 * 1024 - 16 * 1024


def sqs_batches(items: Iterable[T], size_of: Callable[[T], int]) -> Iterator[list[T]]:
    """Split ``items`` into SendMessageBatch-sized lists (``size_of`` gives an
    item's body plus attributes in bytes).  An item too big for any batch
    still gets a list of its own: SQS then refuses that one entry alone."""
    batch: list[T] = []
    size = 0
    for item in items:
        n = size_of(item)
        if batch and (len(batch) == SQS_BATCH_ENTRIES or size + n > SQS_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += n
    if batch:
        yield batch


# SQS caps MessageGroupId and MessageDeduplicationId at 128 characters.
FIFO_ID_LIMIT = 128


def session_of(event_id: str) -> str:
    """The session id of an event id ``<session_id>:<version>``."""
    return event_id.rpartition(":")[0] or event_id


def deduplication_id(event_id: str) -> str:
    """The FIFO deduplication id of an event: the event id itself, or its
    sha256 (64 hex characters) when it would not fit.

    A session id may have 128 characters, so ``<session_id>:<version>`` may
    exceed SQS's 128.  The hash is deterministic, so the relay's resend of
    an event the request path already sent gets the same id and SQS drops
    it; hex has no ':', so a hash never equals a short event id.
    """
    if len(event_id) <= FIFO_ID_LIMIT:
        return event_id
    return hashlib.sha256(event_id.encode()).hexdigest()


def fifo_fields(event_id: str) -> dict[str, str]:
    """A FIFO message's ordering and deduplication: per session, per event."""
    return {"MessageGroupId": session_of(event_id), "MessageDeduplicationId": deduplication_id(event_id)}


# -- what /health may say about an AWS error -----------------------------------

_ACCESS_DENIED = "access denied"
_AWS_CODES = {
    **dict.fromkeys(("AccessDenied", "AccessDeniedException", "AuthorizationError",
                     "UnauthorizedOperation", "KMSAccessDeniedException"), _ACCESS_DENIED),
    **dict.fromkeys(("InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
                     "InvalidSignatureException", "IncompleteSignature", "ExpiredToken",
                     "ExpiredTokenException", "MissingAuthenticationToken"),
                    "refused the credentials"),
    **dict.fromkeys(("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist",
                     "NonExistentQueue"), "queue does not exist"),
    "ResourceNotFoundException": "secret does not exist",
    "DecryptionFailure": "cannot decrypt the secret",
    **dict.fromkeys(("Throttling", "ThrottlingException", "RequestThrottled",
                     "TooManyRequestsException", "RequestLimitExceeded"), "throttled"),
    **dict.fromkeys(("ServiceUnavailable", "InternalFailure", "InternalError",
                     "InternalServiceError"), "unavailable"),
}
_AWS_STATUS = {403: _ACCESS_DENIED, 404: "does not exist", 429: "throttled"}
#: the service behind an AWS operation, when it is not the check's own
_AWS_OPERATION_DEPENDENCY = {"GetSecretValue": "secretsmanager"}


def phrase(exc: BaseException) -> tuple[str, str | None] | None:
    """(what a public health report may say about an AWS error, the
    dependency it names when not the caller's own), or None when ``exc`` is
    not botocore's.  Never the error's own text: it carries ARNs, account
    ids and queue URLs."""
    from botocore import exceptions as boto

    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        reason = _AWS_CODES.get(str(error.get("Code", ""))) or _AWS_STATUS.get(status)
        if reason is None:
            reason = "unavailable" if isinstance(status, int) and status >= 500 else "refused the request"
        return reason, _AWS_OPERATION_DEPENDENCY.get(exc.operation_name)
    if isinstance(exc, (boto.ConnectTimeoutError, boto.ReadTimeoutError)):
        return "timed out", None
    if isinstance(exc, (boto.EndpointConnectionError, boto.ConnectionClosedError)):
        return "unreachable", None
    if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError)):
        return "no AWS credentials", None
    if isinstance(exc, boto.BotoCoreError):
        return "unavailable", None
    return None
