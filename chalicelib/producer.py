"""Ship committed changes to SQS and clear their outbox entries.

The write path is: Lua script (state + outbox entry, atomically) -> SQS
send -> outbox ack.  If the process dies or SQS is down between the first
and the last step, the entry stays in the outbox and the relay
(``chalicelib.outbox``) sends it again; the consumer is idempotent, so a
message sent twice is harmless.  An SQS failure therefore never fails an
acknowledged write: it only delays it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from chalicelib.store import SessionStore, WriteResult

log = logging.getLogger("sessionsync.producer")

# SQS accepts at most 10 entries and 1 MiB per SendMessageBatch call.
BATCH_ENTRIES = 10
BATCH_BYTES = 1024 * 1024


def message_attributes(event_id: str) -> dict[str, Any]:
    return {"event_id": {"DataType": "String", "StringValue": event_id}}


class SqsProducer:
    """Send change events to the session queue (boto3 SQS client given)."""

    def __init__(self, sqs: Any, queue_url: str, store: SessionStore) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.store = store

    def publish(self, result: WriteResult) -> bool:
        """Send one event and ack its outbox entry; False if SQS failed.

        Never raises for SQS or Redis trouble: the write is already durable
        in the outbox, and the relay will retry it.
        """
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=result.event_json,
                                  MessageAttributes=message_attributes(result.event_id))
        except (BotoCoreError, ClientError) as exc:
            log.warning("SQS send failed; the outbox relay will retry",
                        extra={"event_id": result.event_id, "error": repr(exc)})
            return False
        self._ack([result.event_id])
        return True

    def send_many(self, events: Iterable[tuple[str, str]]) -> list[str]:
        """Send (event id, body) pairs in SQS batches; ack and return the sent ids."""
        from botocore.exceptions import BotoCoreError, ClientError
        sent: list[str] = []
        for batch in _batches(events):
            entries = [{"Id": str(i), "MessageBody": body,
                        "MessageAttributes": message_attributes(eid)}
                       for i, (eid, body) in enumerate(batch)]
            try:
                reply = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            except (BotoCoreError, ClientError) as exc:
                log.warning("SQS batch send failed", extra={"error": repr(exc)})
                break
            ok = [batch[int(entry["Id"])][0] for entry in reply.get("Successful", [])]
            self._ack(ok)
            sent.extend(ok)
        return sent

    def _ack(self, event_ids: Sequence[str]) -> None:
        from chalicelib.errors import ServiceUnavailable
        try:
            self.store.outbox_ack(event_ids)
        except ServiceUnavailable:
            # Sent but not acked: the relay will send it again, and the
            # consumer treats the duplicate as already applied.
            log.warning("outbox ack failed; a duplicate will be sent", extra={"event_ids": list(event_ids)})


def _batches(events: Iterable[tuple[str, str]]) -> Iterable[list[tuple[str, str]]]:
    batch: list[tuple[str, str]] = []
    size = 0
    for eid, body in events:
        n = len(body.encode()) + 200  # attributes and id
        if batch and (len(batch) == BATCH_ENTRIES or size + n > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((eid, body))
        size += n
    if batch:
        yield batch
