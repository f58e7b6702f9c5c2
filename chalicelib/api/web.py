"""HTTP mapping: domain results and errors to Chalice responses, in one place.

Every error leaves as ``{"error": {"code": ..., "message": ..., "details": ...}}``
with the status the error class names.  An unexpected exception is logged
with its traceback and answered as a 500 ``InternalError`` in the same shape.
"""
from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable
from typing import Any, cast

from chalice import Response

from chalicelib.domain.errors import (
    MethodNotAllowed,
    ServiceUnavailable,
    SessionSyncError,
    UnsupportedMediaType,
)
from chalicelib.domain.session import Session

log = logging.getLogger("sessionsync.web")
JSON: dict[str, str | list[str]] = {"Content-Type": "application/json"}


def session_response(session: Session, status: int = 200, **headers: str) -> Response:
    return Response(body=session.to_json(), status_code=status,
                    headers={**JSON, "ETag": f'"{session.version}"', **headers})


def json_response(body: Any, status: int = 200) -> Response:
    return Response(body=json.dumps(body, separators=(",", ":")), status_code=status, headers=JSON)


def error_response(exc: SessionSyncError) -> Response:
    headers = dict(JSON)
    if isinstance(exc, ServiceUnavailable):
        # whole seconds (RFC 9110); a settle time says how long is left
        wait = exc.details.get("retry_after_seconds", 1)
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return Response(body=json.dumps({"error": exc.to_dict()}), status_code=exc.status,
                    headers=headers)


def chalice_errors_in_api_shape(response: Response) -> Response:
    """The errors Chalice answers itself, before any view runs, in the one
    error shape: 405 for a method the route does not have (keeping its Allow
    header; deployed, API Gateway answers those itself) and 415 for a body
    that is not declared as JSON (deployed too: ``curl -d`` sends a form)."""
    body = response.body
    if response.status_code < 400 or not isinstance(body, dict):
        return response
    if response.status_code == 405:
        allowed = cast(str, response.headers.get("Allow", ""))
        reply = error_response(MethodNotAllowed(
            str(body.get("Message", "method not allowed")),
            allowed=[m.strip() for m in allowed.split(",") if m.strip()]))
        reply.headers["Allow"] = allowed
        return reply
    if response.status_code == 415:
        return error_response(UnsupportedMediaType(
            f"{body.get('Message', 'unsupported media type')}; "
            "send the body with Content-Type: application/json"))
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
