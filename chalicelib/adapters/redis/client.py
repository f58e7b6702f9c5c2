"""Build the redis-py client sessionsync uses, single node or cluster.

Timeouts are short on purpose: an unreachable Redis must turn into a 503
within about a second, not a Lambda that hangs until its own timeout.
``rediss://`` (TLS) and ``redis://user:password@`` (RBAC / AUTH) URLs are
passed to redis-py unchanged, as ElastiCache in-transit encryption needs.
With REDIS_SECRET_ARN the user name and password come from Secrets Manager
instead, read when a connection authenticates (``SecretCredentials``);
with REDIS_AUTH=iam the password is an ElastiCache IAM token (``IamAuthToken``).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterPipeline, RedisCluster
from redis.credentials import CredentialProvider
from redis.exceptions import BusyLoadingError, MasterDownError, ReadOnlyError, RedisClusterException
from redis.retry import Retry

from chalicelib.config import REDIS_AUTH, REDIS_IAM_CACHE_NAME, REDIS_SECRET_ARN, Settings
from chalicelib.domain.errors import ConfigurationError, ServiceUnavailable

RedisClient = redis.Redis | RedisCluster

# Replies after which the command did not run, so sending it again cannot
# apply a write twice.  READONLY and MASTERDOWN come from a node that is a
# replica now: after a failover the endpoint's name points at the promoted
# node, but a pooled connection stays attached to the demoted one.  LOADING
# comes from a node reading its data set after a restart.
NOT_RUN_ERRORS = (ReadOnlyError, MasterDownError, BusyLoadingError)
# Attempts after the first, each on a new connection (so the endpoint's name
# is resolved again), with pauses that keep the whole under the one-second
# budget of a 503.
NOT_RUN_RETRIES = 3
NOT_RUN_BACKOFF = ExponentialBackoff(cap=0.1, base=0.025)
# A cluster command refused with CLUSTERDOWN is sent once more, after
# redis-py's own pause and a reload of the slot map.
CLUSTER_RETRIES = 1
# Connections a pool may open (per node for a cluster).  redis-py's default
# (100 since redis-py 6) fails the 101st concurrent command at once with
# MaxConnectionsError, a 503: ``sessionsync serve`` runs a thread per
# client connection, so a burst of more clients than that got 503s
# (``sessionsync bench --sections http_load``).  A Lambda runs one request
# at a time and never gets near it.  Redis's own default maxclients bounds
# it instead.
POOL_MAX_CONNECTIONS = 10_000
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
log = logging.getLogger("sessionsync.redis")


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


def connect_redis(settings: Settings, secrets_client: Any = None, **overrides: Any) -> RedisClient:
    """Return a client for ``settings.redis_url``.

    A single-node client connects lazily (no round trip at cold start); a
    cluster client reads the slot map now.  Raises ServiceUnavailable when
    a cluster cannot be reached.  With ``settings.redis_secret_arn`` the
    credentials are read from that secret through ``secrets_client``; with
    REDIS_AUTH=iam they are IAM tokens signed with the default AWS credentials.
    ``overrides`` go to redis-py (tests use them).
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_timeout,
        "socket_timeout": settings.redis_timeout,
        "health_check_interval": 30,
        "client_name": "sessionsync",
        "max_connections": POOL_MAX_CONNECTIONS,
    }
    if settings.redis_secret_arn:
        if secrets_client is None:
            raise ConfigurationError(REDIS_SECRET_ARN, "is set but no Secrets Manager client was given")
        options["credential_provider"] = SecretCredentials(secrets_client, settings.redis_secret_arn)
    url = settings.redis_url
    if settings.redis_auth == "iam":
        options["credential_provider"] = iam_auth_token(settings)
        # the user name goes to the provider: redis-py refuses one beside it
        parts = urlsplit(url)
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    options.update(overrides)
    # redis-py never re-sends a command after a connection error or a
    # timeout.  Such a command may have run: the connection can break after
    # Redis executed a CAS script and before its reply arrived, and a re-sent
    # script would then answer ConcurrencyError (or SessionExists) for a write
    # that succeeded, which a client's retry loop would apply twice.  The
    # caller gets a 503, outcome unknown, within the one-second budget of a
    # dependency outage (docs/guarantees.md: a fast 503).  Reads, which are
    # safe to repeat, retry a broken connection themselves (SessionStore.get).
    # Only the replies of NOT_RUN_ERRORS are retried: redis-py then drops the
    # connection and opens a new one.
    if not settings.redis_cluster:
        options.setdefault("retry", Retry(NOT_RUN_BACKOFF, NOT_RUN_RETRIES,
                                          supported_errors=NOT_RUN_ERRORS))
        return _Redis.from_url(url, **options)
    # The cluster client retries by itself (MOVED, ASK, TRYAGAIN: see
    # _Cluster); its ``retry`` only says how often a whole command is tried
    # again after CLUSTERDOWN.
    options.setdefault("retry", Retry(NoBackoff(), CLUSTER_RETRIES))
    # Unlike redis.Redis, a cluster client connects as it is built (it reads
    # the slot map): an unreachable or non-cluster Redis must be a 503.
    try:
        return _Cluster.from_url(url, **options)
    except (RedisClusterException, redis.ConnectionError, redis.TimeoutError) as exc:
        raise ServiceUnavailable(f"Redis Cluster is unavailable: {type(exc).__name__}",
                                 dependency="redis") from exc


# The commands of the hot path: a read (GET, EVALSHA of GET_SCRIPT) and the
# compare-and-set (EVALSHA of UPDATE_SCRIPT), sent on _Redis's own
# connection; EVAL too, the store's answer to NOSCRIPT (a restart, a
# failover), so that the script runs, and is cached, on the node that will
# run the next EVALSHA, not on the one a pooled connection may still point at.
HOT_COMMANDS = frozenset({"GET", "EVALSHA", "EVAL", "SCRIPT LOAD"})
_KEYS_ONLY = frozenset({"keys"})


class _Redis(redis.Redis):
    """redis.Redis that sends GET and EVALSHA on one connection of its own.

    A warm Lambda serves one request at a time, so checking a connection out
    of the pool and back in, with redis-py's bookkeeping around each command,
    buys nothing there: it cost half the round trip of a read (sessionsync
    bench, docs/performance.md "The hot path at wire speed").  The hot
    commands go straight to the connection (redis-py still connects it, with
    TLS, AUTH and the client name, runs the health check after an idle
    spell, parses the reply and raises its errors); everything else
    (pipelines, Pub/Sub, INFO...) goes through the pool as before.

    The retries are the client's, with the same rule: only NOT_RUN_ERRORS
    are sent again, on a new connection; after a connection error or a
    timeout redis-py has dropped the connection, the error goes up (a write
    is never re-sent) and the next command connects again, resolving the
    endpoint's name again.  A thread that finds the connection busy (the
    threaded local server) takes the pool's path instead of waiting.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._forget_hot_connection()
        # a forked child must not talk on its parent's socket (the pool
        # resets itself likewise); the weak reference lets the client go
        after_fork = weakref.WeakMethod(self._forget_hot_connection)
        os.register_at_fork(after_in_child=lambda: (forget := after_fork()) and forget())
        # the packing below is redis-py's for UTF-8 (its default encoder);
        # a client-side cache answers GETs itself: leave those to redis-py
        encoder = self.get_encoder()
        self._hot = (encoder.encoding == "utf-8" and encoder.encoding_errors == "strict"
                     and self.get_cache() is None)

    def _forget_hot_connection(self) -> None:
        self._hot_lock = threading.Lock()
        self._hot_connection: Any = None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        # options other than "keys" (which only a client-side cache reads)
        # change how redis-py reads the reply: its path then
        if not (self._hot and args[0] in HOT_COMMANDS and options.keys() <= _KEYS_ONLY
                and self._hot_lock.acquire(blocking=False)):
            return super().execute_command(*args, **options)
        try:
            packed = _pack(args)
            if packed is None:  # an argument only redis-py's encoder knows (or refuses)
                return super().execute_command(*args, **options)
            conn = self._hot_connection
            if conn is None:
                # from the pool, so that closing the client closes it too
                conn = self._hot_connection = self.connection_pool.get_connection()
            else:
                _drop_if_dead(conn)
            reply = conn.retry.call_with_retry(lambda: _send_and_read(conn, packed),
                                               lambda _error: conn.disconnect())
            callback = self.response_callbacks.get(args[0])
            return reply if callback is None else callback(reply)
        finally:
            self._hot_lock.release()


def _drop_if_dead(conn: Any) -> None:
    """Disconnect ``conn`` if the server closed it (a restart, a failover,
    an idle timeout) or it holds a stray reply, as the pool checks each
    connection it hands out: the command then goes on a new connection
    instead of failing, which for a write would be a 503 with its outcome
    unknown.  One poll of the socket (about 1 us)."""
    try:
        if conn.is_connected and conn.can_read():
            conn.disconnect()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        conn.disconnect()


def _send_and_read(conn: Any, packed: list[bytes]) -> Any:
    # both disconnect on a socket error or a timeout and raise redis-py's
    # ConnectionError / TimeoutError; an error reply is raised as its class
    # (NoScriptError, ReadOnlyError...) and leaves the connection usable
    conn.send_packed_command(packed)
    return conn.read_response()


def _pack(args: Sequence[Any]) -> list[bytes] | None:
    """RESP for ``args`` (str, bytes, int) in one buffer, as redis-py's
    packer writes it, for a third of its cost; None for any other type."""
    if " " in args[0]:  # a command with a subcommand, "SCRIPT LOAD"
        args = (*args[0].split(), *args[1:])
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            arg = b"%d" % arg
        elif not isinstance(arg, bytes):
            return None
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return [b"".join(parts)]


class _Cluster(RedisCluster):
    """RedisCluster that does not re-send a command after a timeout or a
    connection error (see above).

    What it does retry, as redis-py does, since the command did not run:
    MOVED and ASK are followed at once; TRYAGAIN (a slot migrating) is tried
    again with short pauses for under half a second; CLUSTERDOWN and a slot
    missing from the map reload the map and try CLUSTER_RETRIES more times;
    LOADING too.  After a connection error redis-py has already reloaded the
    map, so the next command finds a new primary.  What is still refused
    after that is a 503 (store._redis_errors).
    """

    ERRORS_ALLOW_RETRY = (*(e for e in RedisCluster.ERRORS_ALLOW_RETRY
                            if not issubclass(e, (redis.TimeoutError, redis.ConnectionError))),
                          BusyLoadingError)  # type: ignore[assignment]  # redis-py types it as its own four

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        # A pipeline retries with its own, wider list (timeouts included) and
        # re-sends the whole batch: give it no retries, as before, so that a
        # hung node costs one timeout, not two.
        pipe = super().pipeline(transaction, shard_hint)
        pipe.set_retry(Retry(NoBackoff(), 0))
        return pipe


def primaries(client: RedisClient) -> list[tuple[str, redis.Redis]]:
    """(name, plain client) of each primary: the one node, or every primary
    of a cluster (where a command that must see every key, SCAN or DBSIZE,
    is sent to each)."""
    if isinstance(client, RedisCluster):
        return [(node.name, client.get_redis_connection(node)) for node in client.get_primaries()]
    kwargs = client.connection_pool.connection_kwargs
    name = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
    return [(str(name), client)]
