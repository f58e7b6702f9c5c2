"""API keys of several tenants and scopes, for the tests that tell callers apart."""
from __future__ import annotations

import time
from dataclasses import dataclass

from chalicelib.domain.keys import SCOPES, KeySet, new_key
from tests.support.constants import API_KEY


@dataclass(frozen=True)
class TestKey:
    tenant: str
    scopes: frozenset[str]
    token: str
    key_id: str

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json", **extra}


def make_key(tenant: str, scopes=SCOPES, *, expires_in: float | None = None) -> tuple[TestKey, object]:
    now = time.time()
    token, record = new_key(tenant, scopes, now, None if expires_in is None else now + expires_in)
    return TestKey(tenant, frozenset(scopes), token, record.id), record


def key_set(*specs: tuple[str, tuple[str, ...]], legacy: bool = True) -> tuple[KeySet, list[TestKey]]:
    """A KeySet with a key per (tenant, scopes), and the plaintext test key
    (the default tenant's, every scope) unless ``legacy`` is false."""
    made = [make_key(tenant, scopes) for tenant, scopes in specs]
    return (KeySet(tuple(record for _, record in made), (API_KEY,) if legacy else ()),
            [key for key, _ in made])
