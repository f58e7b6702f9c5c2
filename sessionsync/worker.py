"""The local SQS worker: what the Lambda event source mapping does, in a loop.

LocalStack cannot run Lambda functions without Docker, so locally this
process takes the mapping's place and calls the very same handler:

1. long-poll the queue (``WaitTimeSeconds``), at most ``batch_size``
   messages (``MaxNumberOfMessages``), hidden for ``visibility_timeout``;
2. build the exact event Lambda would pass (``{"Records": [...]}`` with
   messageId, receiptHandle, body, attributes incl. ApproximateReceiveCount,
   messageAttributes in Lambda's lowercase ``stringValue`` form,
   eventSource ``aws:sqs``, eventSourceARN, awsRegion);
3. call the handler; when it returns, delete every record that is not in
   its ``batchItemFailures`` (``DeleteMessageBatch``) if the mapping has
   ``ReportBatchItemFailures`` (``report_batch_item_failures=True``, what
   ``chalice package`` + infra/chalice-merge.json deploys), or the whole
   batch if it has not (``False``: what ``chalice deploy`` creates); if the
   handler raises, delete nothing (Lambda retries the whole batch).  Both
   modes are tested: the consumer must be safe under either.

One deliberate difference: Lambda leaves a failed record invisible for the
whole visibility timeout (180 s here), which would make a local retry take
three minutes.  The worker instead makes it visible again after an
exponential backoff, ``retry_delay * 2 ** (receive count - 1)`` capped at
the visibility timeout (2, 4, 8, 16, 32 s: the 5 receives the redrive
policy allows span about a minute, so a PostgreSQL restart of 20 s loses
nothing).  ``retry_delay=0`` keeps Lambda's exact behaviour.
"""
from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chalicelib.constants import CONSUMER_BATCH_SIZE, QUEUE_VISIBILITY_TIMEOUT
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.pipeline.consumer import BatchIncomplete

log = logging.getLogger("sessionsync.worker")

Handler = Callable[[dict[str, Any]], Mapping[str, Any]]
DEFAULT_WAIT_SECONDS = 10
DEFAULT_RETRY_DELAY = 2.0
# pause between polls while every batch fails (the database is down):
# doubles from the first value up to the second
_IDLE_BACKOFF = (0.2, 5.0)


@dataclass
class PollResult:
    received: int = 0
    deleted: int = 0
    retried: int = 0

    def __iadd__(self, other: PollResult) -> PollResult:
        self.received += other.received
        self.deleted += other.deleted
        self.retried += other.retried
        return self


def lambda_record(message: Mapping[str, Any], *, queue_arn: str, region: str) -> dict[str, Any]:
    """One ReceiveMessage message in the shape of a Lambda SQS event record."""
    attributes: dict[str, Any] = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        data_type = value["DataType"]
        converted: dict[str, Any] = {"stringListValues": [], "binaryListValues": [],
                                     "dataType": data_type}
        if "StringValue" in value:
            converted["stringValue"] = value["StringValue"]
        if "BinaryValue" in value:
            converted["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
        attributes[name] = converted
    record = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": dict(message.get("Attributes") or {}),
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody"),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


class Worker:
    """Polls ``queue_url`` and feeds batches to ``handler`` (SQS client given)."""

    def __init__(self, sqs: Any, queue_url: str, handler: Handler, *,
                 batch_size: int = CONSUMER_BATCH_SIZE, wait_seconds: int = DEFAULT_WAIT_SECONDS,
                 visibility_timeout: int = QUEUE_VISIBILITY_TIMEOUT,
                 retry_delay: float = DEFAULT_RETRY_DELAY,
                 report_batch_item_failures: bool = True) -> None:
        if not 1 <= batch_size <= 10:
            raise ValueError("batch_size must be between 1 and 10 (SQS ReceiveMessage)")
        if not 0 <= wait_seconds <= 20:
            raise ValueError("wait_seconds must be between 0 and 20 (SQS long polling)")
        self.sqs = sqs
        self.queue_url = queue_url
        self.handler = handler
        self.batch_size = batch_size
        self.wait_seconds = wait_seconds
        self.visibility_timeout = visibility_timeout
        self.retry_delay = retry_delay
        self.report_batch_item_failures = report_batch_item_failures
        self._queue_arn: str | None = None

    @property
    def region(self) -> str:
        return self.sqs.meta.region_name

    def queue_arn(self) -> str:
        if self._queue_arn is None:
            self._queue_arn = self._call("get_queue_attributes", QueueUrl=self.queue_url,
                                         AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return self._queue_arn

    def _call(self, operation: str, **params: Any) -> Any:
        """An SQS call; connection trouble and refusals become ServiceUnavailable."""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return getattr(self.sqs, operation)(**params)
        except (BotoCoreError, ClientError) as exc:
            raise ServiceUnavailable(f"SQS {operation} failed: {exc}", dependency="sqs") from exc

    def poll_once(self) -> PollResult:
        """Receive one batch, run the handler, delete what succeeded.

        Raises ServiceUnavailable when SQS cannot be reached (nothing was
        lost: undeleted messages come back after their visibility timeout).
        """
        reply = self._call(
            "receive_message", QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.wait_seconds, VisibilityTimeout=self.visibility_timeout,
            MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"])
        messages = reply.get("Messages") or []
        if not messages:
            return PollResult()
        arn, region = self.queue_arn(), self.region
        records = [lambda_record(m, queue_arn=arn, region=region) for m in messages]
        try:
            response = self.handler({"Records": records})
            # without ReportBatchItemFailures, Lambda ignores the response:
            # a handler that returns succeeded with its whole batch
            failed = ({item["itemIdentifier"] for item in response.get("batchItemFailures") or []}
                      if self.report_batch_item_failures else set())
        except BatchIncomplete as exc:
            # As Lambda: a handler that raises fails the whole batch; this
            # one deleted the records it handled before raising.
            log.warning("some records will be retried", extra={"retry": len(exc.report.retry)})
            retry_ids = set(exc.report.retry)
            retry = [r for r in records if r["messageId"] in retry_ids]
            self._schedule_retry(retry)
            return PollResult(received=len(records), deleted=len(records) - len(retry),
                              retried=len(retry))
        except Exception:
            # As Lambda: a handler that raises fails the whole batch.
            log.exception("consumer handler raised; the whole batch will be retried")
            failed = {r["messageId"] for r in records}
        done = [r for r in records if r["messageId"] not in failed]
        retry = [r for r in records if r["messageId"] in failed]
        self._delete(done)
        self._schedule_retry(retry)
        return PollResult(received=len(records), deleted=len(done), retried=len(retry))

    def _delete(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        entries = [{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(records)]
        try:
            reply = self._call("delete_message_batch", QueueUrl=self.queue_url, Entries=entries)
        except ServiceUnavailable as exc:
            # persisted but not deleted: it comes back and is skipped as a duplicate
            log.warning("delete failed; the messages will be delivered again",
                        extra={"error": exc.message, "messages": len(records)})
            return
        if reply.get("Failed"):
            log.warning("some deletes failed; those messages will be delivered again",
                        extra={"failed": len(reply["Failed"])})

    def _schedule_retry(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records or self.retry_delay <= 0:
            return
        entries = []
        for i, record in enumerate(records):
            count = int(record["attributes"].get("ApproximateReceiveCount", "1"))
            delay = min(self.visibility_timeout, self.retry_delay * 2 ** max(count - 1, 0))
            entries.append({"Id": str(i), "ReceiptHandle": record["receiptHandle"],
                            "VisibilityTimeout": int(delay)})
        try:
            self._call("change_message_visibility_batch", QueueUrl=self.queue_url, Entries=entries)
        except ServiceUnavailable as exc:
            # they come back after the full visibility timeout instead
            log.warning("could not shorten the retry delay", extra={"error": exc.message})

    def drain(self, *, timeout: float, idle_polls: int = 1) -> PollResult:
        """Poll until ``idle_polls`` polls in a row receive nothing, or until
        ``timeout`` seconds have passed.  Raises ServiceUnavailable."""
        deadline = time.monotonic() + timeout
        total = PollResult()
        idle = 0
        while idle < idle_polls and time.monotonic() < deadline:
            result = self.poll_once()
            total += result
            idle = idle + 1 if result.received == 0 else 0
        return total

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set.  Never raises: SQS or handler trouble is
        logged and retried with a growing pause (at most 5 s)."""
        pause = 0.0
        while not stop.is_set():
            try:
                result = self.poll_once()
            except ServiceUnavailable as exc:
                log.warning("worker cannot reach SQS", extra={"error": exc.message})
                result = None
            except Exception:  # the thread must survive anything
                log.exception("worker poll failed")
                result = None
            if result is None or (result.received and result.retried == result.received):
                # nothing could be done (SQS or the database is down): slow down
                pause = min(_IDLE_BACKOFF[1], max(_IDLE_BACKOFF[0], pause * 2))
                stop.wait(pause)
            else:
                pause = 0.0


# The local expiry sweep runs this often: the scheduled function's rate.
SWEEP_INTERVAL_SECONDS = 60.0


def run_sweeps(sweep: Any, stop: threading.Event, *, interval: float = SWEEP_INTERVAL_SECONDS,
               budget_seconds: float = 30.0) -> None:
    """The ``sweep_expired`` schedule, locally: run the expiry sweep
    (chalicelib.pipeline.expiry) every ``interval`` seconds until ``stop``
    is set.  Never raises: Redis or PostgreSQL trouble is logged and the
    next run tries again (a sweep is safe to repeat and to cut short)."""
    while not stop.is_set():
        try:
            sweep.run(budget_seconds=budget_seconds)
        except ServiceUnavailable as exc:
            log.warning("expiry sweep cannot reach a dependency", extra={"error": exc.message})
        except Exception:  # the thread must survive anything
            log.exception("expiry sweep failed")
        stop.wait(interval)
