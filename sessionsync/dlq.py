"""The dead-letter queue: look at what is in it, and send it back.

Two ways a message reaches the DLQ (see ``chalicelib.pipeline.consumer``
and ``chalicelib.pipeline.dead_letters``):

* the consumer sent it at once because it can never be persisted as it is
  (malformed body, SQLSTATE class 22/23/54); its message attributes say why:
  ``error_class``, ``error_code``, ``sqlstate``, ``constraint``,
  ``error_message``, ``failed_at``...;
* the queue's redrive policy moved it after maxReceiveCount failed
  receives (a retryable error that lasted too long, or a consumer that kept
  crashing); it has no error attributes.

``peek`` reads without consuming: it receives with a short visibility
timeout, and makes every received message visible again at once when done.
``redrive`` moves messages back to the main queue once the cause is fixed:
all of them with SQS's own move task (``StartMessageMoveTask``), or only
those a filter selects by receive, send, delete.  A crash between the send
and the delete leaves a copy in both queues; the consumer is idempotent
(one row per session and version), so the duplicate is harmless.

boto3 SQS clients are passed in; SQS trouble leaves as ServiceUnavailable.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from chalicelib.adapters.aws import session_of, sqs_batches
from chalicelib.constants import FIFO_SUFFIX
from chalicelib.domain.errors import ServiceUnavailable
from chalicelib.domain.tenants import tenant_of
from chalicelib.pipeline.dead_letters import (
    CONSTRAINT,
    ERROR_ATTRIBUTES,
    ERROR_CLASS,
    ERROR_CODE,
    ERROR_MESSAGE,
    EVENT_ID,
    FAILED_AT,
    SQLSTATE,
)

REDRIVE_POLICY_CLASS = "MaxReceiveCountExceeded"
_RECEIVE_BATCH = 10
# Long enough to walk a large DLQ without the first messages reappearing;
# every message not deleted is made visible again explicitly at the end.
_WALK_VISIBILITY_SECONDS = 60

Progress = Callable[[int], None]


@dataclass(frozen=True)
class DeadLetterMessage:
    """One message in the DLQ, decoded as far as it can be."""

    message_id: str
    receipt_handle: str
    body: str
    attributes: Mapping[str, str]
    message_attributes: Mapping[str, Mapping[str, Any]] = field(repr=False, default_factory=dict)
    #: ApproximateReceiveCount, SentTimestamp... (SQS's system attributes)
    system: Mapping[str, str] = field(repr=False, default_factory=dict)

    @property
    def error_class(self) -> str:
        return self.attributes.get(ERROR_CLASS) or REDRIVE_POLICY_CLASS

    @property
    def sqlstate(self) -> str | None:
        return self.attributes.get(SQLSTATE)

    @property
    def error_code(self) -> str | None:
        """The SQLSTATE, or for a malformed message the reason (e.g. not_json)."""
        return self.attributes.get(ERROR_CODE) or self.sqlstate

    @property
    def constraint(self) -> str | None:
        return self.attributes.get(CONSTRAINT)

    @property
    def reason(self) -> tuple[str, str | None, str | None]:
        return self.error_class, self.error_code, self.constraint

    @property
    def event(self) -> Mapping[str, Any] | None:
        """The change event in the body, or None when the body is not one."""
        try:
            doc = json.loads(self.body)
        except (ValueError, RecursionError):  # poison can be nested 100k deep
            return None
        return doc if isinstance(doc, dict) else None

    @property
    def session_id(self) -> str | None:
        event = self.event
        value = event.get("session_id") if event else None
        if isinstance(value, str):
            return value
        event_id = self.attributes.get(EVENT_ID, "")
        return event_id.rsplit(":", 1)[0] if ":" in event_id else None

    def summary(self) -> dict[str, Any]:
        event = self.event or {}
        return {"message_id": self.message_id, "error_class": self.error_class,
                "error_code": self.error_code, "sqlstate": self.sqlstate,
                "constraint": self.constraint,
                "error_message": self.attributes.get(ERROR_MESSAGE),
                "session_id": self.session_id, "tenant": tenant_of(self.session_id) if self.session_id
                else None, "version": event.get("version"),
                "event_type": event.get("event_type"), "failed_at": self.attributes.get(FAILED_AT),
                "receive_count": self.system.get("ApproximateReceiveCount")}


@dataclass(frozen=True)
class ReasonGroup:
    """Messages that failed for the same reason: error class, error code
    (the SQLSTATE, or a malformed message's reason) and constraint."""

    error_class: str
    error_code: str | None
    constraint: str | None
    count: int
    example_message: str | None
    session_ids: Sequence[str]

    def to_dict(self) -> dict[str, Any]:
        return {"error_class": self.error_class, "error_code": self.error_code,
                "constraint": self.constraint, "count": self.count,
                "example_message": self.example_message, "session_ids": list(self.session_ids)}


@dataclass
class RedriveResult:
    moved: int = 0
    skipped: int = 0
    #: the SQS move task's handle when SQS moved them itself
    task_handle: str | None = None


def _sqs_errors(action: str) -> AbstractContextManager[None]:
    """Context manager: botocore errors -> ServiceUnavailable("sqs")."""
    from contextlib import contextmanager

    from botocore.exceptions import BotoCoreError, ClientError

    @contextmanager
    def translate() -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise ServiceUnavailable(f"SQS refused {action}: {code}", dependency="sqs",
                                     sqs_error=code) from exc
        except BotoCoreError as exc:
            raise ServiceUnavailable(f"SQS is unavailable ({action}): {type(exc).__name__}",
                                     dependency="sqs") from exc
    return translate()


def _decode(message: Mapping[str, Any]) -> DeadLetterMessage:
    raw = message.get("MessageAttributes") or {}
    return DeadLetterMessage(
        message_id=message["MessageId"], receipt_handle=message["ReceiptHandle"],
        body=message.get("Body", ""),
        attributes={k: v.get("StringValue", "") for k, v in raw.items() if "StringValue" in v},
        message_attributes=raw, system=message.get("Attributes") or {})


def _receive(sqs: Any, queue_url: str, visibility: int) -> list[DeadLetterMessage]:
    with _sqs_errors("ReceiveMessage"):
        reply = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=_RECEIVE_BATCH,
                                    VisibilityTimeout=visibility, WaitTimeSeconds=0,
                                    MessageAttributeNames=["All"],
                                    AttributeNames=["ApproximateReceiveCount", "SentTimestamp"])
    return [_decode(m) for m in reply.get("Messages", [])]


def _walk(sqs: Any, queue_url: str, limit: int | None) -> Iterator[DeadLetterMessage]:
    """Receive every message once (up to ``limit``), hiding each for the walk.

    Stops when a receive returns nothing new: the queue is exhausted, or
    only messages already seen are coming back.
    """
    seen: set[str] = set()
    while limit is None or len(seen) < limit:
        batch = [m for m in _receive(sqs, queue_url, _WALK_VISIBILITY_SECONDS)
                 if m.message_id not in seen]
        if not batch:
            return
        for message in batch:
            if limit is not None and len(seen) >= limit:
                # received beyond the limit: give it back untouched
                release(sqs, queue_url, [message])
                continue
            seen.add(message.message_id)
            yield message


def release(sqs: Any, queue_url: str, messages: Sequence[DeadLetterMessage]) -> None:
    """Make received messages visible again now (visibility timeout 0)."""
    for start in range(0, len(messages), _RECEIVE_BATCH):
        chunk = messages[start:start + _RECEIVE_BATCH]
        with _sqs_errors("ChangeMessageVisibilityBatch"):
            sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m.receipt_handle, "VisibilityTimeout": 0}
                for i, m in enumerate(chunk)])


def peek(sqs: Any, dlq_url: str, *, limit: int = 100) -> list[DeadLetterMessage]:
    """Up to ``limit`` messages of the DLQ, left in it and visible again.

    Receiving raises each message's ApproximateReceiveCount (harmless: the
    DLQ has no redrive policy of its own).  Raises ServiceUnavailable.
    """
    messages: list[DeadLetterMessage] = []
    try:
        for message in _walk(sqs, dlq_url, limit):
            messages.append(message)
    finally:
        if messages:
            release(sqs, dlq_url, messages)
    return messages


def group_reasons(messages: Sequence[DeadLetterMessage], *, sessions_per_group: int = 5) -> list[ReasonGroup]:
    """Messages grouped by (error class, SQLSTATE, constraint), largest first."""
    counts: Counter[tuple[str, str | None, str | None]] = Counter(m.reason for m in messages)
    groups = []
    for reason, count in counts.most_common():
        members = [m for m in messages if m.reason == reason]
        sessions: list[str] = []
        for m in members:
            sid = m.session_id
            if sid and sid not in sessions and len(sessions) < sessions_per_group:
                sessions.append(sid)
        example = next((m.attributes.get(ERROR_MESSAGE) for m in members
                        if m.attributes.get(ERROR_MESSAGE)), None)
        groups.append(ReasonGroup(reason[0], reason[1], reason[2], count, example, sessions))
    return groups


def matcher(*, error_class: str | None = None, error_code: str | None = None,
            constraint: str | None = None, session_id: str | None = None
            ) -> Callable[[DeadLetterMessage], bool] | None:
    """A filter for ``redrive`` (all given criteria must match), or None
    when no criterion is given (move everything)."""
    if not any((error_class, error_code, constraint, session_id)):
        return None

    def matches(message: DeadLetterMessage) -> bool:
        return ((error_class is None or message.error_class == error_class)
                and (error_code is None or message.error_code == error_code)
                and (constraint is None or message.constraint == constraint)
                and (session_id is None or message.session_id == session_id))
    return matches


def queue_arn(sqs: Any, queue_url: str) -> str:
    with _sqs_errors("GetQueueAttributes"):
        return sqs.get_queue_attributes(QueueUrl=queue_url,
                                        AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def redrive(sqs: Any, dlq_url: str, queue_url: str, *,
            match: Callable[[DeadLetterMessage], bool] | None = None, limit: int | None = None,
            progress: Progress = lambda n: None, poll_seconds: float = 0.5,
            timeout_seconds: float = 600.0) -> RedriveResult:
    """Move DLQ messages back to the main queue; call ``progress(n)`` as n more move.

    Without ``match`` or ``limit``: SQS's move task moves everything (on the
    server side, at up to 500 messages/s, keeping message attributes).  With
    them: receive, send to ``queue_url`` (error attributes stripped), delete
    from the DLQ; messages not selected are made visible again.

    Run it after the cause is fixed, or the messages come straight back.
    Raises ServiceUnavailable for SQS trouble, TimeoutError if the move
    task does not finish within ``timeout_seconds``.
    """
    # A FIFO DLQ is moved by hand: each message needs a deduplication id of
    # its own (see _move), which a move task would not give it.
    if match is None and limit is None and not queue_url.endswith(FIFO_SUFFIX):
        return _move_task(sqs, dlq_url, queue_url, progress, poll_seconds, timeout_seconds)
    result = RedriveResult()
    keep: list[DeadLetterMessage] = []
    selected: list[DeadLetterMessage] = []
    try:
        for message in _walk(sqs, dlq_url, None):
            if (match is None or match(message)) and (limit is None or result.moved + len(selected) < limit):
                selected.append(message)
                if len(selected) == _RECEIVE_BATCH:
                    result.moved += _move(sqs, dlq_url, queue_url, selected, progress)
                    selected = []
            else:
                keep.append(message)
        if selected:
            result.moved += _move(sqs, dlq_url, queue_url, selected, progress)
            selected = []
    finally:
        # Whatever was received and not moved goes back to being visible,
        # also when a send failed half way.
        leftover = keep + selected
        if leftover:
            release(sqs, dlq_url, leftover)
    result.skipped = len(keep)
    return result


def _move(sqs: Any, dlq_url: str, queue_url: str, messages: Sequence[DeadLetterMessage],
          progress: Progress) -> int:
    """Send ``messages`` to the main queue, then delete those sent from the DLQ."""
    moved = 0
    fifo = queue_url.endswith(FIFO_SUFFIX)
    for chunk in sqs_batches(messages, lambda m: len(m.body.encode()) + 4096):
        entries = [{"Id": str(i), "MessageBody": m.body,
                    "MessageAttributes": {k: _clean(v) for k, v in m.message_attributes.items()
                                          if k not in ERROR_ATTRIBUTES},
                    **(_fifo_fields(m) if fifo else {})}
                   for i, m in enumerate(chunk)]
        with _sqs_errors("SendMessageBatch"):
            reply = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        sent = [chunk[int(ok["Id"])] for ok in reply.get("Successful", [])]
        if sent:
            with _sqs_errors("DeleteMessageBatch"):
                sqs.delete_message_batch(QueueUrl=dlq_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m.receipt_handle} for i, m in enumerate(sent)])
            moved += len(sent)
            progress(len(sent))
        if reply.get("Failed"):
            failed = reply["Failed"][0]
            raise ServiceUnavailable(f"SQS refused to send {len(reply['Failed'])} message(s): "
                                     f"{failed.get('Code')}", dependency="sqs")
    return moved


def _fifo_fields(message: DeadLetterMessage) -> dict[str, str]:
    """The main FIFO queue's ids for a redriven message: its session's group
    (its own, without an event id), and the DLQ message's id for
    deduplication, never the event id: the event may have been sent within
    the last five minutes, and SQS would then accept the redrive, drop it as
    a duplicate, and the message deleted from the DLQ would be lost."""
    event_id = (message.message_attributes.get(EVENT_ID) or {}).get("StringValue")
    group = session_of(event_id) if event_id else message.message_id
    return {"MessageGroupId": group, "MessageDeduplicationId": message.message_id}


def _clean(attribute: Mapping[str, Any]) -> dict[str, Any]:
    # ReceiveMessage returns empty list fields SendMessage refuses
    return {k: v for k, v in attribute.items() if k in ("DataType", "StringValue", "BinaryValue")}


def _move_task(sqs: Any, dlq_url: str, queue_url: str, progress: Progress,
               poll_seconds: float, timeout_seconds: float) -> RedriveResult:
    source, destination = queue_arn(sqs, dlq_url), queue_arn(sqs, queue_url)
    with _sqs_errors("StartMessageMoveTask"):
        handle = sqs.start_message_move_task(SourceArn=source, DestinationArn=destination)["TaskHandle"]
    reported = 0
    deadline = time.monotonic() + timeout_seconds
    while True:
        with _sqs_errors("ListMessageMoveTasks"):
            tasks = sqs.list_message_move_tasks(SourceArn=source, MaxResults=1).get("Results", [])
        task = tasks[0] if tasks else {}
        moved = int(task.get("ApproximateNumberOfMessagesMoved", 0))
        if moved > reported:
            progress(moved - reported)
            reported = moved
        status = task.get("Status")
        if status in ("COMPLETED", "CANCELLED", "FAILED"):
            if status == "FAILED":
                raise ServiceUnavailable(f"the SQS move task failed: {task.get('FailureReason')}",
                                         dependency="sqs")
            return RedriveResult(moved=reported, task_handle=handle)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the SQS move task did not finish within {timeout_seconds:.0f}s "
                               f"({reported} moved so far; it keeps running)")
        time.sleep(poll_seconds)
