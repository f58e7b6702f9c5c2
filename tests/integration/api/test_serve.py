"""`sessionsync serve` as a user runs it: a real HTTP server in its own
process (started here on a free port, stopped by PID), on the test Redis,
without the pipeline.  Hit by a burst of 64 clients, and sent what API Gateway
would answer itself (schemathesis runs against a server with its pipeline in
tests/integration/api/test_contract.py)."""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chalicelib.config import AUTH_MODE
from tests.support.constants import API_KEY, AUTH, BEARER, PROJECT_DIR, REDIS_TEST_URL, TEST_CHANNEL
from tests.support.servers import free_port, serve_process, serve_subprocess, wait_for


@dataclass(frozen=True)
class Server:
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, headers: dict | None = None,
                body: bytes | str | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


def serve_environment() -> dict[str, str]:
    """The test Redis and a known key; no PostgreSQL, queues or secrets.

    The CLI fills unset variables from the `local` stage of
    .chalice/config.json; an empty value counts as set, and as "not
    configured" to the settings, so the server needs only Redis.
    """
    env = dict(os.environ)
    env.update({"REDIS_URL": REDIS_TEST_URL, "SESSIONSYNC_CHANNEL": TEST_CHANNEL,
                "SESSIONSYNC_API_KEYS": API_KEY, "LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1"})
    for name in ("DATABASE_URL", "DB_SECRET_ARN", "SESSION_QUEUE_URL", "SESSION_QUEUE_NAME",
                 "SESSION_DLQ_URL", "SESSION_DLQ_NAME", "SESSIONSYNC_API_KEYS_SECRET_ARN",
                 "PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE"):
        env[name] = ""
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_single) -> Server:
    with serve_process(serve_environment(), tmp_path_factory.mktemp("serve"),
                       "--no-pipeline") as (port, log):
        yield Server(port, log)


def syn_and_data_retransmissions(sock: socket.socket) -> int:
    """tcpi_total_retrans of a connected socket (Linux struct tcp_info): the
    segments, SYN included, that the kernel had to send again."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 100)[0]


def test_64_concurrent_clients_are_all_served_without_a_reset_or_a_dropped_syn(server):
    # chalice local listens with a backlog of 5: a burst like this one gets
    # dropped SYNs (retransmitted after a second, then two...) or resets
    clients = 64
    start = threading.Barrier(clients)
    outcomes: list[tuple[str, int]] = []
    lock = threading.Lock()

    def client() -> None:
        start.wait(timeout=30)
        retransmitted = -1
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
                retransmitted = syn_and_data_retransmissions(sock)
            outcome = reply.split(b"\r\n", 1)[0].decode()
        except OSError as exc:
            outcome = repr(exc)
        with lock:
            outcomes.append((outcome, retransmitted))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    statuses = [status for status, _ in outcomes]
    assert statuses == ["HTTP/1.1 200 OK"] * clients, sorted(set(statuses))
    # what the kernel did, not how long a busy machine took: on loopback a
    # segment is sent again only when the listener's queue dropped it
    assert [n for _, n in outcomes] == [0] * clients, sorted(n for _, n in outcomes)


def test_an_unknown_route_is_a_404_in_the_error_shape_that_does_not_echo_the_key(server):
    status, headers, body = server.request("GET", "/nope/x?y=1", headers=BEARER)
    assert status == 404 and headers["Content-Type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["code"] == problem["error"]["code"] == "RouteNotFound"
    assert (problem["type"], problem["status"], problem["title"]) == ("about:blank", 404, "Not Found")
    assert API_KEY.encode() not in body


def test_missing_and_refused_credentials_are_401_and_403_in_the_error_shape(server):
    status, headers, body = server.request("GET", "/sessions/x")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(body)["error"]["code"] == "Unauthorized"
    status, _, body = server.request("GET", "/sessions/x", headers={"Authorization": "Bearer wrong"})
    assert status == 403 and json.loads(body)["error"]["code"] == "Forbidden"
    assert b"wrong" not in body


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "BREW"])
def test_a_method_no_route_has_is_a_405_not_a_5xx(server, method):
    status, headers, body = server.request(method, "/sessions/x", headers=BEARER)
    assert status == 405 and headers["Allow"] == "GET, PUT, PATCH, DELETE"
    assert json.loads(body)["error"]["code"] == "MethodNotAllowed"


def test_a_huge_header_is_refused_with_a_4xx(server):
    status, _, _ = server.request("GET", "/health", headers={"X-Huge": "a" * 70_000})
    assert 400 <= status < 500
    assert server.request("GET", "/health")[0] == 200  # and the server carries on


def test_the_walk_through_works_over_http(server, session_id):
    status, headers, body = server.request(
        "POST", "/sessions", AUTH, json.dumps({"session_id": session_id, "state": {"items": []}}))
    assert status == 201 and headers["ETag"] == '"1"'
    status, headers, _ = server.request("GET", f"/sessions/{session_id}", BEARER)
    assert status == 200
    etag = headers["ETag"]
    put = {**AUTH, "If-Match": etag}
    status, _, body = server.request("PUT", f"/sessions/{session_id}", put, '{"state":{"items":["book"]}}')
    assert status == 200 and json.loads(body)["version"] == 2
    status, _, body = server.request("PUT", f"/sessions/{session_id}", put, '{"state":{"items":[]}}')
    assert status == 412 and json.loads(body)["error"]["details"]["actual_version"] == 2
    assert server.request("DELETE", f"/sessions/{session_id}", BEARER)[0] == 204
    assert server.request("GET", f"/sessions/{session_id}", BEARER)[0] == 404


def test_conditional_requests_work_over_http(server, session_id):
    create = {**AUTH, "If-None-Match": "*"}
    status, headers, body = server.request("PUT", f"/sessions/{session_id}", create, '{"state":{}}')
    assert status == 201 and headers["Location"] == f"/sessions/{session_id}"  # no stage locally
    assert server.request("PUT", f"/sessions/{session_id}", create, '{"state":{}}')[0] == 412

    status, headers, body = server.request("GET", f"/sessions/{session_id}",
                                           {**BEARER, "If-None-Match": 'W/"1"'})
    assert (status, body, headers["ETag"]) == (304, b"", '"1"') and "Content-Type" not in headers

    status, _, _ = server.request("PUT", f"/sessions/{session_id}", {**AUTH, "If-Match": 'W/"1"'},
                                  '{"state":{"n":1}}')
    assert status == 400
    status, _, body = server.request("PUT", f"/sessions/{session_id}", {**AUTH, "If-Match": "*"},
                                     '{"state":{"n":1}}')
    assert status == 200 and json.loads(body)["version"] == 2

    status, headers, body = server.request("DELETE", f"/sessions/{session_id}",
                                           {**BEARER, "If-Match": "*"})
    assert (status, body) == (204, b"") and "Content-Type" not in headers
    assert server.request("DELETE", f"/sessions/{session_id}", {**BEARER, "If-Match": "*"})[0] == 412


@pytest.mark.parametrize(("request_head", "status", "code"), [
    (b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "BadRequest"),
    (b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413,
     "RequestEntityTooLarge"),
    (b"POST /sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
     411, "LengthRequired"),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "RequestUriTooLong"),
    (b"garbage\r\n\r\n", 400, "BadRequest"),
])
def test_requests_http_server_refuses_get_the_json_error_shape(server, request_head, status, code):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request_head)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    if reply.startswith(b"{"):
        # no HTTP version in the request line: http.server answers HTTP/0.9
        # style, the body alone
        body = reply
    else:
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.split()[1] == str(status).encode(), head[:200]
    assert json.loads(body)["error"]["code"] == code


def raw_exchange(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` on a fresh connection; everything the server sent
    back until it closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


# Latin-1 (how http.server decodes headers) has three characters that
# str.isdigit() takes and int() refuses: superscript one, two and three.
@pytest.mark.parametrize("value", [b"\xb2", b"\xb3", b"1\xb9"])
def test_a_content_length_in_superscript_digits_is_a_400_not_a_dropped_connection(server, value):
    reply = raw_exchange(server.port, b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                         + value + b"\r\n\r\n{}")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split()[1:2] == [b"400"], reply[:200]
    assert json.loads(body)["error"] == {"code": "BadRequest", "message": "Content-Length must be a number"}


def test_serving_on_the_loopback_prints_no_exposure_warning(server):
    assert "beyond this machine" not in server.log.read_text()


def test_serving_beyond_the_loopback_warns_on_stderr_and_in_the_log(tmp_path, redis_single):
    with serve_process(serve_environment(), tmp_path, "--no-pipeline", "--host", "0.0.0.0") as (port, log):
        text = log.read_text()
    assert "warning: serving on 0.0.0.0, beyond this machine" in text
    logged = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line["logger"] == "sessionsync.serve" and line["level"] == "WARNING"
               and line["host"] == "0.0.0.0" and line["port"] == port for line in logged), text[-2000:]


# --- slow clients: a deadline per request, a cap on connections ---------------

SHORT_TIMEOUT = 1.0


@contextlib.contextmanager
def bounded_server(workdir: Path, *options: str) -> Iterator[tuple[Server, int]]:
    """``sessionsync serve --no-pipeline OPTIONS``; (the server, its PID)."""
    with serve_subprocess(serve_environment(), workdir, "--no-pipeline", *options) as (proc, port, log):
        yield Server(port, log), proc.pid


def server_threads(pid: int) -> int:
    """The server process's thread count, as the kernel sees it."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("Threads:", 1)[1].split()[0])


def idle_server_threads(pid: int, seconds: float = 1.0) -> int:
    """The thread count with no connection open: the least seen over
    ``seconds`` (the thread of a connection just closed may not have exited)."""
    deadline = time.monotonic() + seconds
    least = server_threads(pid)
    while time.monotonic() < deadline:
        time.sleep(0.05)
        least = min(least, server_threads(pid))
    return least


@pytest.fixture(scope="module")
def short_timeout_server(tmp_path_factory, redis_single) -> Server:
    with bounded_server(tmp_path_factory.mktemp("serve-timeout"),
                        "--request-timeout", str(SHORT_TIMEOUT)) as (server, _):
        yield server


def seconds_until_closed(port: int, sent: bytes, limit: float = 15) -> float:
    """Send ``sent``, then stall; seconds until the server closes the
    connection (``limit`` when it never does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(sent)
        start = time.monotonic()
        try:
            while sock.recv(65536):
                pass  # an answer (e.g. a 408) is fine; the close is what counts
        except TimeoutError:
            return limit
        return time.monotonic() - start


@pytest.mark.parametrize("sent", [
    b"",                                               # connected, said nothing
    b"POST /sess",                                     # half a request line
    b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-",  # half the headers
    b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n{\"session_id\"",       # half the body
], ids=["nothing", "request-line", "headers", "body"])
def test_a_client_that_sends_half_a_request_and_stalls_is_disconnected(short_timeout_server, sent):
    seconds = seconds_until_closed(short_timeout_server.port, sent)
    # the margin is for a loaded machine: without a timeout it never closes
    assert SHORT_TIMEOUT * 0.5 <= seconds < SHORT_TIMEOUT + 8, f"closed after {seconds:.1f}s"
    reply = raw_exchange(short_timeout_server.port, b"GET /health HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]  # and the server carries on


def dribble(port: int, head: bytes, byte: bytes, every: float, limit: float) -> tuple[float, bytes]:
    """Send ``head``, then ``byte`` every ``every`` seconds (each read of the
    server's gets a byte well within any per-read timeout) until the server
    answers or closes; (seconds until then, what it sent).  ``limit``
    seconds when it never does."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        start = time.monotonic()
        sock.sendall(head)
        reply = b""
        try:
            while time.monotonic() - start < limit:
                readable, _, _ = select.select([sock], [], [], every)
                if readable:
                    while chunk := sock.recv(65536):
                        reply += chunk
                    return time.monotonic() - start, reply
                sock.sendall(byte)
        except OSError:  # a reset, or a send after the server closed
            return time.monotonic() - start, reply
    return limit, reply


REQUEST_TIMEOUT = 3.0


def test_clients_dribbling_a_request_byte_by_byte_are_cut_at_the_request_deadline_with_a_408(
        tmp_path, redis_single):
    # Every read gets a byte within 0.3 s, so a timeout per read never
    # fires: only a deadline on the whole request does.  Three dribble (the
    # headers, the header section's end, the body); a normal client is
    # served beside them all along.
    heads = [b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ",
             b"GET /health HTTP/1.1\r\nHost: x\r\n",
             b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             b"Content-Length: 100000\r\n\r\n"]
    bytes_dribbled = [b"a", b"X-Slow-Header: 1\r\n", b" "]
    limit = REQUEST_TIMEOUT + 15
    with bounded_server(tmp_path, "--request-timeout", str(REQUEST_TIMEOUT),
                        "--max-connections", "8") as (server, _):
        outcomes: list[tuple[float, bytes]] = [(-1.0, b"")] * len(heads)

        def run(n: int) -> None:
            outcomes[n] = dribble(server.port, heads[n], bytes_dribbled[n], 0.3, limit)

        dribblers = [threading.Thread(target=run, args=(n,)) for n in range(len(heads))]
        for thread in dribblers:
            thread.start()
        served = []
        while any(thread.is_alive() for thread in dribblers):
            served.append(server.request("GET", "/health")[0])
            time.sleep(0.2)
        for thread in dribblers:
            thread.join(timeout=limit + 5)
    for seconds, reply in outcomes:
        # what the server did: a 408, then the close; when, with a wide
        # margin (without the deadline they are never cut: ``limit``)
        assert reply.startswith(b"HTTP/1.1 408 "), (seconds, reply[:200])
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["code"] == "RequestTimeout"
        assert REQUEST_TIMEOUT * 0.5 <= seconds < REQUEST_TIMEOUT + 10, f"cut after {seconds:.1f}s"
    assert served and set(served) == {200}, served


def test_connections_beyond_the_cap_get_a_503_with_retry_after_and_add_no_thread(tmp_path, redis_single):
    cap = 4
    with bounded_server(tmp_path, "--max-connections", str(cap), "--request-timeout", "60",
                        "--queue-timeout", "0.5") as (server, pid):
        assert server.request("GET", "/health")[0] == 200
        before = idle_server_threads(pid)
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(cap)]
        try:
            for sock in held:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and no more
            wait_for(lambda: server_threads(pid) >= before + cap, 20, "a thread per held connection")
            request = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            replies = [raw_exchange(server.port, request, timeout=20) for _ in range(3 * cap)]
            threads_at_the_cap = server_threads(pid)
        finally:
            for sock in held:
                sock.close()
        # places free as the held connections close: served again
        wait_for(lambda: server.request("GET", "/health")[0] == 200, 20, "a 200 once places freed")
    for reply in replies:
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), reply[:300]
        assert b"\r\nRetry-After: 1\r\n" in head and b"\r\nConnection: close" in head
        assert json.loads(body)["code"] == "ServiceUnavailable"
    # one thread per place, none per refused connection (a second of
    # slack: a thread that has released its place may not have exited yet)
    assert threads_at_the_cap <= before + cap + 1, (before, threads_at_the_cap)


def test_idle_keep_alive_connections_give_their_places_to_new_clients_at_the_cap(tmp_path, redis_single):
    cap = 4
    with bounded_server(tmp_path, "--max-connections", str(cap), "--keepalive-timeout", "120",
                        "--queue-timeout", "5") as (server, _):
        idle = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=30) for _ in range(cap)]
        try:
            for conn in idle:
                conn.request("GET", "/health")
                response = conn.getresponse()
                response.read()
                assert response.status == 200 and not response.will_close
            # every place is an idle keep-alive connection: a new client
            # takes the place of one (not a 503 after the queue timeout)
            statuses = [server.request("GET", "/health")[0] for _ in range(3)]
            closed = sum(1 for conn in idle if closed_by_server(conn.sock))
        finally:
            for conn in idle:
                conn.close()
    assert statuses == [200, 200, 200]
    assert 1 <= closed <= 3, closed


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed this idle connection (EOF or reset waiting)."""
    readable, _, _ = select.select([sock], [], [], 2)
    if not readable:
        return False
    try:
        return sock.recv(1) == b""
    except OSError:
        return True


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(tmp_path, redis_single):
    with bounded_server(tmp_path, "--keepalive-timeout", "1") as (server, _):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            assert response.status == 200 and not response.will_close
            seconds = seconds_until_closed_idle(conn.sock, limit=15)
        finally:
            conn.close()
    assert 0.5 <= seconds < 1 + 8, f"closed after {seconds:.1f}s"


def seconds_until_closed_idle(sock: socket.socket, limit: float) -> float:
    start = time.monotonic()
    readable, _, _ = select.select([sock], [], [], limit)
    return time.monotonic() - start if readable else limit


# --- keep-alive: a reused connection is as fast as a fresh one -----------------

def median_get_seconds(port: int, path: str, requests: int) -> tuple[float, float]:
    """Median seconds of ``requests`` GETs of ``path`` on one keep-alive
    connection (after a first one that opens it), and of as many GETs each on
    a new connection, taken in turns: a burst of load on a busy machine
    slows both alike instead of only the one measured during it."""
    reused_times, fresh_times = [], []
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def timed(conn: http.client.HTTPConnection) -> float:
        start = time.perf_counter()
        conn.request("GET", path, headers=BEARER)
        response = conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        assert response.status == 200, body[:200]
        assert conn is not kept or not response.will_close  # the kept one did stay open
        return elapsed

    try:
        timed(kept)
        for _ in range(requests):
            reused_times.append(timed(kept))
            fresh = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                fresh_times.append(timed(fresh))
            finally:
                fresh.close()
    finally:
        kept.close()
    return sorted(reused_times)[requests // 2], sorted(fresh_times)[requests // 2]


def test_a_get_on_a_reused_keep_alive_connection_is_no_slower_than_on_a_fresh_one(server, session_id):
    # The response was two sends (headers, then body) without TCP_NODELAY:
    # Nagle holds the body until the client ACKs the headers, and a client
    # on a connection past its first exchanges delays that ACK (about 40 ms
    # on Linux).  A fresh connection is still in quick-ACK mode, so it hid it.
    status, _, body = server.request("POST", "/sessions", AUTH,
                                     json.dumps({"session_id": session_id, "state": {"n": 1}}))
    assert status == 201, body
    path = f"/sessions/{session_id}"
    reused, fresh = median_get_seconds(server.port, path, 30)
    # a ratio, not a time: a busy machine slows both alike; the stall made it ~30x
    assert reused <= 2 * fresh, f"keep-alive median {reused * 1000:.1f} ms, fresh {fresh * 1000:.1f} ms"


def test_sessionsync_serve_refuses_iam_mode_naming_the_setting_because_nothing_would_check_it():
    """chalice local does not enforce IAM: serving in that mode would answer
    every session route without any authentication."""
    env = {k: v for k, v in os.environ.items() if k != AUTH_MODE}
    env.update({AUTH_MODE: "iam", "REDIS_URL": "redis://127.0.0.1:6379/0",
                "SESSIONSYNC_API_KEYS": "unused-key-0123456789abcdef"})
    port = free_port()
    try:
        result = subprocess.run([str(Path(sys.executable).parent / "sessionsync"), "serve", "--no-pipeline",
                                 "--port", str(port)], cwd=PROJECT_DIR, env=env, capture_output=True,
                                text=True, timeout=30)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"serve started in iam mode, with no authentication: {exc.stdout!r}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"configuration error: {AUTH_MODE}: "), result.stderr
    assert "unauthenticated" in result.stderr and "api-key" in result.stderr


def test_a_merge_patch_works_over_http_and_another_media_type_is_a_415(server, session_id):
    created = {"session_id": session_id, "state": {"items": [], "coupon": "X"}}
    status, _, _ = server.request("POST", "/sessions", AUTH, json.dumps(created))
    assert status == 201
    merge = {**BEARER, "Content-Type": "application/merge-patch+json"}
    status, headers, body = server.request("PATCH", f"/sessions/{session_id}", merge,
                                           '{"state":{"coupon":null,"items":["book"]}}')
    assert status == 200 and headers["ETag"] == '"2"'
    assert json.loads(body)["state"] == {"items": ["book"]}
    status, headers, body = server.request("PATCH", f"/sessions/{session_id}", AUTH, '{"state":{}}')
    assert status == 415 and headers["Content-Type"] == "application/problem+json"
    assert "application/merge-patch+json" in json.loads(body)["detail"]
    status, _, body = server.request("PATCH", f"/sessions/{session_id}", {**merge, "If-Match": '"1"'},
                                     '{"state":{}}')
    assert status == 412 and json.loads(body)["error"]["details"]["actual_version"] == 2


def test_128_clients_creating_new_sessions_at_once_all_get_a_201_not_a_busy_database(
        tmp_path, redis_single, pg_test_dsn):
    # Each create of a new id asks PostgreSQL whether the id existed: with
    # the request threads queued on one connection, a burst like this one
    # answered some creates 503 "busy" (sessionsync.serve_database).
    env = serve_environment()
    env["DATABASE_URL"] = pg_test_dsn
    for name in ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE"):  # libpq reads "" as a value
        env.pop(name)
    clients = 128
    prefix = f"burst-{time.time_ns()}"
    with serve_process(env, tmp_path, "--no-pipeline") as (port, _):
        server = Server(port, tmp_path / "unused.log")
        start = threading.Barrier(clients)
        statuses: list[tuple[int, bytes]] = []
        lock = threading.Lock()

        def client(n: int) -> None:
            start.wait(timeout=30)
            body = json.dumps({"session_id": f"{prefix}-{n}", "state": {"n": n}})
            try:
                status, _, reply = server.request("POST", "/sessions", {
                    **AUTH, "Content-Type": "application/json"}, body)
            except OSError as exc:
                status, reply = -1, repr(exc).encode()
            with lock:
                statuses.append((status, reply[:400]))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    refused = [(status, reply) for status, reply in statuses if status != 201]
    assert len(statuses) == clients
    assert refused == []
