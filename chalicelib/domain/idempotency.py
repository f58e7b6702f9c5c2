"""Idempotent retries: the ``Idempotency-Key`` request header.

A client that got a timeout or a 503 on a write cannot tell whether the
write happened.  Sent with the same key, its retry gets the original
outcome (status, body, ETag, Location; marked ``Idempotent-Replayed:
true``) instead of a 409/412 against its own write.  The store records the
key in the same Lua script as the write it names (``ss:{NNNN}:k:<id>|<key>``,
chalicelib/adapters/redis/scripts/), so a write and its record exist
together or not at all; docs/decisions/idempotency-keys.md has the design.
The header's grammar is chalicelib/api/headers.py's.

Pure: the fingerprint of a request, no I/O.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass

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

