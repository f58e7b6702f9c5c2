"""Parse and check client input before anything is written.

Everything here is pure (no I/O) and raises ``ValidationError`` (400),
``PayloadTooLarge`` (413) or ``PreconditionRequired`` (428) with a message
that says what to fix.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from chalicelib.config import MAX_TTL_SECONDS, MIN_TTL_SECONDS
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
# docs/openapi.yaml's If-Match pattern, with the quotes balanced: "3" or 3
_IF_MATCH = re.compile(r'(?P<q>"?)(?P<version>[1-9][0-9]{0,17})(?P=q)')
# JSON does not tell 3 from 3.0, nor does JSON Schema (an "integer" is any
# whole number): a whole float is the integer it spells, up to 2**53, past
# which a float no longer spells one integer exactly.
_EXACT_FLOAT_LIMIT = 2 ** 53


@dataclass(frozen=True)
class CreateRequest:
    session_id: str
    state_json: str
    ttl_seconds: int | None


@dataclass(frozen=True)
class UpdateRequest:
    session_id: str
    state_json: str
    expected_version: int


def session_id(raw: str, *, percent_encoded: bool = True) -> str:
    """A session id from a path, percent-decoded as API Gateway would; with
    ``percent_encoded=False`` (a JSON body) taken exactly as written, so that
    "a%3Ab" is refused rather than silently becoming "a:b"."""
    value = unquote(raw) if percent_encoded and "%" in raw else raw
    if not _SESSION_ID.fullmatch(value):
        raise ValidationError(
            f"session id must match {SESSION_ID_PATTERN}", field="session_id")
    return value


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


def if_match_version(header: str | None) -> int | None:
    """The version in an If-Match header ("3" or the ETag form "\\"3\\"")."""
    if header is None:
        return None
    # spaces and tabs only, as docs/openapi.yaml's pattern says: str.strip()
    # also takes \x85, \xa0 and \x1c-\x1f, which a client's regex may not
    value = header.strip(" \t")
    if value.startswith("W/"):
        raise ValidationError("If-Match must be a strong ETag", field="If-Match")
    match = _IF_MATCH.fullmatch(value)
    if match is None:
        raise ValidationError('If-Match must be a session version: the ETag of a GET ("3") or 3',
                              field="If-Match")
    return version(int(match["version"]), "If-Match")


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


def create_request(raw: bytes | None, max_state_bytes: int) -> CreateRequest:
    body = parse_body(raw, max_state_bytes)
    _reject_unknown(body, {"session_id", "state", "ttl_seconds"})
    if "state" not in body:
        raise ValidationError("state is required", field="state")
    sid = body.get("session_id")
    if sid is None:
        sid = str(uuid.uuid4())
    elif not isinstance(sid, str):
        raise ValidationError("session_id must be a string", field="session_id")
    else:
        sid = session_id(sid, percent_encoded=False)
    return CreateRequest(sid, check_state(body["state"], max_state_bytes),
                         ttl_seconds(body.get("ttl_seconds")))


def update_request(path_id: str, raw: bytes | None, if_match: str | None,
                   max_state_bytes: int) -> UpdateRequest:
    sid = session_id(path_id)
    body = parse_body(raw, max_state_bytes)
    _reject_unknown(body, {"state", "expected_version"})
    if "state" not in body:
        raise ValidationError("state is required", field="state")
    header_version = if_match_version(if_match)
    body_version = body.get("expected_version")
    if body_version is not None:
        body_version = version(body_version, "expected_version")
    if body_version is None and header_version is None:
        raise PreconditionRequired(
            "send expected_version in the body or an If-Match header; "
            "updates are compare-and-set")
    if body_version is not None and header_version is not None and body_version != header_version:
        raise ValidationError("expected_version and If-Match disagree",
                              expected_version=body_version, if_match=header_version)
    expected = body_version if body_version is not None else header_version
    assert expected is not None  # one of the two, checked above
    return UpdateRequest(sid, check_state(body["state"], max_state_bytes), expected)


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
