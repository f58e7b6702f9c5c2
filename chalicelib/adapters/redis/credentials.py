"""Where Redis credentials come from when they are not in REDIS_URL: a
Secrets Manager secret (REDIS_SECRET_ARN, ``SecretCredentials``) or an
ElastiCache IAM token (REDIS_AUTH=iam, ``IamAuthToken``).  Both are redis-py
credential providers, asked when a connection authenticates, so a rotated
password or a new token reaches new connections without a restart.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import redis
from redis.credentials import CredentialProvider

from chalicelib.config import REDIS_AUTH, REDIS_IAM_CACHE_NAME, REDIS_SECRET_ARN, Settings
from chalicelib.domain.errors import ConfigurationError

log = logging.getLogger("sessionsync.redis")

# How long the Redis secret read for one connection is reused for the next
# ones.  A rotation must keep the old password valid for longer than this
# (ElastiCache RBAC users accept two passwords at once: infra/README.md).
SECRET_REFRESH_SECONDS = 60.0
# After a failed read, the next connection asks again this much later (the
# last good credentials are used meanwhile).
SECRET_RETRY_SECONDS = 5.0
# An ElastiCache IAM token is accepted for 15 minutes after it is signed
# (AWS's limit); a new one is made for connections opened once the cached
# one is 10 minutes old, so no token is presented near its expiry.
IAM_TOKEN_SECONDS = 900
IAM_REFRESH_SECONDS = 600.0

class RedisCredentialsUnavailable(redis.ConnectionError):
    """There are no credentials to authenticate with (yet).  A
    ConnectionError, so that redis-py closes the half-open connection and
    the store answers 503 as for any unreachable Redis."""


class RedisSecretUnavailable(RedisCredentialsUnavailable):
    """The Redis secret could not be read and there are no credentials yet."""


def parse_redis_secret(secret_string: str) -> tuple[str] | tuple[str, str]:
    """``{"password": ..., "username"?: ...}`` or the bare password, as
    redis-py's credentials: (password,) authenticates the default user."""
    try:
        doc = json.loads(secret_string)
    except ValueError:
        doc = {"password": secret_string}
    if not isinstance(doc, dict) or not doc.get("password"):
        raise ConfigurationError(REDIS_SECRET_ARN, "the secret has no password")
    if doc.get("username"):
        return str(doc["username"]), str(doc["password"])
    return (str(doc["password"]),)


class _RefreshedCredentials(CredentialProvider):
    """redis-py asks ``get_credentials`` each time a connection authenticates
    (the first one, and every reconnect): the credentials are made or read
    then, and reused until ``_refresh`` sets a later refresh time on
    ``clock``.  A failed ``_refresh`` leaves the last good ones in place."""

    unavailable: type[RedisCredentialsUnavailable] = RedisCredentialsUnavailable
    #: what failed, for the error: "cannot <what>: <error>"
    what = "make the Redis credentials"

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._credentials: tuple[str] | tuple[str, str] | None = None
        self._error = "not made yet"
        self._refresh_at = float("-inf")
        self._lock = threading.Lock()

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        with self._lock:
            if self._clock() >= self._refresh_at:
                self._refresh()
            if self._credentials is None:
                raise self.unavailable(f"cannot {self.what}: {self._error}")
            return self._credentials

    def _refresh(self) -> None:
        raise NotImplementedError


class SecretCredentials(_RefreshedCredentials):
    """The secret is read when a connection authenticates, reused for
    SECRET_REFRESH_SECONDS, so a rotated password reaches new connections
    without a deploy.  A failed read keeps the last good credentials."""

    unavailable = RedisSecretUnavailable
    what = "read the Redis secret"

    def __init__(self, secrets_client: Any, secret_arn: str, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self._secrets = secrets_client
        self._arn = secret_arn
        self._error = "not read yet"

    def _refresh(self) -> None:
        try:
            reply = self._secrets.get_secret_value(SecretId=self._arn)
            self._credentials = parse_redis_secret(reply["SecretString"])
        except Exception as exc:  # any failure: keep what we have, ask again later
            # the AWS error code or the type: never the text (it names the
            # secret's ARN, and so the account id)
            response = getattr(exc, "response", None)
            code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
            self._error = exc.message if isinstance(exc, ConfigurationError) \
                else f"{REDIS_SECRET_ARN}: {code or type(exc).__name__}"
            self._refresh_at = self._clock() + SECRET_RETRY_SECONDS
            log.warning("cannot read the Redis secret; %s",
                        "keeping the last good credentials" if self._credentials else "no credentials",
                        extra={"error": self._error})
            return
        self._refresh_at = self._clock() + SECRET_REFRESH_SECONDS


class IamAuthToken(_RefreshedCredentials):
    """ElastiCache IAM authentication (REDIS_AUTH=iam): the password is a
    SigV4-presigned ``connect`` request for the cache and user, signed with
    the Lambda role's credentials (botocore's default chain), without its
    ``https://``.  ElastiCache accepts a token for IAM_TOKEN_SECONDS after it
    was signed; connections opened once it is IAM_REFRESH_SECONDS old get a
    new one.  An open connection stays authenticated past the token's expiry
    (ElastiCache closes it after 12 hours; redis-py then reconnects).

    botocore is imported here, not at module level: only REDIS_AUTH=iam
    pays for it at cold start."""

    what = "make the ElastiCache IAM token"

    def __init__(self, user: str, cache_name: str, region: str, *, session: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self._user, self._cache_name, self._region = user, cache_name, region
        self._session = session
        self._signer: Any = None

    def _request_signer(self) -> Any:
        # made with the first token, not when the client is built: finding
        # the credentials may ask the instance metadata service
        if self._signer is None:
            import botocore.session
            from botocore.exceptions import NoCredentialsError
            from botocore.model import ServiceId
            from botocore.signers import RequestSigner
            # kept: the signer holds only a weak proxy of the session's event
            # emitter, which a collected session would take with it
            session = self._session = self._session or botocore.session.get_session()
            credentials = session.get_credentials()
            if credentials is None:  # not kept: the next connection looks again
                raise NoCredentialsError()
            # a role's credentials object refreshes itself when signing
            self._signer = RequestSigner(ServiceId("elasticache"), self._region, "elasticache",
                                         "v4", credentials, session.get_component("event_emitter"))
        return self._signer

    def token(self) -> str:
        query = urlencode({"Action": "connect", "User": self._user})
        request = {"method": "GET", "url": f"https://{self._cache_name}/?{query}",
                   "body": {}, "headers": {}, "context": {}}
        url: str = self._request_signer().generate_presigned_url(
            request, operation_name="connect", expires_in=IAM_TOKEN_SECONDS,
            region_name=self._region)
        return url.removeprefix("https://")

    def _refresh(self) -> None:
        try:
            token = self.token()
        except Exception as exc:  # e.g. no AWS credentials: a 503 naming the setting
            self._error = f"{REDIS_AUTH}=iam: {type(exc).__name__}"
            log.warning("cannot make the ElastiCache IAM token; %s",
                        "keeping the last one" if self._credentials else "no credentials",
                        extra={"error": self._error})
            return  # tried again on the next connection: signing is local
        self._credentials = (self._user, token)
        self._refresh_at = self._clock() + IAM_REFRESH_SECONDS


def iam_auth_token(settings: Settings, *,
                   clock: Callable[[], float] = time.monotonic) -> IamAuthToken:
    """The provider for REDIS_AUTH=iam: the user is REDIS_URL's user name,
    the credentials botocore's default chain (the Lambda role's)."""
    user = unquote(urlsplit(settings.redis_url).username or "")
    if settings.redis_auth != "iam" or not user or not settings.redis_iam_cache_name:
        raise ConfigurationError(REDIS_AUTH, "IAM authentication needs REDIS_AUTH=iam, a user in "
                                             f"REDIS_URL and {REDIS_IAM_CACHE_NAME}")
    return IamAuthToken(user, settings.redis_iam_cache_name, settings.aws_region, clock=clock)
