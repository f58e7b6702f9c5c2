"""The change events on Pub/Sub: every write script publishes its event on
the store's channel (scripts/write.lua, ``announce``).  The relay listens to
wake up the moment a change commits (chalicelib.pipeline.outbox); an
operator's ``sessionsync watch`` prints them.  Pub/Sub is fire-and-forget:
a listener that was away misses events, so nothing relies on it for
delivery (the outbox is the record).
"""
from __future__ import annotations

import json
import time
from typing import Any

import redis

from chalicelib.adapters.redis.errors import redis_errors


class Subscription:
    """An open subscription to ``channel``, confirmed by Redis before the
    constructor returns, so every change committed after it is seen.

    Iterating yields each event decoded, or None every ``timeout`` seconds
    without one so that a caller can stop; ``raw`` gives the bytes as
    published.  ``close()`` (or leaving a ``with`` block) unsubscribes.
    Raises ServiceUnavailable when Redis cannot be reached.
    """

    def __init__(self, client: Any, channel: str, *, timeout: float = 1.0) -> None:
        self.timeout = timeout
        self._pubsub = client.pubsub()
        try:
            with redis_errors():
                self._pubsub.subscribe(channel)
                # SUBSCRIBE is not acknowledged by subscribe(): wait for the
                # server's confirmation, or an event published meanwhile is lost.
                deadline = time.monotonic() + max(timeout, 1.0)
                while True:
                    reply = self._pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                    if reply is not None and reply["type"] == "subscribe":
                        break
                    if time.monotonic() >= deadline:
                        raise redis.TimeoutError(f"no confirmation of SUBSCRIBE {channel}")
        except BaseException:
            self._pubsub.close()
            raise

    def raw(self, timeout: float) -> bytes | None:
        """The next event as published, waiting up to ``timeout`` seconds
        (0: only one already received); None when none came."""
        with redis_errors():
            message = self._pubsub.get_message(timeout=timeout)
        if message is None or message["type"] != "message":
            return None
        return message["data"]

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> dict | None:
        data = self.raw(self.timeout)
        return None if data is None else json.loads(data)

    def close(self) -> None:
        self._pubsub.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
