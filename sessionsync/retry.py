"""Client-side retry for optimistic concurrency.

An update carries the version it was computed from; when another writer
got there first the service answers ``ConcurrencyError`` (HTTP 409, code
``ConcurrencyError``, with ``actual_version``; HTTP 412 ``PreconditionFailed``,
a subclass, when the version came in ``If-Match``).  The right reaction is
always the same: read the current session, re-apply the change to it, and
try again with the new version.  ``retry_on_conflict`` does exactly that for
Python clients (and the tests), with a bounded number of attempts and a
small jittered backoff so that N racing writers do not collide in lockstep.

Usage with the session service (or any client exposing the same calls)::

    def add_item(session):              # pure: new state from current session
        return {**session.state, "cart": session.state["cart"] + ["book"]}

    retry_on_conflict(
        read=lambda: service.get(sid).session,
        write=lambda session, state: service.update(
            UpdateRequest(sid, json.dumps(state), session.version)),
        change=add_item)
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from chalicelib.domain.errors import ConcurrencyError

S = TypeVar("S")
R = TypeVar("R")


def retry_on_conflict(*, read: Callable[[], S], change: Callable[[S], Any],
                      write: Callable[[S, Any], R], attempts: int = 5,
                      base_delay: float = 0.005, max_delay: float = 0.2,
                      sleep: Callable[[float], None] = time.sleep,
                      jitter: Callable[[], float] = random.random) -> R:
    """Read, change, write; on ConcurrencyError start again from a fresh read.

    ``change`` must be a pure function of the session it is given (it runs
    again on every attempt).  Returns what ``write`` returned.  Raises the
    last ConcurrencyError when all ``attempts`` lost, and anything ``read``,
    ``change`` or ``write`` raise otherwise (SessionNotFound, 503s...)
    unchanged: only a lost compare-and-set is worth an immediate retry.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(attempts):
        current = read()
        try:
            return write(current, change(current))
        except ConcurrencyError:
            if attempt == attempts - 1:
                raise
            # full jitter: uniform in [0, min(max, base * 2^attempt))
            sleep(min(max_delay, base_delay * (2 ** attempt)) * jitter())
    raise AssertionError("unreachable")
