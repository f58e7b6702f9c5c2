"""Ship committed changes to SQS and clear their outbox entries.

The write path is: Lua script (state + outbox entry, atomically) -> SQS
send -> outbox ack.  If the process dies or SQS is down between the first
and the last step, the entry stays in the outbox and the relay
(``chalicelib.pipeline.outbox``) sends it again; the consumer is idempotent, so a
message sent twice is harmless.  An SQS failure therefore never fails an
acknowledged write: it only delays it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from chalicelib.adapters.aws import fifo_fields, sqs_batches
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.domain.store import WriteResult

log = logging.getLogger("sessionsync.producer")

# After an inline send failed, skip inline sends for this long: the relay
# delivers those events, and a hung SQS cannot add its timeout to every write.
PAUSE_AFTER_FAILURE_SECONDS = 5.0


def message_attributes(event_id: str) -> dict[str, Any]:
    return {"event_id": {"DataType": "String", "StringValue": event_id}}


class SqsProducer:
    """Send change events to the session queue (boto3 SQS client given)."""

    def __init__(self, sqs: Any, queue_url: str, store: SessionStore, *, fifo: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.store = store
        self.fifo = fifo
        self.clock = clock
        self._paused_until = float("-inf")

    def publish(self, result: WriteResult) -> bool:
        """Send one event and ack its outbox entry; False if SQS failed.

        Never raises for SQS or Redis trouble: the write is already durable
        in the outbox, and the relay will retry it.
        """
        from botocore.exceptions import BotoCoreError, ClientError
        if self.clock() < self._paused_until:
            return False  # SQS failed a moment ago: leave this one to the relay
        try:
            self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=result.event_json,
                                  MessageAttributes=message_attributes(result.event_id),
                                  **self._fifo(result.event_id))
        except (BotoCoreError, ClientError) as exc:
            self._paused_until = self.clock() + PAUSE_AFTER_FAILURE_SECONDS
            log.warning("SQS send failed; the outbox relay will retry",
                        extra={"event_id": result.event_id, "error": repr(exc)})
            return False
        self._ack([result.event_id])
        return True

    def send_many(self, events: Iterable[tuple[str, str]]) -> list[str]:
        """Send (event id, body) pairs in SQS batches; ack and return the sent ids."""
        from botocore.exceptions import BotoCoreError, ClientError
        sent: list[str] = []
        for batch in sqs_batches(events, _entry_size):
            entries = [{"Id": str(i), "MessageBody": body,
                        "MessageAttributes": message_attributes(eid), **self._fifo(eid)}
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

    def _fifo(self, event_id: str) -> dict[str, str]:
        return fifo_fields(event_id) if self.fifo else {}

    def _ack(self, event_ids: Sequence[str]) -> None:
        import redis

        from chalicelib.domain.errors import SessionSyncError
        try:
            self.store.outbox_ack(event_ids)
        except (SessionSyncError, redis.RedisError) as exc:
            # Sent but not acked (Redis gone, or an ACL refusing ZREM/HDEL):
            # the relay will send it again, and the consumer treats the
            # duplicate as already applied.
            log.warning("outbox ack failed; a duplicate will be sent",
                        extra={"event_ids": list(event_ids), "error": repr(exc)})


def _entry_size(item: tuple[str, str]) -> int:
    event_id, body = item
    return len(body.encode()) + len(event_id) + 100  # attribute name and type, entry id
