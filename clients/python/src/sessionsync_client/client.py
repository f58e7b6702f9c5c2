"""The synchronous client, on urllib3 (docs/decisions/python-client-transport.md)."""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationValueError,
    NewConnectionError,
    PoolError,
)

from sessionsync_client._protocol import (
    Apply,
    Change,
    CursorLoop,
    NoAnswer,
    Operation,
    Protocol,
    Reply,
    Request,
    RetryPolicy,
    Send,
    Sleep,
    Version,
)
from sessionsync_client.models import Event, EventPage, Health, RevokeResult, Session, SessionPage

T = TypeVar("T")


class Client:
    """A sessionsync API client: one connection pool, safe to share between threads.

    ::

        with Client("https://api.example.com/prod", api_key) as sessions:
            cart = sessions.create({"items": []}, session_id="cart-42")
            sessions.update("cart-42", lambda state: {**state, "items": [*state["items"], "book"]})

    Every write carries an Idempotency-Key (a new UUID per call, the same on
    each of its retries): a write whose answer was lost (a timeout, a reset
    connection, a 503) is sent again and applied once.  ``retry`` bounds
    those retries; ``idempotency_keys=False`` leaves keys out, and then a
    write is never sent twice.  ``timeout`` is per attempt, in seconds.
    """

    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 10.0,
                 retry: RetryPolicy | None = None, idempotency_keys: bool = True,
                 headers: Mapping[str, str] | None = None, pool_size: int = 10,
                 _pool: urllib3.PoolManager | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._protocol = Protocol(api_key, retry or RetryPolicy(), idempotency_keys, dict(headers or {}))
        # urllib3 retries nothing itself (retries=False): the protocol decides,
        # knowing which requests are safe to send again
        self._pool = _pool or urllib3.PoolManager(maxsize=pool_size, block=False, retries=False)

    def with_headers(self, headers: Mapping[str, str]) -> Client:
        """A client on the same connections that adds ``headers`` to every
        request (e.g. ``{"traceparent": ...}`` or ``{"X-Request-Id": ...}``)."""
        protocol = self._protocol
        return Client(self.base_url, protocol.api_key, timeout=self.timeout, retry=protocol.retry,
                      idempotency_keys=protocol.idempotency_keys,
                      headers={**protocol.headers, **headers}, _pool=self._pool)

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the driver -----------------------------------------------------------

    def _send(self, request: Request) -> Reply:
        try:
            response = self._pool.request(
                request.method, self.base_url + request.path, body=request.body,
                headers=request.headers, timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout),
                redirect=False, retries=False)
        except LocationValueError as exc:  # a malformed base_url: no retry will mend it
            raise ValueError(f"not a URL: {self.base_url + request.path!r} ({exc})") from exc
        except (NewConnectionError, ConnectTimeoutError, PoolError) as exc:
            # no connection was made: the request never left
            raise NoAnswer(str(exc), sent=False) from exc
        except HTTPError as exc:  # a read timeout, a reset or closed connection
            raise NoAnswer(str(exc), sent=True) from exc
        return Reply(response.status, {k.lower(): v for k, v in response.headers.items()},
                     response.data)

    def _run(self, operation: Operation[T]) -> T:
        try:
            effect = next(operation)
            while True:
                if isinstance(effect, Send):
                    try:
                        reply = self._send(effect.request)
                    except NoAnswer as exc:
                        effect = operation.throw(exc)
                        continue
                    effect = operation.send(reply)
                elif isinstance(effect, Sleep):
                    time.sleep(effect.seconds)
                    effect = operation.send(None)
                elif isinstance(effect, Apply):
                    result = effect.change(effect.state)
                    effect = operation.send(effect.state if result is None else result)
                else:  # pragma: no cover - the protocol yields nothing else
                    raise TypeError(f"unknown effect {effect!r}")
        except StopIteration as done:
            return done.value

    # --- the API ----------------------------------------------------------------

    def create(self, state: Mapping[str, Any], *, session_id: str | None = None,
               ttl_seconds: int | None = None, owner_id: str | None = None,
               idempotency_key: str | None = None) -> Session:
        """POST /sessions: a new session at version 1 (an id is generated when
        none is given: the same one on every retry).  Raises SessionExistsError."""
        return self._run(self._protocol.create(state, session_id=session_id, ttl_seconds=ttl_seconds,
                                               owner_id=owner_id, idempotency_key=idempotency_key))

    def get(self, session_id: str, *, max_stale: int | bool | None = None) -> Session:
        """GET /sessions/{id}.  ``max_stale=N`` (seconds; True: any age) accepts,
        while Redis is down, PostgreSQL's last copy if at most that old:
        ``session.source == "postgresql"`` and ``session.age`` then say so.
        Raises SessionNotFoundError (SessionExpiredError once its lifetime ended)."""
        return self._run(self._protocol.get(session_id, max_stale=max_stale))

    def refresh(self, session: Session) -> Session:
        """The session again if it changed, else ``session`` itself (a 304,
        no body sent)."""
        return self._run(self._protocol.refresh(session))

    def put(self, session_id: str, state: Mapping[str, Any], version: Version | None, *,
            ttl_seconds: int | None = None, idempotency_key: str | None = None) -> Session:
        """PUT: replace the state if the session is at ``version`` (the one
        you read; ``"*"``: whatever is current).  Raises
        PreconditionFailedError (a ConcurrencyError) when another writer got
        there first: read again and re-apply, or let ``update`` do it.
        ``version=None`` sends no precondition, which the API refuses
        (PreconditionRequiredError)."""
        return self._run(self._protocol.put(session_id, state, version=version, ttl_seconds=ttl_seconds,
                                            idempotency_key=idempotency_key))

    def create_if_absent(self, session_id: str, state: Mapping[str, Any], *,
                         ttl_seconds: int | None = None, owner_id: str | None = None,
                         idempotency_key: str | None = None) -> Session:
        """PUT with If-None-Match: *: create ``session_id`` unless it exists or
        existed (then PreconditionFailedError)."""
        return self._run(self._protocol.put(session_id, state, version=None, if_absent=True,
                                            ttl_seconds=ttl_seconds, owner_id=owner_id,
                                            idempotency_key=idempotency_key))

    def update(self, session_id: str, change: Change, *, attempts: int = 16,
               ttl_seconds: int | None = None) -> Session:
        """The conflict loop as one call: read the session, compute the new
        state with ``change(state)`` (return it, or change the dict in place
        and return None), write it if the session is still at the version read;
        when another writer got there first, start again from a fresh read
        (jittered backoff), at most ``attempts`` times.  ``change`` must
        depend only on the state it is given: it may run several times."""
        return self._run(self._protocol.update(session_id, change, attempts=attempts,
                                               ttl_seconds=ttl_seconds))

    def patch(self, session_id: str, state_patch: Mapping[str, Any] | None = None, *,
              version: Version | None = None, ttl_seconds: int | None = None,
              idempotency_key: str | None = None) -> Session:
        """PATCH: a JSON Merge Patch (RFC 7396) of the state, merged on the
        server atomically: members not named are kept, None removes one.
        Without ``version`` it applies to whatever version is current."""
        return self._run(self._protocol.patch(session_id, state_patch, version=version,
                                              ttl_seconds=ttl_seconds, idempotency_key=idempotency_key))

    def delete(self, session_id: str, *, version: Version | None = None,
               idempotency_key: str | None = None) -> None:
        """DELETE: the session ends (its id is never reused; its history stays)."""
        self._run(self._protocol.delete(session_id, version=version, idempotency_key=idempotency_key))

    def touch(self, session_id: str, *, ttl_seconds: int | None = None, version: Version | None = None,
              idempotency_key: str | None = None) -> Session:
        """Extend the lifetime (a new version, the state unchanged)."""
        return self._run(self._protocol.touch(session_id, ttl_seconds=ttl_seconds, version=version,
                                              idempotency_key=idempotency_key))

    def history_page(self, session_id: str, *, cursor: str | None = None, limit: int = 50) -> EventPage:
        return self._run(self._protocol.history_page(session_id, cursor=cursor, limit=limit))

    def history(self, session_id: str, *, page_size: int = 50) -> Iterator[Event]:
        """Every persisted event of the session, newest first, page after page."""
        loop, cursor = CursorLoop(), None
        while True:
            page = self.history_page(session_id, cursor=cursor, limit=page_size)
            yield from page.events
            if not loop.follow(page.next_cursor):
                return
            cursor = page.next_cursor

    def owner_sessions_page(self, owner_id: str, *, cursor: str | None = None,
                            limit: int = 50) -> SessionPage:
        return self._run(self._protocol.owner_sessions_page(owner_id, cursor=cursor, limit=limit))

    def owner_sessions(self, owner_id: str, *, page_size: int = 50) -> Iterator[Session]:
        """Every live session of the owner, in id order, page after page
        (a page may be short, even empty, before the end)."""
        loop, cursor = CursorLoop(), None
        while True:
            page = self.owner_sessions_page(owner_id, cursor=cursor, limit=page_size)
            yield from page.sessions
            if not loop.follow(page.next_cursor):
                return
            cursor = page.next_cursor

    def revoke_all(self, owner_id: str, *, max_calls: int = 100) -> RevokeResult:
        """Delete every session of the owner ("log out everywhere"), calling
        again while the server says sessions remain."""
        return self._run(self._protocol.revoke_all(owner_id, max_calls=max_calls))

    def health(self) -> Health:
        """GET /health (a 503 is a report too: ``health.status`` says "down")."""
        return self._run(self._protocol.health())
