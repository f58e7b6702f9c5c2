"""The dead-letter queue's writer: a record that can never be persisted goes
there at once, with message attributes that say why.

The attribute names are defined here, once: the consumer writes them, and
the operator's tool (``sessionsync.dlq``) reads them and strips them on
redrive.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chalicelib.adapters.aws import sqs_batches
from chalicelib.domain.errors import PermanentPersistenceError

log = logging.getLogger("sessionsync.consumer")  # its lines are the consumer's

# The message attributes of a dead letter: why it is there...
ERROR_CLASS = "error_class"  # MalformedMessage | PermanentPersistenceError
ERROR_CODE = "error_code"  # the SQLSTATE, or a malformed message's reason
SQLSTATE = "sqlstate"
CONSTRAINT = "constraint"
ERROR_MESSAGE = "error_message"
FAILED_AT = "failed_at"
# ... and where it came from
ORIGINAL_MESSAGE_ID = "original_message_id"
RECEIVE_COUNT = "receive_count"
SOURCE_QUEUE = "source_queue"
# the producer's attribute (producer.message_attributes), kept on the letter
EVENT_ID = "event_id"

#: the attributes dead-lettering adds (all but the producer's event_id): a
#: redrive strips them so that a second failure records its own reason
ERROR_ATTRIBUTES = frozenset({ERROR_CLASS, ERROR_CODE, SQLSTATE, CONSTRAINT, ERROR_MESSAGE,
                              ORIGINAL_MESSAGE_ID, RECEIVE_COUNT, SOURCE_QUEUE, FAILED_AT})

# SQS: at most 10 message attributes; values are non-empty strings of
# allowed XML characters.  An error message is cut to this many characters.
MAX_ERROR_MESSAGE = 1000
# the characters SQS accepts: #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class DeadLetter:
    """A record that can never be persisted, and why."""

    record: Mapping[str, Any]
    error: PermanentPersistenceError
    event_id: str | None = None


def dead_letter_attributes(letter: DeadLetter, *, now: float) -> dict[str, dict[str, str]]:
    """Message attributes saying why ``letter`` is in the DLQ (at most 10).

    error_class (MalformedMessage | PermanentPersistenceError), error_code
    (the SQLSTATE, or the malformed reason), sqlstate and constraint when
    the database gave them, error_message (cut), and where it came from:
    original_message_id, receive_count, event_id, source_queue, failed_at.
    """
    error = letter.error
    record = letter.record
    reason = error.details.get("reason")
    values = {
        ERROR_CLASS: error.code,
        ERROR_CODE: error.sqlstate or reason or error.code,
        SQLSTATE: error.sqlstate,
        CONSTRAINT: error.constraint,
        ERROR_MESSAGE: _xml_safe(error.message)[:MAX_ERROR_MESSAGE],
        ORIGINAL_MESSAGE_ID: record.get("messageId"),
        RECEIVE_COUNT: (record.get("attributes") or {}).get("ApproximateReceiveCount"),
        EVENT_ID: letter.event_id or _attribute(record, EVENT_ID),
        SOURCE_QUEUE: record.get("eventSourceARN"),
        FAILED_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    }
    attributes: dict[str, dict[str, str]] = {}
    for name, value in values.items():
        if value:  # SQS rejects an empty attribute value
            data_type = "Number" if name == RECEIVE_COUNT else "String"
            attributes[name] = {"DataType": data_type, "StringValue": str(value)}
    return attributes


def _attribute(record: Mapping[str, Any], name: str) -> str | None:
    # Lambda's record shape: {"event_id": {"stringValue": ..., "dataType": ...}}
    attribute = (record.get("messageAttributes") or {}).get(name) or {}
    return attribute.get("stringValue")


def _xml_safe(text: str) -> str:
    """Drop characters SQS refuses in attribute values (NUL, other controls)."""
    return _NOT_XML.sub("", text)


def _body(record: Mapping[str, Any]) -> str:
    # The original bytes, unchanged, so that a redrive can replay them; SQS
    # refuses an empty body, which only a hand-made record can have.
    body = record.get("body")
    return body if isinstance(body, str) and body else "(no body)"


class DeadLetterQueue:
    """Sends poison records to the DLQ with their reason (boto3 SQS client given)."""

    def __init__(self, sqs: Any, queue_url: str, *, fifo: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.fifo = fifo
        self.clock = clock

    def send(self, letters: Sequence[DeadLetter]) -> set[str]:
        """Send every letter; return the message ids that could NOT be sent.

        Never raises for SQS trouble: the caller reports the unsent records
        as batch item failures, so SQS keeps them (never a silent loss).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        unsent: set[str] = set()
        now = self.clock()
        for chunk in sqs_batches(letters, _letter_size):
            entries = [{"Id": str(i), "MessageBody": _body(letter.record),
                        "MessageAttributes": dead_letter_attributes(letter, now=now),
                        **(_fifo_fields(letter) if self.fifo else {})}
                       for i, letter in enumerate(chunk)]
            try:
                reply = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except (BotoCoreError, ClientError) as exc:
                log.error("DLQ send failed; the records stay on the main queue",
                          extra={"error": repr(exc), "records": len(chunk)})
                unsent.update(letter.record["messageId"] for letter in chunk)
                continue
            for failed in reply.get("Failed", []):
                letter = chunk[int(failed["Id"])]
                log.error("DLQ refused a record; it stays on the main queue",
                          extra={"message_id": letter.record["messageId"], "code": failed.get("Code")})
                unsent.add(letter.record["messageId"])
        return unsent


def _fifo_fields(letter: DeadLetter) -> dict[str, str]:
    """A FIFO DLQ's group and deduplication ids for ``letter``: both the
    original message's id.

    One group per letter: the DLQ tool (sessionsync/dlq.py) holds the
    messages it walks in flight, and in a FIFO queue a message in flight
    hides the rest of its group, so a shared group would hide letters from
    ``dlq list`` and ``dlq redrive``.  Not the event id for deduplication: a
    redriven event that fails again within five minutes is a new message
    and must reach the DLQ again, while the same record dead-lettered twice
    (its batch retried) is kept once.
    """
    message_id = str(letter.record["messageId"])
    return {"MessageGroupId": message_id, "MessageDeduplicationId": message_id}


def _letter_size(letter: DeadLetter) -> int:
    # the body as sent, plus the reason attributes (the message is cut at
    # MAX_ERROR_MESSAGE characters, up to 4 bytes each)
    return len(_body(letter.record).encode()) + 4 * MAX_ERROR_MESSAGE + 1024
