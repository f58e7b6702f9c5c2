"""API key authentication for the session routes: who the caller is.

Keys come from SESSIONSYNC_API_KEYS and/or a Secrets Manager secret
(SESSIONSYNC_API_KEYS_SECRET_ARN), both holding key records
(chalicelib/domain/keys.py): an id, the SHA-256 of the key, a tenant,
scopes, an optional expiry; never the key.  Clients send
``Authorization: Bearer ss_live_<id>_<secret>``.  The id in the token picks
one record, whose hash is compared with ``hmac.compare_digest``; a token
naming no known id is compared with a hash no key has, so a check costs
one comparison whatever the token.  The plaintext keys of before (a
comma-separated variable, or ``api_keys`` in the secret) are still
accepted, as the default tenant's with every scope, until API 2.0: each is
compared on every request, with no early exit; loading them logs a
deprecation.

The secret is read again when the cached keys are older than
``SECRET_CACHE_SECONDS``.  A failed read keeps the last good keys: one
Secrets Manager blip must not deny every caller (API Gateway would then
cache the deny for the authorizer's TTL).  Failed reads are retried after a
pause that doubles from ``REFRESH_BACKOFF_SECONDS`` up to
``REFRESH_BACKOFF_MAX_SECONDS``, so a Secrets Manager outage is not called
on every request; each one is logged and counted (``ApiKeyRefreshFailures``).

A key removed from the secret (``sessionsync keys revoke``) or past its
expiry stops working once both caches let go of it: this process's copy
of the secret (``SECRET_CACHE_SECONDS``) and API Gateway's cached answer
for the token (the authorizer's TTL, ``AUTHORIZER_TTL_SECONDS``): at most
``REVOCATION_SECONDS`` after the change (an expiry is checked on each of
this process's decisions, so it is bounded by the authorizer's TTL alone).
"""
from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chalicelib.config import API_KEYS, API_KEYS_SECRET_ARN
from chalicelib.constants import AUTHORIZER_TTL_SECONDS
from chalicelib.domain.errors import ConfigurationError, ValidationError
from chalicelib.domain.keys import (
    FULL_ACCESS,
    NO_DIGEST,
    Caller,
    KeyRecord,
    KeySet,
    digest,
    key_id,
    parse_keys,
)
from chalicelib.observability import metrics

SECRET_CACHE_SECONDS = 300
#: the longest a revoked key keeps working (see the module docstring)
REVOCATION_SECONDS = SECRET_CACHE_SECONDS + AUTHORIZER_TTL_SECONDS
REFRESH_BACKOFF_SECONDS = 1.0
REFRESH_BACKOFF_MAX_SECONDS = 60.0
#: when the plaintext keys stop being accepted (the deprecation's words)
LEGACY_KEYS_UNTIL = "API 2.0"
log = logging.getLogger("sessionsync.auth")


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def key_matches(token: str | None, keys: Sequence[str]) -> bool:
    """A plaintext key (deprecated) among ``keys``."""
    if not token or not keys:
        return False
    supplied = token.encode()
    matched = False
    for key in keys:
        # no early exit: compare against every key
        matched |= hmac.compare_digest(supplied, key.encode())
    return matched


def parse_secret(secret_string: str) -> KeySet:
    try:
        keys = parse_keys(secret_string)
    except ValidationError as exc:
        raise ConfigurationError(API_KEYS_SECRET_ARN, exc.message) from None
    if not keys:
        raise ConfigurationError(API_KEYS_SECRET_ARN, "secret holds no keys")
    return keys


def key_set(keys: KeySet | Sequence[str]) -> KeySet:
    """``keys`` as a KeySet: a sequence is plaintext keys (tests, older callers)."""
    return keys if isinstance(keys, KeySet) else KeySet(legacy=tuple(keys))


class _Loaded:
    """A KeySet with its records by id: swapped as one, never half updated."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys
        # a secret's record wins over the variable's of the same id (the
        # secret is the one rotated without a deploy): it comes later
        self.by_id: Mapping[str, KeyRecord] = {r.id: r for r in keys.records}


class ApiKeys:
    """The accepted keys, from settings or a cached Secrets Manager read."""

    def __init__(self, static_keys: KeySet | Sequence[str], *, secret_arn: str | None = None,
                 secrets_client: Any = None, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        static = key_set(static_keys)
        if not static and not secret_arn:
            raise ConfigurationError(API_KEYS, f"no API keys configured (set {API_KEYS} "
                                               f"or {API_KEYS_SECRET_ARN})")
        _warn_if_plaintext(static, API_KEYS)
        self._static = static
        self._secret_arn = secret_arn
        self._secrets = secrets_client
        self._clock = clock
        self._wall = wall_clock
        self._cached = KeySet()
        self._loaded = _Loaded(static)
        self._refresh_at = float("-inf")
        self._failures = 0
        self._lock = threading.Lock()

    @property
    def failures(self) -> int:
        """Secret reads that failed in a row (0 after a good one)."""
        return self._failures

    def keys(self) -> KeySet:
        """Never raises: with no good keys yet (a cold start while Secrets
        Manager is down) only the static keys are returned."""
        return self._current().keys

    def _current(self) -> _Loaded:
        if not self._secret_arn:
            return self._loaded
        if self._clock() >= self._refresh_at:
            # With good keys in hand, a request does not queue behind another
            # thread's refresh; without any, it waits for that read's outcome.
            if self._lock.acquire(blocking=not self._cached):
                try:
                    if self._clock() >= self._refresh_at:
                        self._refresh()
                finally:
                    self._lock.release()
        return self._loaded

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
        if keys.legacy and keys != self._cached:
            _warn_if_plaintext(keys, API_KEYS_SECRET_ARN)
        self._cached = keys
        self._loaded = _Loaded(self._static + keys)
        self._failures = 0
        self._refresh_at = self._clock() + SECRET_CACHE_SECONDS

    def identify(self, authorization: str | None) -> Caller | None:
        """The caller a request's Authorization header authenticates, or None."""
        token = bearer_token(authorization)
        if not token:
            return None
        loaded = self._current()
        named = key_id(token)
        record = loaded.by_id.get(named) if named else None
        # one comparison whether or not the id is known
        matched = hmac.compare_digest(digest(token).encode(),
                                      (record.sha256 if record else NO_DIGEST).encode())
        plaintext = key_matches(token, loaded.keys.legacy)
        if matched and record is not None and not record.expired(self._wall()):
            return record.caller
        return FULL_ACCESS if plaintext else None

    def accepts(self, authorization: str | None) -> bool:
        return self.identify(authorization) is not None


def _warn_if_plaintext(keys: KeySet, setting: str) -> None:
    if keys.legacy:
        log.warning("plaintext API keys are deprecated: accepted (as the default tenant's, "
                    "with every scope) until %s; replace them with `sessionsync keys create`",
                    LEGACY_KEYS_UNTIL, extra={"setting": setting, "plaintext_keys": len(keys.legacy)})


def _error_name(exc: BaseException) -> str:
    """The AWS error code, or the exception's type: never its text (which
    carries the secret's ARN and so the account id)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(exc).__name__


def identify(keys: Callable[[], ApiKeys], authorization: str | None) -> Caller | None:
    """The authorizer's decision; never raises (an authorizer that raises
    gives the client a bare 500).  Trouble loading the keys denies and logs."""
    try:
        return keys().identify(authorization)
    except Exception:
        log.exception("cannot load API keys; denying")
        return None


def accepts(keys: Callable[[], ApiKeys], authorization: str | None) -> bool:
    return identify(keys, authorization) is not None
