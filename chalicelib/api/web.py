"""HTTP mapping: domain results and errors to Chalice responses, in one place.

Every error leaves as RFC 9457 problem details (``problem``), with the
status the error class names.  An unexpected exception is logged
with its traceback and answered as a 500 ``InternalError`` in the same shape.
"""
from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from http import HTTPStatus
from typing import Any, cast

from chalice import Response

from chalicelib.api.headers import IDEMPOTENT_REPLAYED, MERGE_PATCH
from chalicelib.domain.errors import (
    ConcurrencyError,
    KeptChanging,
    MethodNotAllowed,
    PreconditionFailed,
    ServiceUnavailable,
    SessionExists,
    SessionLimitReached,
    SessionNotFound,
    SessionSyncError,
    UnsupportedMediaType,
)
from chalicelib.domain.session import Session
from chalicelib.domain.validation import IfMatch, encode_history_cursor

log = logging.getLogger("sessionsync.web")
JSON: dict[str, str | list[str]] = {"Content-Type": "application/json"}
PROBLEM_JSON = "application/problem+json"


def problem(status: int, error: Mapping[str, Any]) -> dict[str, Any]:
    """The body of every error (RFC 9457): ``type`` about:blank, as the
    status says all a client needs besides ``code``, and ``title`` its
    phrase; and, as extension members, the shape clients read before
    problem details: ``code`` and ``error`` (``code``, ``message``,
    ``details``), so that a client reading ``error.code`` keeps working."""
    return {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
            "detail": error["message"], "code": error["code"], "error": dict(error)}


def session_response(session: Session, status: int = 200, **headers: str) -> Response:
    return Response(body=session.to_json(), status_code=status,
                    headers={**JSON, "ETag": etag(session), **replayed(session), **headers})


def replayed(session: Session) -> dict[str, str]:
    """``Idempotent-Replayed: true`` on the answer to a retry that found its
    Idempotency-Key's recorded write (the original outcome, written no
    second time); nothing otherwise."""
    return {IDEMPOTENT_REPLAYED: "true"} if session.replayed else {}


def read_headers(recovered: bool, stale_age: int | None) -> dict[str, str]:
    """The headers of a GET served from PostgreSQL: ``X-Session-Source``,
    and, for a stale copy served while Redis was down (the client's
    ``max-stale``), its ``Age`` in whole seconds (RFC 9111 section 5.1)."""
    headers = {"X-Session-Source": "postgresql"} if recovered else {}
    if stale_age is not None:
        headers["Age"] = str(stale_age)
    return headers


def etag(session: Session) -> str:
    return f'"{session.version}"'


def not_modified(session: Session, **headers: str) -> Response:
    """A 304 for a GET whose If-None-Match matched: the headers a 200 would
    carry, no body and so no Content-Type (RFC 9110 section 15.4.5)."""
    return Response(body="", status_code=304, headers={"ETag": etag(session), **headers})


def no_content(session: Session | None = None) -> Response:
    """A 204: no body, so no Content-Type; marked as a replay when
    ``session`` (what the write returned) is one."""
    headers: dict[str, str | list[str]] = {**replayed(session)} if session else {}
    return Response(body="", status_code=204, headers=headers)


def session_url(context: Mapping[str, Any], route_segments: int, session_id: str) -> str:
    """The URL path of a session as the client addressed this API: behind
    API Gateway the request context's ``path`` carries what precedes the
    route (the stage, ``/dev``, or a custom domain's base path), which the
    route's own path does not; ``route_segments`` is how many segments of
    that path are the route's (POST /sessions: 1).  Locally it is empty."""
    segments = str(context.get("path") or "").rstrip("/").split("/")
    prefix = "/".join(segments[:-route_segments]) if len(segments) > route_segments else ""
    return f"{prefix}/sessions/{session_id}"


@contextmanager
def precondition(header: str | None, session_id: str, *, absent_fails: bool,
                 expected_version: int | None = None) -> Iterator[None]:
    """Turn the failure of a conditional header (``header``, e.g.
    ``If-Match: "3"``) into a 412 PreconditionFailed (RFC 9110 section 13):
    another current version, an existing session (``If-None-Match: *``),
    and, with ``absent_fails`` (``If-Match: *``), no live session.  Without
    a header (the body's ``expected_version``), errors pass unchanged."""
    if header is None:
        yield
        return
    try:
        yield
    except (PreconditionFailed, KeptChanging):  # KeptChanging: no precondition failed
        raise
    except ConcurrencyError as exc:
        raise PreconditionFailed(session_id, precondition=header, expected_version=expected_version,
                                 actual_version=exc.actual_version) from None
    except SessionExists as exc:
        raise PreconditionFailed(session_id, precondition=header, expected_version=None,
                                 actual_version=None if exc.deleted else exc.version,
                                 deleted=exc.deleted) from None
    except SessionNotFound as exc:
        if not absent_fails:
            raise
        raise PreconditionFailed(session_id, precondition=header, expected_version=None,
                                 actual_version=None, deleted=exc.deleted) from None


def if_match(condition: IfMatch | None, session_id: str) -> AbstractContextManager[None]:
    """``precondition`` for an If-Match (or none): ``*`` fails on no live session."""
    if condition is None:
        return precondition(None, session_id, absent_fails=False)
    return precondition(f"If-Match: {condition.header}", session_id,
                        absent_fails=condition.version is None, expected_version=condition.version)


def sessions_page_response(owner_id: str, sessions: Sequence[Session],
                           next_cursor: str | None) -> Response:
    """GET /owners/{owner_id}/sessions: each session as GET returns it,
    built around the raw state JSON as ``session_response`` is."""
    body = '{"owner_id":%s,"sessions":[%s],"next_cursor":%s}' % (
        json.dumps(owner_id), ",".join(s.to_json() for s in sessions), json.dumps(next_cursor))
    return Response(body=body, status_code=200, headers=JSON)


def history_page_response(session_id: str, events: Sequence[Mapping[str, Any]],
                          next_before_version: int | None) -> Response:
    """GET /sessions/{session_id}/events: ``next_cursor``, and the same
    position as ``next_before_version`` for the clients written before the
    cursor (kept until the next major version of the API)."""
    cursor = None if next_before_version is None else encode_history_cursor(next_before_version)
    return json_response({"session_id": session_id, "events": events, "next_cursor": cursor,
                          "next_before_version": next_before_version})


def json_response(body: Any, status: int = 200) -> Response:
    return Response(body=json.dumps(body, separators=(",", ":")), status_code=status, headers=JSON)


def error_response(exc: SessionSyncError) -> Response:
    headers: dict[str, str | list[str]] = {"Content-Type": PROBLEM_JSON}
    if isinstance(exc, ServiceUnavailable | SessionLimitReached):
        # whole seconds (RFC 9110); a settle time, or the first lifetime to
        # end, says how long is left
        wait = exc.details.get("retry_after_seconds", 1)
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return Response(body=json.dumps(problem(exc.status, exc.to_dict())), status_code=exc.status,
                    headers=headers)


# The media type each method's body must be declared as (Chalice's 415 names it)
_BODY_MEDIA_TYPES = {"PATCH": MERGE_PATCH}


def chalice_errors_in_api_shape(response: Response, method: str | None = None) -> Response:
    """The errors Chalice answers itself, before any view runs, in the one
    error shape: 405 for a method the route does not have (keeping its Allow
    header; deployed, API Gateway answers those itself) and 415 for a body
    that is not declared as JSON (deployed too: ``curl -d`` sends a form),
    or, for the ``method`` PATCH, as a merge patch."""
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
        accepted = _BODY_MEDIA_TYPES.get((method or "").upper(), "application/json")
        return error_response(UnsupportedMediaType(
            f"{body.get('Message', 'unsupported media type')}; "
            f"send the body with Content-Type: {accepted}", accepted=[accepted]))
    return response


def handles_errors(view: Callable[..., Response]) -> Callable[..., Response]:
    """Decorate a route so that domain errors become problem details."""

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
