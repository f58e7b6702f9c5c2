"""``sessionsync serve``: the API on http://127.0.0.1:8000, as ``chalice local``
runs it, with the fixes a local stack needs:

* a listen backlog of 128 (``chalice local`` keeps http.server's 5, so a
  burst of a few dozen clients gets connection resets);
* an unknown route answers 404 in the API's error shape instead of a 403
  that echoes the Authorization header back; missing and refused
  credentials (401, 403) use that shape too, and any method http.server
  does not know (TRACE...) gets the API's 405 instead of a 501;
* an API key is generated and printed when SESSIONSYNC_API_KEYS is unset;
* ``SESSIONSYNC_AUTH=iam`` is refused: API Gateway enforces IAM, chalice
  local does not, so that mode would serve every session unauthenticated;
* a warning (log line and stderr) when it listens beyond the loopback;
* a request must arrive whole within a deadline (408 past it), idle
  keep-alive connections are closed, and connections served at once are
  capped (503 with Retry-After beyond, after a short wait), so that slow
  clients cannot hold threads for ever (``sessionsync.serve_limits``);
* a 204 or 304 leaves without Content-Type (chalice local adds one);
* a response leaves in one send, on a socket with TCP_NODELAY: chalice
  local sends the headers, then the body, with Nagle's algorithm on, so on
  a reused keep-alive connection the body waited for the client's delayed
  ACK of the headers (a stall on every request: docs/performance.md);
* the request threads share a few PostgreSQL connections, not one
  (``sessionsync.serve_database``);
* the SQS worker and the outbox relay run beside it (``--no-pipeline`` to
  leave them out), as the event source mapping and the schedule would.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import threading
import time
from http import HTTPStatus
from typing import Any

import click

from chalicelib.config import API_KEYS, AUTH_MODE, auth_mode, load_settings
from chalicelib.domain.errors import ConfigurationError
from chalicelib.domain.keys import SCOPES, KeySet, new_key
from chalicelib.domain.tenants import DEFAULT_TENANT
from sessionsync.cli._common import exit_on_errors
from sessionsync.project import project_dir
from sessionsync.serve_limits import BoundedHandler, BoundedServer, ServeLimits, refusal

BACKLOG = 128
# API Gateway's own payload limit
MAX_BODY_BYTES = 10 * 1024 * 1024
# Content-Length is 1*DIGIT in ASCII: str.isdigit() also takes "²" (which
# int() then refuses, and the connection was dropped without an answer)
_DIGITS = re.compile(r"[0-9]+")
log = logging.getLogger("sessionsync.serve")


def gateway_error(error: Any, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for what API Gateway answers itself, in the
    API's one error shape: no route (chalice says 403 and echoes the
    Authorization header: here 404, no echo), missing credentials (401) and
    refused ones (403).  Deployed, the template maps Gateway Responses alike."""
    from chalice.local import ForbiddenError, NotAuthorizedError

    from chalicelib.api.web import PROBLEM_JSON, problem
    from chalicelib.domain.errors import Forbidden, RouteNotFound, SessionSyncError, Unauthorized

    exc: SessionSyncError
    headers = {"Content-Type": PROBLEM_JSON}
    if isinstance(error, ForbiddenError) and \
            error.headers.get("x-amzn-ErrorType") == "UnauthorizedException":
        exc = RouteNotFound(f"no route for {method} {path.split('?', 1)[0]}")
    elif isinstance(error, NotAuthorizedError):
        exc = Unauthorized("credentials required: send Authorization: Bearer <API key>")
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(error, ForbiddenError):
        exc = Forbidden("the API key is not valid")
    else:
        return error.CODE, dict(error.headers), error.body
    return exc.status, headers, json.dumps(problem(exc.status, exc.to_dict())).encode()


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any interface


def refuse_iam_mode() -> None:
    """Raise ConfigurationError (naming SESSIONSYNC_AUTH) when the session
    routes would be left without any authentication."""
    if auth_mode() == "iam":
        raise ConfigurationError(
            AUTH_MODE, "iam is enforced by API Gateway, and chalice local does not check "
                       "SigV4: sessionsync serve would answer every request unauthenticated. "
                       f"Unset {AUTH_MODE} (or set it to api-key) to serve locally with API keys")


def build_server(host: str, port: int, stage: str = "local", *,
                 limits: ServeLimits | None = None) -> Any:
    """A chalice LocalDevServer for app.py with the fixes above (``limits``:
    ServeLimits' defaults when None)."""
    from chalice.cli.factory import CLIFactory
    from chalice.local import (
        ChaliceRequestHandler,
        CustomLocalChalice,
        LocalChalice,
        LocalDevServer,
        ThreadedHTTPServer,
    )

    class Server(BoundedServer, ThreadedHTTPServer):
        request_queue_size = BACKLOG

    class Handler(BoundedHandler, ChaliceRequestHandler):
        # Headers and body into one buffer (BoundedHandler's files), sent
        # when http.server flushes it after each request: one send per
        # response, not two.  And TCP_NODELAY on each accepted socket, so
        # that no send (a body too big for the buffer, a send_error) waits
        # for the client to ACK the previous one: clients delay that ACK on
        # a keep-alive connection.
        disable_nagle_algorithm = True

        def _send_http_response(self, code, headers, body):
            # A 204 and a 304 have no body, so no Content-Type (chalice
            # local adds application/json to any body, an empty one too),
            # and a 204 no Content-Length either (RFC 9110 section 8.6)
            if code in (204, 304):
                self.send_response(code)
                self._send_headers(headers)
                return
            super()._send_http_response(code, headers, body)

        def _send_error_response(self, error):
            self._send_http_response(*gateway_error(error, self.command, self.path))

        def send_error(self, code, message=None, explain=None):
            # http.server's own refusals (bad request line, URI or headers
            # too long) in the API's error shape, not an HTML page
            from chalicelib.api.web import PROBLEM_JSON, problem

            status = HTTPStatus(code)
            body = json.dumps(problem(code, {
                "code": status.phrase.title().replace(" ", "").replace("-", ""),
                "message": message or status.description})).encode()
            self.close_connection = True
            self.send_response(code, message)
            self.send_header("Content-Type", PROBLEM_JSON)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)

        def _generic_handle(self):
            # chalice local reads Content-Length blindly: garbage raised in
            # the handler thread (connection dropped, no answer) and a huge
            # value was read into memory
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                self.send_error(411, "send the body with a Content-Length (no chunked encoding)")
                return
            length = (self.headers.get("Content-Length") or "0").strip()
            if not _DIGITS.fullmatch(length):
                self.send_error(400, "Content-Length must be a number")
                return
            if int(length) > MAX_BODY_BYTES:
                self.send_error(413, f"request body over {MAX_BODY_BYTES} bytes")
                return
            super()._generic_handle()

        # chalice binds its handler to each do_X; rebind them to the check above
        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _generic_handle

        def __getattr__(self, name):
            # http.server answers 501 (a 5xx) for a method without a do_X
            # (TRACE, CONNECT, any token): let the gateway answer those like
            # PATCH, with the API's 405 or 404.
            if name.startswith("do_"):
                return self._generic_handle
            raise AttributeError(name)

    # chalice puts the project directory on sys.path and imports its app.py
    factory = CLIFactory(project_dir=str(project_dir()))
    # chalice's factory copies the stage's variables over os.environ; keep
    # what the shell (or the CLI's stage defaults) already set.
    saved = dict(os.environ)
    config = factory.create_config_obj(chalice_stage_name=stage)
    os.environ.clear()
    os.environ.update(saved)
    app_obj = config.chalice_app
    CustomLocalChalice.__bases__ = (LocalChalice, app_obj.__class__)
    app_obj.__class__ = CustomLocalChalice
    dev_server = LocalDevServer(app_obj, config, host, port, handler_cls=Handler, server_cls=Server)
    limits = limits or ServeLimits()
    dev_server.server.init_bounds(limits, refusal(limits))
    return dev_server


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, type=int, show_default=True)
@click.option("--pipeline/--no-pipeline", default=True, show_default=True,
              help="Run the SQS worker and the outbox relay beside the API.")
@click.option("--max-connections", type=click.IntRange(1, 4096), show_default=True,
              default=ServeLimits.max_connections,
              help="Connections served at once (a thread each); beyond, a connection waits "
                   "--queue-timeout for a place, then gets a 503 with Retry-After.")
@click.option("--request-timeout", type=click.FloatRange(0.1, 3600), show_default=True,
              default=ServeLimits.request_timeout,
              help="Seconds for a request to arrive whole (line, headers, body); 408 past it. "
                   "An answer gets as long to leave.")
@click.option("--keepalive-timeout", type=click.FloatRange(0.1, 3600), show_default=True,
              default=ServeLimits.keepalive_timeout,
              help="Seconds an idle keep-alive connection waits for its next request.")
@click.option("--queue-timeout", type=click.FloatRange(0, 60), show_default=True,
              default=ServeLimits.queue_timeout,
              help="Seconds a connection beyond --max-connections waits for a place.")
def serve(host: str, port: int, pipeline: bool, max_connections: int, request_timeout: float,
          keepalive_timeout: float, queue_timeout: float) -> None:
    """Serve the API locally (chalice local, hardened) with the pipeline beside it."""
    if not os.environ.get(API_KEYS):
        # a key of the default tenant with every scope; only its record is kept
        key, record = new_key(DEFAULT_TENANT, SCOPES, time.time())
        os.environ[API_KEYS] = KeySet((record,)).to_json()
        click.echo(f"API key (set {API_KEYS} to choose your own: sessionsync keys create "
                   f"--print-record): {key}")
    with exit_on_errors():
        # the app reads the same settings on its first request: fail now,
        # with the setting's name, rather than answer every request with it
        settings = load_settings()
        refuse_iam_mode()
    if settings.has_database:
        # one connection per request thread would be too many, one for all
        # too few (sessionsync.serve_database)
        from chalicelib import runtime
        from chalicelib.adapters.postgres.database import Database
        from sessionsync.serve_database import SERVE_DB_CONNECTIONS, DatabaseConnections
        runtime.install(database=DatabaseConnections.build(
            SERVE_DB_CONNECTIONS, lambda: Database.from_settings(settings, runtime.secrets_client)))
    stop = threading.Event()
    if pipeline:
        from sessionsync.local_pipeline import start_pipeline_threads
        start_pipeline_threads(stop)
    server = build_server(host, port, limits=ServeLimits(
        max_connections=max_connections, request_timeout=request_timeout,
        keepalive_timeout=keepalive_timeout, queue_timeout=queue_timeout))
    if not is_loopback(host):
        warning = (f"serving on {host}, beyond this machine: anyone who can reach port {port} "
                   "can call the API (keep the API keys secret; the local server has no TLS)")
        log.warning(warning, extra={"host": host, "port": port})
        click.echo(f"warning: {warning}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
