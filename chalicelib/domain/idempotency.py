"""Idempotent retries: the ``Idempotency-Key`` request header.

A client that got a timeout or a 503 on a write cannot tell whether the
write happened.  Sent with the same key, its retry gets the original
outcome (status, body, ETag, Location; marked ``Idempotent-Replayed:
true``) instead of a 409/412 against its own write.  The store records the
key in the same Lua script as the write it names (``ss:{NNNN}:i:<id>:<key>``,
chalicelib/adapters/redis/scripts/), so a write and its record exist
together or not at all; docs/decisions/idempotency-keys.md has the design.

Pure: parsing and fingerprinting, no I/O.
"""
from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass

from chalicelib.domain.errors import ValidationError

HEADER = "Idempotency-Key"
#: the response header that marks a replayed outcome
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# The header is a Structured Field string (RFC 8941 section 3.3.3): in
# quotes, printable ASCII, with \" and \\ escaped.  A bare value of visible
# ASCII without quotes, backslashes, commas or semicolons is taken too (what
# many clients send: an unquoted UUID) and names the same key as its quoted
# form.  docs/openapi.yaml's pattern is this one.
_QUOTED = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_BARE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")
_UNESCAPE = re.compile(r'\\(["\\])')
# POST /sessions without a session_id: a keyed request's id is derived from
# its key (uuid5 in this namespace), so that its retry names the same
# session, and finds the record, instead of creating a second one.
_ID_NAMESPACE = uuid.UUID("27c93fb0-23e3-4501-8440-f58efc1b4402")


@dataclass(frozen=True)
class Idempotency:
    """A write's Idempotency-Key and the fingerprint of its request."""

    key: str
    #: sha256 (64 hex digits) of what makes two requests "the same": see
    #: ``fingerprint``
    fingerprint: str

    def session_id(self) -> str:
        """The id of a keyed POST /sessions that names none."""
        return str(uuid.uuid5(_ID_NAMESPACE, self.key))


def parse_key(header: str | None) -> str | None:
    """The key of an ``Idempotency-Key`` header (None: no header).  Raises
    ValidationError (400) for a malformed one."""
    if header is None:
        return None
    value = header.strip(" \t")
    quoted = _QUOTED.fullmatch(value)
    if quoted is not None:
        key = _UNESCAPE.sub(r"\1", quoted[1])
    elif _BARE.fullmatch(value):
        key = value
    else:
        raise ValidationError(f'{HEADER} must be a string in quotes ("8e03978e-40d5") of printable '
                              'ASCII, \\" and \\\\ escaped, or a bare token of visible ASCII',
                              field=HEADER)
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise ValidationError(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters long",
                              field=HEADER)
    return key


def fingerprint(method: str, path: str, body: bytes | None, **preconditions: str | None) -> str:
    """sha256 of the method, the path (the session id as validated), the
    precondition headers that decide the outcome (If-Match, If-None-Match,
    as sent, spaces trimmed) and the body's exact bytes: two requests are
    the same when all of these are.  The body is not normalised: a client
    retries by resending the bytes it sent."""
    head = json.dumps([method.upper(), path,
                       sorted((name, value.strip(" \t")) for name, value in preconditions.items()
                              if value is not None)], separators=(",", ":"))
    digest = hashlib.sha256(head.encode())
    digest.update(b"\n")
    digest.update(body or b"")
    return digest.hexdigest()


def for_request(header: str | None, method: str, path: str, body: bytes | None,
                **preconditions: str | None) -> Idempotency | None:
    """The Idempotency of a write request, or None when it has no key."""
    key = parse_key(header)
    if key is None:
        return None
    return Idempotency(key, fingerprint(method, path, body, **preconditions))
