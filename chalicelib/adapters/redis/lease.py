"""The relay's lease in Redis (LEASE_SCRIPT): one relay drains the outbox
at a time, a dead one is taken over when its lease expires, and a running
one hands over to the next scheduled run (chalicelib.pipeline.outbox).

The lease saves work, it guards nothing: two relays sending the same
entry put it in SQS twice, and the consumer skips the duplicate (one row
per session and version).  So a relay that paused longer than the lease
(and lost it) does no harm in the moment before it notices.
"""
from __future__ import annotations

from typing import Any

from chalicelib.adapters.redis import scripts
from chalicelib.adapters.redis.client import RedisClient
from chalicelib.adapters.redis.errors import redis_errors
from chalicelib.adapters.redis.keys import RELAY_LEASE_KEYS


class RelayLease:
    """Take, renew and release the relay's lease with a token of the caller's.

    Every method raises ServiceUnavailable when Redis cannot be reached.
    """

    def __init__(self, client: RedisClient, *, ttl_seconds: float, poll_seconds: float) -> None:
        self.client = client
        self.ttl_ms = int(ttl_seconds * 1000)
        # a successor's mark outlives a few of its polls, no more
        self.mark_ms = int(poll_seconds * 3000)
        self._script = client.register_script(scripts.LEASE_SCRIPT)

    def take(self, token: str) -> bool:
        """True when ``token`` holds the lease now; otherwise it is recorded
        as the successor waiting (the holder hands over when it sees it)."""
        return self._run("take", token) == 1

    def renew(self, token: str) -> tuple[bool, bool]:
        """(still held, a successor waits)."""
        held, successor = self._run("renew", token)
        return held == 1, successor == 1

    def release(self, token: str) -> None:
        self._run("release", token)

    def holder(self) -> str | None:
        """The token holding the lease (operators, tests)."""
        with redis_errors():
            raw = self.client.get(RELAY_LEASE_KEYS[0])
        return raw.decode() if isinstance(raw, bytes) else raw

    def _run(self, op: str, token: str) -> Any:
        with redis_errors():
            return self._script(keys=list(RELAY_LEASE_KEYS), args=[op, token, self.ttl_ms, self.mark_ms])
