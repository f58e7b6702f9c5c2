"""The API keys secret, managed: what ``sessionsync keys`` does.

The secret (SESSIONSYNC_API_KEYS_SECRET_ARN) holds key records
(chalicelib/domain/keys.py), never a key: a new key is shown once, by the
command that made it.  Every change is a read, a change of the records and
one ``PutSecretValue``; the authorizer picks it up within its cache time
(chalicelib/api/auth.py, REVOCATION_SECONDS), with no deploy.  Run one
change at a time: Secrets Manager has no compare-and-set, so two
operators writing at once may lose one's change (the loser's key is then
not in the secret, and ``keys list`` shows it).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

from chalicelib.domain.errors import SessionSyncError
from chalicelib.domain.keys import KeyRecord, KeySet, iso, new_key, parse_keys


class KeyNotFound(SessionSyncError):
    code = "KeyNotFound"
    status = 404


@dataclass(frozen=True)
class NewKey:
    #: shown once, stored nowhere
    key: str
    record: KeyRecord
    #: the key it replaces (``rotate``), with its new expiry
    replaced: KeyRecord | None = None


class KeySecret:
    """The keys in one Secrets Manager secret."""

    def __init__(self, client: Any, arn: str, clock: Any = time.time) -> None:
        self.client = client
        self.arn = arn
        self.clock = clock

    def read(self) -> tuple[KeySet, dict[str, Any]]:
        """The keys, and the secret's document (other members are kept)."""
        text = self.client.get_secret_value(SecretId=self.arn)["SecretString"]
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        return parse_keys(text), doc if isinstance(doc, dict) else {}

    def write(self, keys: KeySet, doc: dict[str, Any]) -> None:
        out = {**doc, "keys": [r.to_dict() for r in keys.records]}
        if keys.legacy:
            out["api_keys"] = list(keys.legacy)
        else:
            out.pop("api_keys", None)
        self.client.put_secret_value(SecretId=self.arn, SecretString=json.dumps(out))

    def records(self) -> KeySet:
        return self.read()[0]

    def create(self, tenant: str, scopes: list[str], expires_in: float | None = None) -> NewKey:
        keys, doc = self.read()
        now = self.clock()
        key, record = new_key(tenant, scopes, now, None if expires_in is None else now + expires_in)
        self.write(replace(keys, records=(*keys.records, record)), doc)
        return NewKey(key, record)

    def revoke(self, key_id: str) -> KeyRecord:
        """Remove the key: it stops working within the authorizer's cache time."""
        keys, doc = self.read()
        gone = _find(keys, key_id)
        self.write(replace(keys, records=tuple(r for r in keys.records if r.id != key_id)), doc)
        return gone

    def revoke_plaintext(self) -> int:
        """Remove every plaintext key (the deprecated ``api_keys``)."""
        keys, doc = self.read()
        self.write(replace(keys, legacy=()), doc)
        return len(keys.legacy)

    def rotate(self, key_id: str, grace_seconds: float) -> NewKey:
        """A new key of the same tenant and scopes; the old one keeps working
        for ``grace_seconds`` more (clients move over without a failed
        request), then expires."""
        keys, doc = self.read()
        old = _find(keys, key_id)
        now = self.clock()
        # the new key ends when the old one would have (usually never)
        key, record = new_key(old.tenant, old.scopes, now)
        record = replace(record, expires=old.expires)
        # the old one ends after the grace, or sooner if it was to end sooner
        ends = now + grace_seconds
        kept = old if old.expired(ends) else replace(old, expires=iso(ends))
        records = (*(kept if r.id == key_id else r for r in keys.records), record)
        self.write(replace(keys, records=records), doc)
        return NewKey(key, record, kept)


def _find(keys: KeySet, key_id: str) -> KeyRecord:
    for record in keys.records:
        if record.id == key_id:
            return record
    raise KeyNotFound(f"no key with id {key_id!r} in the secret")
