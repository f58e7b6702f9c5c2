"""API key authentication for the session routes.

Keys come from SESSIONSYNC_API_KEYS (comma separated) or a Secrets Manager
secret (SESSIONSYNC_API_KEYS_SECRET_ARN) holding ``{"api_keys": [...]}`` or a
comma-separated string.  Clients send ``Authorization: Bearer <key>``.
Every configured key is compared with ``hmac.compare_digest`` so the time
taken says nothing about which key, or how much of it, matched.

The secret is read again when the cached keys are older than
``SECRET_CACHE_SECONDS``.  A failed read keeps the last good keys: one
Secrets Manager blip must not deny every caller (API Gateway would then
cache the deny for the authorizer's TTL).  Failed reads are retried after a
pause that doubles from ``REFRESH_BACKOFF_SECONDS`` up to
``REFRESH_BACKOFF_MAX_SECONDS``, so a Secrets Manager outage is not called
on every request; each one is logged and counted (``ApiKeyRefreshFailures``).
"""
from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from chalicelib.config import API_KEYS, API_KEYS_SECRET_ARN
from chalicelib.domain.errors import ConfigurationError
from chalicelib.observability import metrics

SECRET_CACHE_SECONDS = 300
REFRESH_BACKOFF_SECONDS = 1.0
REFRESH_BACKOFF_MAX_SECONDS = 60.0
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
        self._refresh_at = float("-inf")
        self._failures = 0
        self._lock = threading.Lock()

    @property
    def failures(self) -> int:
        """Secret reads that failed in a row (0 after a good one)."""
        return self._failures

    def keys(self) -> tuple[str, ...]:
        """Never raises: with no good keys yet (a cold start while Secrets
        Manager is down) only the static keys are returned."""
        if not self._secret_arn:
            return self._static
        if self._clock() >= self._refresh_at:
            # With good keys in hand, a request does not queue behind another
            # thread's refresh; without any, it waits for that read's outcome.
            if self._lock.acquire(blocking=not self._cached):
                try:
                    if self._clock() >= self._refresh_at:
                        self._refresh()
                finally:
                    self._lock.release()
        return self._static + self._cached

    def _refresh(self) -> None:
        try:
            reply = self._secrets.get_secret_value(SecretId=self._secret_arn)
            keys = parse_secret(reply["SecretString"])
        except Exception as exc:  # any failure: keep what we have, retry later
            self._failures += 1
            pause = min(REFRESH_BACKOFF_SECONDS * 2 ** (self._failures - 1),
                        REFRESH_BACKOFF_MAX_SECONDS)
            self._refresh_at = self._clock() + pause
            log.warning("cannot read the API keys secret; %s",
                        "keeping the last good keys" if self._cached else "denying until it loads",
                        extra={"error": _error_name(exc), "failures": self._failures,
                               "retry_in_seconds": pause})
            metrics.emit({"ApiKeyRefreshFailures": 1})
            return
        self._cached = keys
        self._failures = 0
        self._refresh_at = self._clock() + SECRET_CACHE_SECONDS

    def accepts(self, authorization: str | None) -> bool:
        return key_matches(bearer_token(authorization), self.keys())


def _error_name(exc: BaseException) -> str:
    """The AWS error code, or the exception's type: never its text (which
    carries the secret's ARN and so the account id)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(exc).__name__


def accepts(keys: Callable[[], ApiKeys], authorization: str | None) -> bool:
    """The authorizer's decision; never raises (an authorizer that raises
    gives the client a bare 500).  Trouble loading the keys denies and logs."""
    try:
        return keys().accepts(authorization)
    except Exception:
        log.exception("cannot load API keys; denying")
        return False
