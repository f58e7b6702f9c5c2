"""Parse and check client input before anything is written: path ids,
bodies, query parameters, and the requests they make up.

The request builders take the headers already parsed (chalicelib/api/headers.py
holds the HTTP grammar).  Everything here is pure (no I/O) and raises
``ValidationError`` (400), ``PayloadTooLarge`` (413) or
``PreconditionRequired`` (428) with a message that says what to fix.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from chalicelib.constants import MAX_TTL_SECONDS, MIN_TTL_SECONDS
from chalicelib.domain import merge_patch
from chalicelib.domain.errors import PayloadTooLarge, PreconditionRequired, ValidationError

SESSION_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,128}"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
MAX_DEPTH = 64
_SQS_UNSAFE = {0xFFFE: "\\ufffe", 0xFFFF: "\\uffff"}
# Room for the envelope ({"state": ..., "expected_version": ...}) around a
# state of the maximum size, before the exact check on the state itself.
_ENVELOPE_SLACK = 4096
# A version in a header or query string: ASCII digits only (str.isdigit()
# accepts "²", which int() refuses) and no longer than 2**63 - 1.
_VERSION_TEXT = re.compile(r"[0-9]{1,19}")
# JSON does not tell 3 from 3.0, nor does JSON Schema (an "integer" is any
# whole number): a whole float is the integer it spells, up to 2**53, past
# which a float no longer spells one integer exactly.
_EXACT_FLOAT_LIMIT = 2 ** 53


@dataclass(frozen=True)
class CreateRequest:
    session_id: str
    state_json: str
    ttl_seconds: int | None
    #: the owner (``GET /owners/{owner_id}/sessions``), or None
    owner_id: str | None = None


@dataclass(frozen=True)
class UpdateRequest:
    session_id: str
    state_json: str
    #: None: If-Match ``*``, whatever version is current
    expected_version: int | None
    #: the If-Match header that named the version, if one did: its failure
    #: is a 412 PreconditionFailed, where the body's is a 409
    if_match: IfMatch | None = None
    #: a new TTL (the body's ttl_seconds), or None: keep the session's
    ttl_seconds: int | None = None


@dataclass(frozen=True)
class TouchRequest:
    """POST /sessions/{id}/touch: extend the lifetime, state unchanged."""

    session_id: str
    #: the If-Match version, or None (any: a touch needs no precondition)
    if_match: IfMatch | None
    ttl_seconds: int | None


def session_id(raw: str, *, percent_encoded: bool = True) -> str:
    """A session id from a path, percent-decoded as API Gateway would; with
    ``percent_encoded=False`` (a JSON body) taken exactly as written, so that
    "a%3Ab" is refused rather than silently becoming "a:b"."""
    value = unquote(raw) if percent_encoded and "%" in raw else raw
    if not _SESSION_ID.fullmatch(value):
        raise ValidationError(
            f"session id must match {SESSION_ID_PATTERN}", field="session_id")
    return value


def owner_id(raw: Any, *, percent_encoded: bool = True) -> str:
    """An owner id (the same characters as a session id), from a path or,
    with ``percent_encoded=False``, a JSON body."""
    if not isinstance(raw, str):
        raise ValidationError("owner_id must be a string", field="owner_id")
    value = unquote(raw) if percent_encoded and "%" in raw else raw
    if not _SESSION_ID.fullmatch(value):
        raise ValidationError(f"owner id must match {SESSION_ID_PATTERN}", field="owner_id")
    return value


def _body_owner(body: Mapping[str, Any]) -> str | None:
    raw = body.get("owner_id")
    return None if raw is None else owner_id(raw, percent_encoded=False)


def owner_cursor(raw: str | None) -> str | None:
    """The ``cursor`` of an owner's session list: opaque to clients (they
    pass back the ``next_cursor`` they got), it is the last session id of
    the previous page, so any value of its documented pattern is one to
    page on from (the listing is in id order)."""
    if raw is None:
        return None
    value = unquote(raw) if "%" in raw else raw
    if not _SESSION_ID.fullmatch(value):
        raise ValidationError("cursor is not one this API returned; start again without it",
                              field="cursor")
    return value


def encode_owner_cursor(last_session_id: str) -> str:
    return last_session_id


def _reject_constant(name: str) -> Any:
    raise ValidationError(f"{name} is not valid JSON (PostgreSQL jsonb cannot store it)")


def parse_body(raw: bytes | None, max_state_bytes: int) -> dict[str, Any]:
    """Decode a request body that must be a JSON object.

    Parses the raw bytes itself (Chalice's json_body turns deep nesting into
    a 500) and caps nesting depth at ``MAX_DEPTH``.
    """
    if not raw:
        raise ValidationError("request body is empty; send a JSON object")
    if len(raw) > max_state_bytes * 6 + _ENVELOPE_SLACK:
        # 6x: a state of max size may be escaped (\u00e9) in the body.
        raise PayloadTooLarge(f"request body is over the limit of {max_state_bytes} bytes of state",
                              limit=max_state_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("request body is not UTF-8") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ValidationError(f"JSON is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        # the one ValueError json.loads raises besides JSONDecodeError: an
        # integer longer than Python converts (sys.get_int_max_str_digits())
        raise ValidationError("malformed JSON: a number has too many digits") from None
    if not isinstance(body, dict):
        raise ValidationError("request body must be a JSON object")
    return body


def check_state(state: Any, max_state_bytes: int) -> str:
    """Validate a state document and return its compact JSON encoding."""
    if not isinstance(state, dict):
        raise ValidationError("state must be a JSON object", field="state")
    _walk(state)
    try:
        # allow_nan=False: 1e999 parses to inf, which would be written out as
        # the non-JSON token Infinity (unreadable by clients and by jsonb).
        encoded = json.dumps(state, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise ValidationError("state holds a number out of range (it overflows to infinity)",
                              field="state") from None
    if "\ufffe" in encoded or "\uffff" in encoded:
        # Unicode noncharacters: valid JSON, but outside the characters an
        # SQS message may hold, so the change event could never be sent.
        # Written as escapes they are the same JSON value and SQS takes them.
        encoded = encoded.translate(_SQS_UNSAFE)
    try:
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError:
        # "\ud800" without its pair decodes to a lone surrogate: not Unicode,
        # and neither Redis (UTF-8) nor jsonb can hold it
        raise ValidationError("state contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff)",
                              field="state") from None
    if size > max_state_bytes:
        raise PayloadTooLarge(f"state is {size} bytes, over the limit of {max_state_bytes}",
                              field="state", size=size, limit=max_state_bytes)
    return encoded


def _walk(doc: Any) -> None:
    """Reject NUL characters (jsonb cannot hold them) and deep nesting."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValidationError(f"state is nested deeper than {MAX_DEPTH} levels", field="state")
        if isinstance(node, dict):
            for key, value in node.items():
                if "\x00" in key:
                    raise ValidationError("state contains \\u0000 in a key; PostgreSQL cannot store it",
                                          field="state")
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, str) and "\x00" in node:
            raise ValidationError("state contains \\u0000; PostgreSQL cannot store it", field="state")


def _whole(value: Any) -> Any:
    """``value``, or the int a whole float (3.0, 3e2) spells exactly."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOAT_LIMIT:
        return int(value)
    return value


def version(value: Any, field: str) -> int:
    value = _whole(value)
    # bool is an int in Python; a JSON true is not a version.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field} must be an integer", field=field)
    if value < 1 or value > 2 ** 63 - 1:
        raise ValidationError(f"{field} must be a positive integer", field=field)
    return value


@dataclass(frozen=True)
class IfMatch:
    """A parsed If-Match: a version, or ``*`` (``version`` None: whatever
    version is current, as long as there is a live session)."""

    #: as sent, spaces trimmed: a failure names it (412 PreconditionFailed)
    header: str
    version: int | None


@dataclass(frozen=True)
class IfNoneMatch:
    """A parsed If-None-Match: ``*`` or entity tags, compared weakly
    (RFC 9110 section 13.1.2: ``W/"3"`` matches the ETag ``"3"``)."""

    #: as sent, spaces trimmed: a failure names it (412 PreconditionFailed)
    header: str
    tags: frozenset[str]

    @property
    def any(self) -> bool:
        return self.header == "*"

    def matches(self, version: int) -> bool:
        return self.any or str(version) in self.tags


def ttl_seconds(value: Any) -> int | None:
    if value is None:
        return None
    value = _whole(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("ttl_seconds must be an integer", field="ttl_seconds")
    if not MIN_TTL_SECONDS <= value <= MAX_TTL_SECONDS:
        raise ValidationError(f"ttl_seconds must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}",
                              field="ttl_seconds")
    return value


def _reject_unknown(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationError(f"unknown field(s): {', '.join(unknown)}", fields=unknown)


def create_request(raw: bytes | None, max_state_bytes: int, *,
                   default_id: str | None = None) -> CreateRequest:
    """A POST /sessions; without a session_id in the body, the session gets
    ``default_id`` (a keyed request's: Idempotency.session_id) or a new uuid4."""
    body = parse_body(raw, max_state_bytes)
    _reject_unknown(body, {"session_id", "state", "ttl_seconds", "owner_id"})
    if "state" not in body:
        raise ValidationError("state is required", field="state")
    sid = body.get("session_id")
    if sid is None:
        sid = default_id or str(uuid.uuid4())
    elif not isinstance(sid, str):
        raise ValidationError("session_id must be a string", field="session_id")
    else:
        sid = session_id(sid, percent_encoded=False)
    return CreateRequest(sid, check_state(body["state"], max_state_bytes),
                         ttl_seconds(body.get("ttl_seconds")), _body_owner(body))


def _put_body(raw: bytes | None, max_state_bytes: int, *, creates: bool = False) -> dict[str, Any]:
    body = parse_body(raw, max_state_bytes)
    if not creates and body.get("owner_id") is not None:
        raise ValidationError("owner_id is set when a session is created and never changes",
                              field="owner_id")
    _reject_unknown(body, {"state", "expected_version", "owner_id", "ttl_seconds"})
    if "state" not in body:
        raise ValidationError("state is required", field="state")
    return body


def update_request(path_id: str, raw: bytes | None, if_match: IfMatch | None,
                   max_state_bytes: int) -> UpdateRequest:
    sid = session_id(path_id)
    body = _put_body(raw, max_state_bytes)
    body_version = body.get("expected_version")
    if body_version is not None:
        body_version = version(body_version, "expected_version")
    if body_version is None and if_match is None:
        raise PreconditionRequired(
            "send expected_version in the body or an If-Match header; "
            "updates are compare-and-set")
    if body_version is not None and if_match is not None and if_match.version is None:
        raise ValidationError("If-Match: * updates whatever version is current; "
                              "leave expected_version out", field="expected_version")
    if body_version is not None and if_match is not None and body_version != if_match.version:
        raise ValidationError("expected_version and If-Match disagree",
                              expected_version=body_version, if_match=if_match.version)
    expected = body_version if body_version is not None else if_match.version if if_match else None
    return UpdateRequest(sid, check_state(body["state"], max_state_bytes), expected, if_match,
                         ttl_seconds(body.get("ttl_seconds")))


def put_request(path_id: str, raw: bytes | None, *, if_match: IfMatch | None,
                if_none_match: IfNoneMatch | None,
                max_state_bytes: int) -> UpdateRequest | CreateRequest:
    """A PUT: an update, or with ``If-None-Match: *`` a create of this id if
    it does not exist (RFC 9110 section 13.1.2), from the same body."""
    if if_none_match is None:
        return update_request(path_id, raw, if_match, max_state_bytes)
    if not if_none_match.any:
        raise ValidationError("If-None-Match on a PUT takes only * (create the session if it "
                              "does not exist)", field="If-None-Match")
    if if_match is not None:
        raise ValidationError("send If-Match (update) or If-None-Match: * (create), not both",
                              field="If-None-Match")
    sid = session_id(path_id)
    body = _put_body(raw, max_state_bytes, creates=True)
    if body.get("expected_version") is not None:
        raise ValidationError("expected_version updates an existing session; "
                              "If-None-Match: * creates one", field="expected_version")
    return CreateRequest(sid, check_state(body["state"], max_state_bytes),
                         ttl_seconds(body.get("ttl_seconds")), _body_owner(body))


def touch_request(path_id: str, raw: bytes | None, if_match: IfMatch | None) -> TouchRequest:
    """POST /sessions/{id}/touch: an optional body ``{"ttl_seconds": N}``
    (none, or an empty one, keeps the TTL) and an optional If-Match."""
    sid = session_id(path_id)
    ttl = None
    if raw and raw.strip():
        body = parse_body(raw, 1024)
        _reject_unknown(body, {"ttl_seconds"})
        ttl = ttl_seconds(body.get("ttl_seconds"))
    return TouchRequest(sid, if_match, ttl)


def page_limit(raw: str | None, default: int = 50, maximum: int = 500) -> int:
    if raw is None:
        return default
    if not _VERSION_TEXT.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise ValidationError(f"limit must be an integer between 1 and {maximum}", field="limit")
    return int(raw)


def version_param(raw: str | None, field: str) -> int | None:
    """An optional version in a query string."""
    if raw is None:
        return None
    if not _VERSION_TEXT.fullmatch(raw):
        raise ValidationError(f"{field} must be a positive integer", field=field)
    return version(int(raw), field)


# --- PATCH: a JSON Merge Patch (RFC 7396) of the session resource --------------

#: the members of the session resource a merge patch may change; the others
#: are the server's (docs/decisions/merge-patch.md)
PATCHABLE_MEMBERS = frozenset({"state", "ttl_seconds"})
#: the members GET returns that a patch may not change (``owner_id`` is set
#: on create and never changes; ``expires_at`` follows from the write and
#: ``ttl_seconds``)
_SERVER_MEMBERS = frozenset({"session_id", "version", "created_at", "updated_at", "expires_at",
                             "owner_id"})


@dataclass(frozen=True)
class PatchRequest:
    session_id: str
    #: the patch's ``state`` member, validated, or None when it has none
    #: (a patch of no member changes nothing, and still writes a version)
    state_patch: dict[str, Any] | None
    #: the limit the merged state is held to (``merged_state``)
    max_state_bytes: int
    #: the If-Match header, if one was sent: without it the patch applies to
    #: whatever version is current
    if_match: IfMatch | None = None
    #: a new TTL (the lifetime then runs from this write), or None: kept
    ttl_seconds: int | None = None


def patch_request(path_id: str, raw: bytes | None, *, if_match: IfMatch | None,
                  max_state_bytes: int) -> PatchRequest:
    """A PATCH (its media type already checked, ``headers.require_merge_patch``):
    a merge patch of the session resource (what GET returns), of which only
    ``state`` and ``ttl_seconds`` may change.  The patch is held to the
    limits of a state (``check_state``: NUL, depth, numbers, surrogates,
    size); the merged state is checked again by the service before it is
    written."""
    sid = session_id(path_id)
    body = parse_body(raw, max_state_bytes)  # a patch that is not an object would replace the session
    server_members = sorted(set(body) & _SERVER_MEMBERS - PATCHABLE_MEMBERS)
    if server_members:
        raise ValidationError(f"{', '.join(server_members)} cannot be changed by a PATCH; "
                              f"a merge patch of a session changes only "
                              f"{', '.join(sorted(PATCHABLE_MEMBERS))}", fields=server_members)
    _reject_unknown(body, set(PATCHABLE_MEMBERS))
    ttl = None
    if "ttl_seconds" in body:
        if body["ttl_seconds"] is None:
            raise ValidationError("ttl_seconds cannot be removed (a session always has a "
                                  "lifetime); send a number of seconds", field="ttl_seconds")
        ttl = ttl_seconds(body["ttl_seconds"])
    if "state" not in body:
        return PatchRequest(sid, None, max_state_bytes, if_match, ttl)
    state = body["state"]
    if state is None:
        raise ValidationError("state cannot be removed (a session always has a state); "
                              "send {\"state\": {\"key\": null}} to remove a key", field="state")
    if not isinstance(state, dict):
        raise ValidationError("state in a merge patch must be a JSON object: it is merged into "
                              "the session's state (send a PUT to replace it)", field="state")
    check_state(state, max_state_bytes)
    return PatchRequest(sid, state, max_state_bytes, if_match, ttl)


def merged_state(state: dict[str, Any], state_patch: dict[str, Any] | None,
                 max_state_bytes: int) -> str:
    """The compact JSON of ``state`` with ``state_patch`` merged in (RFC
    7396), checked as any state (a result over the limit: PayloadTooLarge)."""
    return check_state(merge_patch.apply(state, state_patch or {}), max_state_bytes)


@dataclass(frozen=True)
class MaxStale:
    """A client's ``Cache-Control: max-stale``: it accepts a copy that may be
    behind, ``seconds`` old at most (None: of any age)."""

    seconds: int | None
