"""HTTP mapping: domain results and errors to Chalice responses, in one place.

Every error leaves as ``{"error": {"code": ..., "message": ..., "details": ...}}``
with the status the error class names.  An unexpected exception is logged
with its traceback and answered as a 500 ``InternalError`` in the same shape.
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from chalice import Response

from chalicelib.errors import MethodNotAllowed, ServiceUnavailable, SessionSyncError
from chalicelib.store import Session

log = logging.getLogger("sessionsync.web")
JSON = {"Content-Type": "application/json"}


def session_response(session: Session, status: int = 200, **headers: str) -> Response:
    return Response(body=session.to_json(), status_code=status,
                    headers={**JSON, "ETag": f'"{session.version}"', **headers})


def json_response(body: Any, status: int = 200) -> Response:
    return Response(body=json.dumps(body, separators=(",", ":")), status_code=status, headers=JSON)


def error_response(exc: SessionSyncError) -> Response:
    headers = dict(JSON)
    if isinstance(exc, ServiceUnavailable):
        headers["Retry-After"] = "1"
    return Response(body=json.dumps({"error": exc.to_dict()}), status_code=exc.status,
                    headers=headers)


def chalice_errors_in_api_shape(response: Response) -> Response:
    """Chalice's own 405 (a method the route does not have) in the one error
    shape, keeping its Allow header.  (Deployed, API Gateway answers those
    itself; locally and in tests the app does.)"""
    if response.status_code == 405 and isinstance(response.body, dict):
        allowed = response.headers.get("Allow", "")
        error = MethodNotAllowed(str(response.body.get("Message", "method not allowed")),
                                 allowed=[m.strip() for m in allowed.split(",") if m.strip()])
        reply = error_response(error)
        reply.headers["Allow"] = allowed
        return reply
    return response


def handles_errors(view: Callable[..., Response]) -> Callable[..., Response]:
    """Decorate a route so that domain errors become the JSON error shape."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return view(*args, **kwargs)
        except SessionSyncError as exc:
            if exc.status >= 500:
                log.error("request failed", extra={"code": exc.code, "error": exc.message})
            return error_response(exc)
        except Exception:
            log.exception("unhandled error")
            return error_response(SessionSyncError("an internal error occurred"))

    return wrapper
