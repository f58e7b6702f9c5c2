"""The SQS consumer: persist a batch of change events, report what failed.

Safe whatever the event source mapping says.  With
``ReportBatchItemFailures`` the mapping deletes every record not listed in
``{"batchItemFailures": [...]}``; without it (what ``chalice deploy``
creates: Chalice cannot set it) it deletes the whole batch whenever the
handler returns.  So when any record must be retried, the handler deletes
the records it did handle itself and then raises ``BatchIncomplete``: in
both modes Lambda then deletes nothing, and only the records that were not
persisted come back after the visibility timeout (after maxReceiveCount
receives the queue's redrive policy moves them to the DLQ).  A handled
record whose delete fails comes back too and is skipped as a duplicate.
When nothing must be retried, it returns normally and the mapping deletes
the batch.

What happens to a record:

==========================================  ===================================
outcome                                     result
==========================================  ===================================
persisted, or already persisted (duplicate) deleted from the queue
retryable error (connection lost, timeout,  batch item failure: SQS retries it,
deadlock, serialization, shutdown...)       the redrive policy is the backstop
permanent error (malformed body, SQLSTATE   sent to the DLQ now with the reason
class 22 / 23 / 54)                         in message attributes; deleted from
                                            the main queue (not a failure)
permanent, but the DLQ send failed          batch item failure (never dropped)
==========================================  ===================================

and "batch item failure" means: listed in the response, and the handler
raises after deleting the others (see above).

Structure, as powertools' batch utility has it: a per-record function
(``parse_record``) and one loop over the batch collecting failures.  The
utility itself is not used because it persists record by record; here the
whole batch goes to PostgreSQL in one statement (one round trip, one
commit), which is what the consumer's throughput rests on (figures in
docs/performance.md, "Consumer throughput"), and the database falls back
to one transaction per record only when the batch holds a poison message.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from chalicelib.domain.errors import (
    MalformedMessage,
    PermanentPersistenceError,
    PersistenceError,
    SessionSyncError,
)
from chalicelib.domain.events import ChangeEvent, parse_event
from chalicelib.observability import metrics
from chalicelib.pipeline.dead_letters import DeadLetter, DeadLetterQueue

log = logging.getLogger("sessionsync.consumer")

class ApplyResultLike(Protocol):
    @property
    def inserted(self) -> int: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def failures(self) -> Mapping[int, PersistenceError]: ...


class EventSink(Protocol):
    """What the consumer needs from the database (``database.Database``)."""

    def apply_events(self, events: Sequence[ChangeEvent]) -> ApplyResultLike: ...


@dataclass
class BatchReport:
    """Counts for one batch (logged; the benchmark and tests read them)."""

    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retry: list[str] = field(default_factory=list)

    def response(self) -> dict[str, Any]:
        """The Lambda response: SQS keeps exactly these records."""
        return {"batchItemFailures": [{"itemIdentifier": mid} for mid in self.retry]}


def parse_record(record: Mapping[str, Any]) -> ChangeEvent:
    """The change event in one SQS record.  Raises MalformedMessage."""
    body = record.get("body")
    if not isinstance(body, str):
        raise MalformedMessage("the SQS record has no body", reason="no_body")
    return parse_event(body)


class BatchIncomplete(Exception):
    """Some records of the batch must be retried; the others were deleted.

    Raised by ``Consumer.handle`` so that an event source mapping without
    ``ReportBatchItemFailures`` does not delete the whole batch.
    """

    def __init__(self, report: BatchReport) -> None:
        super().__init__(f"{len(report.retry)} of {report.received} records must be retried "
                         "(the others were persisted or dead-lettered, and deleted)")
        self.report = report


class RecordSource(Protocol):
    """Deletes handled records from the queue they came from."""

    def delete(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Delete ``records``; return how many could not be (never raises)."""


class SqsRecordSource:
    """The session queue (boto3 SQS client given): deletes by receipt handle.

    ``queue_url`` may be a function: a warm consumer that never needs to
    delete never looks the URL up.
    """

    def __init__(self, sqs: Any, queue_url: str | Callable[[], str]) -> None:
        self.sqs = sqs
        self._queue_url = queue_url

    @property
    def queue_url(self) -> str:
        return self._queue_url() if callable(self._queue_url) else self._queue_url

    def delete(self, records: Sequence[Mapping[str, Any]]) -> int:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            queue_url = self.queue_url
        except SessionSyncError as exc:
            log.warning("cannot look the queue up to delete handled records; they will be "
                        "delivered again and skipped as duplicates", extra={"error": exc.message})
            return len(records)
        failed = 0
        for start in range(0, len(records), 10):  # DeleteMessageBatch takes 10
            chunk = records[start:start + 10]
            entries = [{"Id": str(i), "ReceiptHandle": r["receiptHandle"]} for i, r in enumerate(chunk)]
            try:
                reply = self.sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
            except (BotoCoreError, ClientError) as exc:
                log.warning("delete of handled records failed; they will be delivered again "
                            "and skipped as duplicates", extra={"error": repr(exc), "records": len(chunk)})
                failed += len(chunk)
                continue
            failed += len(reply.get("Failed") or [])
        return failed


class Consumer:
    """Handles one SQS batch (the Lambda handler's body, and the local worker's).

    Takes the database (``apply_events``), the DLQ sender and the queue the
    records come from (to delete handled records itself) as arguments.
    """

    def __init__(self, database: EventSink, dead_letters: DeadLetterQueue,
                 source: RecordSource) -> None:
        self.database = database
        self.dead_letters = dead_letters
        self.source = source

    def handle(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The Lambda handler: SQS event in, batch item failures out.

        Raises BatchIncomplete, after deleting the handled records, when any
        record must be retried (see the module docstring).
        """
        records = event.get("Records") or []
        return self.respond(records, self.process(records))

    def respond(self, records: Sequence[Mapping[str, Any]], report: BatchReport) -> dict[str, Any]:
        """The response for a processed batch, or BatchIncomplete raised
        after deleting the handled records (see the module docstring)."""
        if report.retry:
            retry = set(report.retry)
            handled = [r for r in records if r.get("messageId") not in retry]
            if handled:
                self.source.delete(handled)
            raise BatchIncomplete(report)
        return report.response()

    def process(self, records: Sequence[Mapping[str, Any]]) -> BatchReport:
        """Persist ``records``; say which ones SQS must keep.

        Raises only for a bug (an unexpected exception): Lambda then retries
        the whole batch, which is safe because persisting is idempotent.
        """
        report = BatchReport(received=len(records))
        poison: list[DeadLetter] = []
        valid: list[tuple[Mapping[str, Any], ChangeEvent]] = []
        for record in records:
            try:
                valid.append((record, parse_record(record)))
            except MalformedMessage as exc:
                poison.append(DeadLetter(record, exc))

        if valid:
            result = self.database.apply_events([event for _, event in valid])
            report.inserted, report.duplicates = result.inserted, result.duplicates
            for index, error in sorted(result.failures.items()):
                record, event = valid[index]
                if isinstance(error, PermanentPersistenceError):
                    poison.append(DeadLetter(record, error, event.event_id))
                else:
                    report.retry.append(record["messageId"])

        if poison:
            unsent = self.dead_letters.send(poison)
            for letter in poison:
                message_id = letter.record["messageId"]
                if message_id in unsent:
                    report.retry.append(message_id)
                else:
                    report.dead_lettered += 1
                    log.error("record dead-lettered", extra={
                        "message_id": message_id, "event_id": letter.event_id,
                        "error_class": letter.error.code, "sqlstate": letter.error.sqlstate,
                        "constraint": letter.error.constraint, "error": letter.error.message})

        metrics.emit({"ConsumerBatchSize": report.received, "PersistedEvents": report.inserted,
                      "DlqSends": report.dead_lettered})
        log.info("batch processed", extra={
            "received": report.received, "inserted": report.inserted,
            "duplicates": report.duplicates, "dead_lettered": report.dead_lettered,
            "retry": len(report.retry)})
        return report
