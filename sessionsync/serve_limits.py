"""What a client can hold of ``sessionsync serve``: a bounded time per
request and a bounded number of connections (docs/decisions/serve-limits.md).

http.server gives each connection a thread and, with a socket timeout, bounds
each read, not a request: a client sending a byte every 20 s kept its thread
for ever, and forty such clients held forty threads.  Here:

* **a deadline per request.**  A request (its line, headers and body) must
  arrive within ``request_timeout`` seconds of its first byte (for a new
  connection: of the moment it got its thread); every recv waits only for
  the time left, so dribbling bytes does not extend it.  Past it the client
  gets a 408 and the connection is closed; one that sent nothing is closed
  without an answer.  An answer gets as long to leave, from its first byte.
* **idle keep-alive connections** are closed after ``keepalive_timeout``
  seconds, and sooner when the server is full: a new connection then takes
  the place of the one idle longest (as nginx reuses its keep-alive
  connections when it runs out of them).
* **a cap on connections served at once**, each on its thread.  A connection
  beyond it waits up to ``queue_timeout`` seconds for a place; then it, and
  every connection after it while the server stays full, is answered 503
  with ``Retry-After`` at once, from the accepting thread, which never
  blocks on it: the answer is sent without waiting and the socket is closed
  a moment later, once the client's request has been read and dropped, so
  that the close does not reset the connection before the client read the
  503.

Timeline of a slow client against the deadline (request_timeout 30 s)::

    t=0   connected, thread given    deadline = 30
    t=0.1 "POST /sessions HTTP/1.1"  recv waits at most 29.9 s
    t=20  one more header byte       recv waits at most 10 s (not 30 again)
    t=30  nothing more               TimeoutError: 408, connection closed
"""
from __future__ import annotations

import io
import math
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: seconds a refused connection stays open, write side shut, while what the
#: client sent is read and dropped (then it is closed even if more comes)
LINGER_SECONDS = 2.0
#: refused connections lingering at once; beyond, the oldest is closed now
MAX_LINGERING = 256
RETRY_AFTER_SECONDS = 1
#: how often a connection waiting for a place looks for an idle one to reclaim
QUEUE_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ServeLimits:
    """The bounds, with their defaults (``sessionsync serve``'s options)."""

    #: connections served at once (a thread each, about 32 KiB resident
    #: while it waits on a slow client): nginx's default worker_connections;
    #: the bench's full profile runs 256 keep-alive clients
    max_connections: int = 512
    #: seconds for a request to arrive whole, from its first byte; and for
    #: its answer to leave, from its first byte
    request_timeout: float = 30.0
    #: seconds a keep-alive connection may wait for its next request: longer
    #: than the clients' own pool expiry (httpx 5 s, undici 4 s), so that a
    #: client does not send on a connection the server is closing
    keepalive_timeout: float = 15.0
    #: seconds a connection beyond the cap waits for a place before its 503
    queue_timeout: float = 2.0


class DeadlineSocketIO(io.RawIOBase):
    """A connection's raw I/O in which each recv and send may take only the
    time left before the current deadline (``start``), however many bytes
    came before.  A recv past it raises TimeoutError and remembers it
    (``recv_timed_out``)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.span = math.inf
        self.deadline = math.inf
        self.recv_timed_out = False

    def start(self, seconds: float) -> None:
        """A deadline ``seconds`` from now."""
        self.span = seconds
        self.deadline = time.monotonic() + seconds
        self.recv_timed_out = False

    def _time_left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the connection's {self.span:g} s deadline passed")
        return left

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._sock.fileno()

    def readinto(self, buffer: Any) -> int:
        try:
            # the time left, never the whole span again: bytes dribbled in
            # one at a time must not push the deadline back
            self._sock.settimeout(self._time_left())
            return self._sock.recv_into(buffer)
        except TimeoutError:
            self.recv_timed_out = True
            raise

    def write(self, data: Any) -> int:
        left = self._time_left()
        self._sock.settimeout(left)
        return self._sock.send(data)


class BoundedHandler:
    """Mixed into the request handler (before http.server's): the request
    deadline, the keep-alive wait and the 408.  Expects ``server`` to be a
    ``BoundedServer``."""

    server: Any
    connection: socket.socket
    rfile: Any
    wfile: Any
    close_connection: bool
    command: str | None
    requestline: str
    request_version: str
    protocol_version: str
    disable_nagle_algorithm: bool
    send_error: Callable[..., None]

    def setup(self) -> None:
        # StreamRequestHandler.setup, with both files over DeadlineSocketIO
        # instead of socket.makefile (whose reads only a socket timeout bounds)
        self.connection = self.request  # type: ignore[attr-defined]
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.deadline_io = DeadlineSocketIO(self.connection)
        # headers and body into one buffer, sent when http.server flushes it
        self.rfile = io.BufferedReader(self.deadline_io)
        self.wfile = io.BufferedWriter(self.deadline_io)
        self.reclaimed = False
        self._served = 0
        self._answering = False
        # a new connection's first request: counted from now, its wait for
        # the first byte included
        self.deadline_io.start(self.server.limits.request_timeout)

    def finish(self) -> None:
        try:
            super().finish()  # type: ignore[misc]
        except OSError:
            pass  # the client left, or would not take the answer in time: nobody to tell

    def handle_one_request(self) -> None:
        limits = self.server.limits
        keep_alive = self._served > 0
        if keep_alive:
            self.deadline_io.start(limits.keepalive_timeout)
        if not self._next_request_began(reclaimable=keep_alive):
            self.close_connection = True
            return
        if keep_alive:
            self.deadline_io.start(limits.request_timeout)
        self._served += 1
        self._answering = False
        # what parse_request would set, for an answer to a request line that
        # never came whole
        self.command, self.requestline, self.request_version = None, "", self.protocol_version
        super().handle_one_request()  # type: ignore[misc]
        if self.deadline_io.recv_timed_out and not self._answering:
            self.close_connection = True
            try:
                self.send_error(408, f"the request did not arrive whole within {limits.request_timeout:g} s")
                self.wfile.flush()
            except OSError:
                pass  # a client that does not read either

    def _next_request_began(self, *, reclaimable: bool) -> bool:
        """Wait for the first byte of the next request: False when the
        connection closed, timed out idle, or was reclaimed meanwhile."""
        if reclaimable:
            self.server.idle(self)
        try:
            began = bool(self.rfile.peek(1))
        except OSError:  # TimeoutError, a reset, or the server's own shutdown
            began = False
        if reclaimable and not self.server.busy(self):
            return False
        return began

    def send_response(self, code: int, message: str | None = None) -> None:
        # the answer's own deadline, from its first byte: the request's may
        # be spent (a 408), and the app's work before it has deadlines of its own
        if not self._answering:
            self._answering = True
            self.deadline_io.start(self.server.limits.request_timeout)
        super().send_response(code, message)  # type: ignore[misc]


class BoundedServer:
    """Mixed into the threading HTTP server (before socketserver's): the
    cap on connections, the reclaiming of idle keep-alive connections, and
    the 503 beyond the cap."""

    limits: ServeLimits
    #: the 503's bytes (status line, headers, body)
    refusal: bytes

    def init_bounds(self, limits: ServeLimits, refusal: bytes) -> None:
        self.limits = limits
        self.refusal = refusal
        self._places = threading.BoundedSemaphore(limits.max_connections)
        self._shedding = False
        self._idle_lock = threading.Lock()
        self._idle: OrderedDict[Any, None] = OrderedDict()
        self._lingering: deque[tuple[socket.socket, float]] = deque()
        #: what it did: connections refused with a 503, idle ones reclaimed
        self.refused = 0
        self.reclaimed = 0

    # -- the cap ---------------------------------------------------------------

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        if not self._take_place():
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except BaseException:
            self._places.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._places.release()

    def _take_place(self) -> bool:
        """A place for a new connection: at once, or once an idle one it
        reclaimed has gone, or within ``queue_timeout``; while the server
        stays full after such a wait, no wait (the connections queued
        behind would each wait in turn) unless an idle one gives way."""
        if self._places.acquire(blocking=False):
            self._shedding = False
            return True
        reclaimed = self._reclaim_idle()
        if self._shedding and not reclaimed:
            return False
        deadline = time.monotonic() + self.limits.queue_timeout
        while (left := deadline - time.monotonic()) > 0:
            if self._places.acquire(timeout=min(left, QUEUE_POLL_SECONDS)):
                self._shedding = False
                return True
            # a connection that went idle meanwhile gives way too (one per
            # waiting connection: its thread needs a moment to end)
            reclaimed = reclaimed or self._reclaim_idle()
        self._shedding = True
        return False

    # -- idle keep-alive connections ---------------------------------------------

    def idle(self, handler: Any) -> None:
        with self._idle_lock:
            self._idle[handler] = None

    def busy(self, handler: Any) -> bool:
        """The handler's request began: False if it was reclaimed meanwhile
        (its socket is shut down; its request, if one came, is dropped, as
        any server's closing keep-alive connection may: clients retry)."""
        with self._idle_lock:
            self._idle.pop(handler, None)
            return not handler.reclaimed

    def _reclaim_idle(self) -> bool:
        """Close the connection idle the longest, if any; its thread ends
        and its place frees."""
        with self._idle_lock:
            if not self._idle:
                return False
            handler, _ = self._idle.popitem(last=False)
            handler.reclaimed = True
            self.reclaimed += 1
        try:
            handler.connection.shutdown(socket.SHUT_RDWR)  # its recv returns at once
        except OSError:
            pass
        return True

    # -- the 503 -----------------------------------------------------------------

    def _refuse(self, request: socket.socket) -> None:
        self.refused += 1
        try:
            request.setblocking(False)
            request.send(self.refusal)  # a fresh socket's buffer takes it whole
            request.shutdown(socket.SHUT_WR)
        except OSError:
            request.close()
            return
        self._lingering.append((request, time.monotonic() + LINGER_SECONDS))
        while len(self._lingering) > MAX_LINGERING:
            self._lingering.popleft()[0].close()

    def service_actions(self) -> None:
        """Between accepts (and every poll interval): drop what refused
        clients sent, close those done or past their linger."""
        super().service_actions()  # type: ignore[misc]
        now = time.monotonic()
        for _ in range(len(self._lingering)):
            sock, until = self._lingering.popleft()
            if _drained(sock) or now >= until:
                sock.close()
            else:
                self._lingering.append((sock, until))

    def server_close(self) -> None:
        super().server_close()  # type: ignore[misc]
        while self._lingering:
            self._lingering.popleft()[0].close()


def _drained(sock: socket.socket) -> bool:
    """Read and drop what ``sock`` holds; True once the client closed its side."""
    try:
        while chunk := sock.recv(65536):
            del chunk
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def refusal_bytes(body: bytes, headers: dict[str, Any]) -> bytes:
    """A whole HTTP/1.1 503 that closes its connection."""
    lines = ["HTTP/1.1 503 Service Unavailable", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def refusal(limits: ServeLimits) -> bytes:
    """The 503 beyond the cap, in the API's error shape, with Retry-After."""
    from chalicelib.api.web import error_response
    from chalicelib.domain.errors import ServiceUnavailable

    response = error_response(ServiceUnavailable(
        f"the server is serving its {limits.max_connections} connections: retry",
        dependency="server", retry_after_seconds=RETRY_AFTER_SECONDS))
    return refusal_bytes(str(response.body).encode(), dict(response.headers))
