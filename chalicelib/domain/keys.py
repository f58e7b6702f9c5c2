"""API keys as data: who a key is (its tenant) and what it may do (its scopes).

A key looks like ``ss_live_<id>_<secret>``: ``ss_live_<id>`` is its prefix,
which a person can recognise in a log or a list (``sessionsync keys
list``); the id is 12 lower-case hex digits, the secret 43 URL-safe
characters (256 random bits).  What is stored (the secret
``SESSIONSYNC_API_KEYS_SECRET_ARN`` names, or ``SESSIONSYNC_API_KEYS``) is
a record per key, never the key::

    {"keys": [{"id": "3f9a0c1d2e4b", "prefix": "ss_live_3f9a0c1d2e4b",
               "sha256": "<hex of SHA-256 of the whole key>", "tenant": "acme",
               "scopes": ["read", "write"], "created": "2026-12-07T12:00:00Z",
               "expires": null}],
     "api_keys": ["<a plaintext key, deprecated>"]}

A plain SHA-256 suffices: the key holds 256 random bits, so its hash
cannot be searched for (a keyed hash guards short, guessable secrets such
as passwords; docs/decisions/api-keys-as-data.md).  ``api_keys`` holds the
plaintext keys of before, still accepted as the default tenant's with every
scope until API 2.0 (a deprecation is logged on each load of them).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chalicelib.domain.errors import ValidationError
from chalicelib.domain.tenants import DEFAULT_TENANT, TENANT_PATTERN, valid_tenant

if TYPE_CHECKING:
    from datetime import datetime

# hashlib, secrets and datetime are imported where they are used, and the
# patterns compiled on first use: config.py imports this module on every
# function's cold start, and only the authorizer checks keys, only the CLI
# makes them

READ, WRITE, OWNER_ADMIN, ADMIN = "read", "write", "owner-admin", "admin"
#: every scope, in the order they are listed
SCOPES = (READ, WRITE, OWNER_ADMIN, ADMIN)
KEY_PREFIX = "ss_live_"
#: the id of every plaintext key (they have none of their own)
LEGACY_KEY_ID = "legacy"
# patterns, compiled (and cached by re) on first use, not on every cold start
_KEY = r"ss_live_([0-9a-f]{12})_[A-Za-z0-9_-]{43}"
_HEX64 = r"[0-9a-f]{64}"
_ID = r"[0-9a-f]{12}"
# compared when a token names no known id, so that a known and an unknown id
# cost the same comparison
NO_DIGEST = "0" * 64


@dataclass(frozen=True)
class Caller:
    """Who sent a request: its key's tenant, id and scopes."""

    tenant: str
    key_id: str
    scopes: frozenset[str] = field(default_factory=lambda: frozenset(SCOPES))

    def to_context(self) -> dict[str, str]:
        """The authorizer's context (API Gateway takes strings, numbers and
        booleans only: the scopes are one space-separated string)."""
        return {"tenant": self.tenant, "key_id": self.key_id,
                "scopes": " ".join(s for s in SCOPES if s in self.scopes)}

    @classmethod
    def from_context(cls, context: Mapping[str, Any]) -> Caller | None:
        tenant, key_id, scopes = (context.get(k) for k in ("tenant", "key_id", "scopes"))
        if not isinstance(tenant, str) or not isinstance(key_id, str) or not isinstance(scopes, str):
            return None
        return cls(tenant, key_id, frozenset(scopes.split()))


#: a plaintext key's caller, and an IAM-authenticated one's
FULL_ACCESS = Caller(DEFAULT_TENANT, LEGACY_KEY_ID)


@dataclass(frozen=True)
class KeyRecord:
    """One key, as stored: everything but the key."""

    id: str
    sha256: str
    tenant: str
    scopes: frozenset[str]
    created: str
    #: ISO 8601 UTC; None: never
    expires: str | None = None

    @property
    def prefix(self) -> str:
        return KEY_PREFIX + self.id

    @property
    def caller(self) -> Caller:
        return Caller(self.tenant, self.id, self.scopes)

    def expired(self, now: float) -> bool:
        return self.expires is not None and _epoch(self.expires) <= now

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "prefix": self.prefix, "sha256": self.sha256, "tenant": self.tenant,
                "scopes": [s for s in SCOPES if s in self.scopes], "created": self.created,
                "expires": self.expires}

    @classmethod
    def from_dict(cls, doc: Any) -> KeyRecord:
        """Raises ValidationError saying which field is wrong."""
        if not isinstance(doc, dict):
            raise ValidationError("a key record must be a JSON object")
        key_id, digest, tenant = doc.get("id"), doc.get("sha256"), doc.get("tenant", DEFAULT_TENANT)
        scopes, created, expires = doc.get("scopes"), doc.get("created"), doc.get("expires")
        if not isinstance(key_id, str) or not re.fullmatch(_ID, key_id):
            raise ValidationError("a key record's id must be 12 lower-case hex digits", field="id")
        if not isinstance(digest, str) or not re.fullmatch(_HEX64, digest):
            raise ValidationError(f"key {key_id}: sha256 must be 64 lower-case hex digits",
                                  field="sha256")
        if not isinstance(tenant, str) or not valid_tenant(tenant):
            raise ValidationError(f"key {key_id}: tenant must match {TENANT_PATTERN}", field="tenant")
        if not isinstance(scopes, list) or not scopes or not set(scopes) <= set(SCOPES):
            raise ValidationError(f"key {key_id}: scopes must be a non-empty list of "
                                  f"{', '.join(SCOPES)}", field="scopes")
        for name, value in (("created", created), ("expires", expires)):
            if value is not None and (not isinstance(value, str) or _parse_time(value) is None):
                raise ValidationError(f"key {key_id}: {name} must be an ISO 8601 time", field=name)
        if created is None:
            raise ValidationError(f"key {key_id}: created is required", field="created")
        return cls(key_id, digest, tenant, frozenset(scopes), created, expires)


def digest(key: str) -> str:
    import hashlib
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(token: str) -> str | None:
    """The id a token of the ``ss_live_`` form names; None for any other."""
    match = re.fullmatch(_KEY, token)
    return match[1] if match else None


def new_key(tenant: str, scopes: Iterable[str], now: float,
            expires: float | None = None) -> tuple[str, KeyRecord]:
    """A new key (shown once) and its record (stored)."""
    import secrets
    scopes = frozenset(scopes)
    if not valid_tenant(tenant):
        raise ValidationError(f"tenant must match {TENANT_PATTERN}", field="tenant")
    if not scopes or not scopes <= set(SCOPES):
        raise ValidationError(f"scopes must be some of {', '.join(SCOPES)}", field="scopes")
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = KeyRecord(key_id, digest(key), tenant, scopes, iso(now),
                       iso(expires) if expires is not None else None)
    return key, record


def iso(seconds: float) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> datetime | None:
    from datetime import UTC, datetime
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _epoch(text: str) -> float:
    moment = _parse_time(text)
    return moment.timestamp() if moment else 0.0


@dataclass(frozen=True)
class KeySet:
    """What a secret or ``SESSIONSYNC_API_KEYS`` holds."""

    records: tuple[KeyRecord, ...] = ()
    #: plaintext keys (deprecated)
    legacy: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.records) + len(self.legacy)

    def __add__(self, other: KeySet) -> KeySet:
        return KeySet(self.records + other.records, self.legacy + other.legacy)

    def to_json(self) -> str:
        doc: dict[str, Any] = {"keys": [r.to_dict() for r in self.records]}
        if self.legacy:
            doc["api_keys"] = list(self.legacy)
        return json.dumps(doc, indent=1)


def parse_keys(text: str) -> KeySet:
    """A secret's (or the variable's) keys: ``{"keys": [...], "api_keys":
    [...]}``, a JSON list of records, or the forms of before (a JSON list
    or a comma-separated string of plaintext keys).  Raises ValidationError."""
    try:
        doc: Any = json.loads(text)
    except ValueError:
        doc = text
    if isinstance(doc, dict):
        records, legacy = doc.get("keys", []), doc.get("api_keys", [])
    elif isinstance(doc, list) and any(isinstance(item, dict) for item in doc):
        records, legacy = doc, []
    else:
        records, legacy = [], doc
    if not isinstance(records, list):
        raise ValidationError("keys must be a list of key records")
    if isinstance(legacy, str):
        legacy = legacy.split(",")
    if not isinstance(legacy, list):
        raise ValidationError("api_keys must be a list of keys")
    parsed = tuple(KeyRecord.from_dict(r) for r in records)
    ids = [r.id for r in parsed]
    if len(set(ids)) != len(ids):
        raise ValidationError("two key records have the same id")
    plain = tuple(str(k).strip() for k in legacy if str(k).strip())
    if any(len(k) < 16 for k in plain):
        raise ValidationError("every key must have at least 16 characters")
    return KeySet(parsed, plain)


#: no keys at all (a setting's default)
NO_KEYS = KeySet()
