"""Queue depth from SQS: waiting, in flight, delayed (main queue and DLQ).

SQS's ``ApproximateNumberOf*`` attributes are eventually consistent (they
can lag by a minute on AWS): good for operators and health checks, never a
correctness signal.  boto3 clients are passed in; errors leave as
sessionsync errors (``raise ... from`` the botocore one).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from chalicelib.config import SESSION_DLQ_URL, SESSION_QUEUE_URL
from chalicelib.domain.errors import ConfigurationError, ServiceUnavailable

_ATTRIBUTES = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
               "ApproximateNumberOfMessagesDelayed"]


@dataclass(frozen=True)
class QueueDepth:
    #: visible, waiting for a consumer
    waiting: int
    #: received by a consumer and not yet deleted (being processed, or
    #: about to reappear when its visibility timeout ends)
    in_flight: int
    #: sent with a delay that has not passed yet
    delayed: int

    @property
    def total(self) -> int:
        return self.waiting + self.in_flight + self.delayed

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def queue_depth(sqs: Any, queue_url: str, *, setting: str = SESSION_QUEUE_URL) -> QueueDepth:
    """Depth of the queue at ``queue_url``.

    Raises ServiceUnavailable (dependency "sqs") when SQS cannot be reached,
    ConfigurationError naming ``setting`` when the queue does not exist.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=_ATTRIBUTES)["Attributes"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if "NonExistentQueue" in code or code == "QueueDoesNotExist":
            raise ConfigurationError(setting, "the queue does not exist") from exc
        raise ServiceUnavailable(f"SQS refused GetQueueAttributes: {code or 'error'}",
                                 dependency="sqs") from exc
    except BotoCoreError as exc:
        raise ServiceUnavailable(f"SQS is unavailable: {type(exc).__name__}",
                                 dependency="sqs") from exc
    return QueueDepth(waiting=int(attrs.get("ApproximateNumberOfMessages", 0)),
                      in_flight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
                      delayed=int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)))


def collect(sqs: Any, queue_url: str | None, dlq_url: str | None) -> dict[str, dict[str, int]]:
    """{"queue": depth, "dlq": depth} for the queues given (None: left out).

    Raises as ``queue_depth``.
    """
    out: dict[str, dict[str, int]] = {}
    if queue_url:
        out["queue"] = queue_depth(sqs, queue_url).to_dict()
    if dlq_url:
        out["dlq"] = queue_depth(sqs, dlq_url, setting=SESSION_DLQ_URL).to_dict()
    return out
