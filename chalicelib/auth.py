"""API key authentication for the session routes.

Keys come from SESSIONSYNC_API_KEYS (comma separated) or a Secrets Manager
secret (SESSIONSYNC_API_KEYS_SECRET_ARN) holding ``{"api_keys": [...]}`` or a
comma-separated string.  Clients send ``Authorization: Bearer <key>``.
Every configured key is compared with ``hmac.compare_digest`` so the time
taken says nothing about which key, or how much of it, matched.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from chalicelib.config import API_KEYS, API_KEYS_SECRET_ARN
from chalicelib.errors import ConfigurationError

SECRET_CACHE_SECONDS = 300
log = logging.getLogger("sessionsync.auth")


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(token: str | None, keys: Sequence[str]) -> bool:
    if not token or not keys:
        return False
    supplied = token.encode()
    matched = False
    for key in keys:
        # no early exit: compare against every key
        matched |= hmac.compare_digest(supplied, key.encode())
    return matched


def parse_secret(secret_string: str) -> tuple[str, ...]:
    try:
        doc = json.loads(secret_string)
    except ValueError:
        doc = secret_string
    if isinstance(doc, dict):
        doc = doc.get("api_keys", [])
    if isinstance(doc, str):
        doc = doc.split(",")
    keys = tuple(str(k).strip() for k in doc if str(k).strip())
    if not keys:
        raise ConfigurationError(API_KEYS_SECRET_ARN, "secret holds no api_keys")
    return keys


class ApiKeys:
    """The accepted keys, from settings or a cached Secrets Manager read."""

    def __init__(self, static_keys: Sequence[str], *, secret_arn: str | None = None,
                 secrets_client: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        if not static_keys and not secret_arn:
            raise ConfigurationError(API_KEYS, f"no API keys configured (set {API_KEYS} "
                                               f"or {API_KEYS_SECRET_ARN})")
        self._static = tuple(static_keys)
        self._secret_arn = secret_arn
        self._secrets = secrets_client
        self._clock = clock
        self._cached: tuple[str, ...] = ()
        self._fetched_at = float("-inf")

    def keys(self) -> tuple[str, ...]:
        if not self._secret_arn:
            return self._static
        if self._clock() - self._fetched_at > SECRET_CACHE_SECONDS:
            reply = self._secrets.get_secret_value(SecretId=self._secret_arn)
            self._cached = parse_secret(reply["SecretString"])
            self._fetched_at = self._clock()
        return self._static + self._cached

    def accepts(self, authorization: str | None) -> bool:
        return key_matches(bearer_token(authorization), self.keys())


def accepts(keys: Callable[[], ApiKeys], authorization: str | None) -> bool:
    """The authorizer's decision; never raises (an authorizer that raises
    gives the client a bare 500).  Trouble loading the keys denies and logs."""
    try:
        return keys().accepts(authorization)
    except Exception:
        log.exception("cannot load API keys; denying")
        return False
