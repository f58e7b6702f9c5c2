"""Configuration: every environment variable sessionsync reads, in one place.

Names are constants here; values are read at call time (``load_settings``),
never at import time, into a typed, validated ``Settings``.  A missing or
malformed value raises ``ConfigurationError`` naming the variable.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

from chalicelib.domain.errors import ConfigurationError

REDIS_URL = "REDIS_URL"
REDIS_CLUSTER = "REDIS_CLUSTER"
REDIS_TIMEOUT = "REDIS_TIMEOUT"
# A Secrets Manager secret holding the Redis password (and user name): read
# at run time, so a rotated password is picked up on the next connection.
REDIS_SECRET_ARN = "REDIS_SECRET_ARN"
# How the Redis connection authenticates: ``password`` (default: the URL's or
# REDIS_SECRET_ARN's) or ``iam`` (ElastiCache IAM: a SigV4 token made from
# the Lambda role's credentials, for the user named in REDIS_URL).
REDIS_AUTH = "REDIS_AUTH"
REDIS_AUTH_MODES = ("password", "iam")
# The replication group (or serverless cache) id that IAM tokens are signed
# for: not the endpoint's host name, which AWS does not accept there.
REDIS_IAM_CACHE_NAME = "REDIS_IAM_CACHE_NAME"
DATABASE_URL = "DATABASE_URL"
DB_SECRET_ARN = "DB_SECRET_ARN"
# host[:port] that a DB_SECRET_ARN connection goes to instead of the secret's
# own: RDS Proxy's endpoint, while the secret (attached to the instance, and
# rotated with it) names the instance, where migrations connect.
DB_HOST = "DB_HOST"
# true: the connection goes through a transaction pooler (RDS Proxy,
# PgBouncer in transaction mode), where a session's state does not follow it
# from one transaction to the next: no startup options (the pooler's init
# query sets the timeouts) and no server-side prepared statements.
DB_POOLED = "DB_POOLED"
# The CA bundle that verifies the database server's certificate when the
# connection comes from DB_SECRET_ARN (sslmode=verify-full).
DB_SSL_ROOT_CERT = "DB_SSL_ROOT_CERT"
SESSION_QUEUE_URL = "SESSION_QUEUE_URL"
SESSION_QUEUE_NAME = "SESSION_QUEUE_NAME"
SESSION_DLQ_URL = "SESSION_DLQ_URL"
SESSION_DLQ_NAME = "SESSION_DLQ_NAME"
# FIFO queues: every message carries its session id as MessageGroupId and
# its event id as deduplication id (chalicelib/pipeline/producer.py).
SESSION_QUEUE_FIFO = "SESSION_QUEUE_FIFO"
SESSION_TTL = "SESSION_TTL"
SESSION_MARKER_TTL = "SESSION_MARKER_TTL"
# A GET gives the Redis key its full TTL again (off by default).  Only Redis
# sees it: the lifetime PostgreSQL knows, and recovery honours, moves with
# writes alone (docs/decisions/session-lifetime.md).
SESSION_SLIDE_ON_READ = "SESSION_SLIDE_ON_READ"
# The expiry sweep looks at sessions whose lifetime ended at least this
# long ago (chalicelib/pipeline/expiry.py).
SESSION_EXPIRY_GRACE = "SESSION_EXPIRY_GRACE_SECONDS"
IDEMPOTENCY_KEY_TTL = "IDEMPOTENCY_KEY_TTL_SECONDS"
MAX_STATE_BYTES = "MAX_STATE_BYTES"
LOG_LEVEL = "LOG_LEVEL"
AWS_ENDPOINT_URL = "AWS_ENDPOINT_URL"
AWS_REGION = "AWS_REGION"
AWS_DEFAULT_REGION = "AWS_DEFAULT_REGION"
API_KEYS = "SESSIONSYNC_API_KEYS"
API_KEYS_SECRET_ARN = "SESSIONSYNC_API_KEYS_SECRET_ARN"
OUTBOX_RELAY_AGE = "OUTBOX_RELAY_AGE_SECONDS"
SQS_SEND_TIMEOUT = "SQS_SEND_TIMEOUT_SECONDS"
REDIS_SETTLE = "REDIS_SETTLE_SECONDS"
PUBSUB_CHANNEL = "SESSIONSYNC_CHANNEL"
AUTH_MODE = "SESSIONSYNC_AUTH"
# Days a sync_events row is kept after it was persisted; unset: forever.
# The scheduled purge keeps every session's latest row whatever its age
# (chalicelib/pipeline/retention.py, docs/decisions/audit-retention.md).
SYNC_EVENTS_RETENTION_DAYS = "SYNC_EVENTS_RETENTION_DAYS"
AUTH_MODES = ("api-key", "iam")
# libpq's own variables: any of them means "connect with the PG* environment".
PG_ENVIRONMENT = ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE")

# The queue the consumer Lambda subscribes to (see ``trigger_queue_name``).
DEFAULT_QUEUE_NAME = "sessionsync-events"
# SQS requires a FIFO queue's name to end in this suffix.
FIFO_SUFFIX = ".fifo"
# The event source mapping: up to 10 messages per invocation, and at most
# CONSUMER_MAX_CONCURRENCY invocations at once so that the consumer cannot
# open more PostgreSQL connections than that (one per warm Lambda).
CONSUMER_BATCH_SIZE = 10
CONSUMER_MAX_CONCURRENCY = 5
# The consumer Lambda's timeout (.chalice/config.json: persist_changes); the
# queue's visibility timeout is six times it, as AWS recommends, so that a
# batch still being retried by Lambda is not delivered a second time.
CONSUMER_TIMEOUT_SECONDS = 30
QUEUE_VISIBILITY_TIMEOUT = 6 * CONSUMER_TIMEOUT_SECONDS
QUEUE_MAX_RECEIVE_COUNT = 5

# SQS caps a message at 1 MiB; the event carries the state plus ~300 bytes.
SQS_MESSAGE_LIMIT = 1024 * 1024
DEFAULT_MAX_STATE_BYTES = 256 * 1024
DEFAULT_SESSION_TTL = 3600
# Longer than the pipeline's usual lag (Redis -> SQS -> PostgreSQL): see
# chalicelib/service/sessions.py, "settle".
DEFAULT_REDIS_SETTLE_SECONDS = 10.0
# The version marker outlives the session so that recovery never serves a
# version older than the last acknowledged one and a deleted id is never
# reused.  0 (the default): it never expires, so that a volatile-* eviction
# policy cannot take it (its memory: docs/troubleshooting.md); a number
# of seconds bounds that memory where the eviction policy is noeviction.
DEFAULT_MARKER_TTL = 0
# How long a write's Idempotency-Key is remembered (its record in Redis,
# chalicelib/adapters/redis/scripts/lib.lua): at least a day, so that a client's
# retries of a write whose answer it lost, however patient, find it.
DEFAULT_IDEMPOTENCY_KEY_TTL = 24 * 3600
MIN_IDEMPOTENCY_KEY_TTL = 24 * 3600
MAX_IDEMPOTENCY_KEY_TTL = 30 * 24 * 3600
# The request path's one SQS attempt: connect and read timeout, seconds.  A
# hung SQS costs a write at most this once, then inline sends pause and the
# outbox relay delivers (chalicelib/pipeline/producer.py).  Short for AWS, whose
# SendMessage answers in milliseconds; the local stage sets it higher,
# because LocalStack on a busy machine stalls for longer than that, and
# every stall that outlasts it sends the next seconds of events the slow
# way, through the relay.  Bounded by what a write may cost.
DEFAULT_SQS_SEND_TIMEOUT_SECONDS = 0.5
MAX_SQS_SEND_TIMEOUT_SECONDS = 5.0
# Past a lifetime's end, the expiry sweep waits this long before it looks:
# a key Redis expires a moment late is not checked in vain.
DEFAULT_EXPIRY_GRACE_SECONDS = 60.0
# The shortest SYNC_EVENTS_RETENTION_DAYS: a message for a persisted (session,
# version) may still reach the consumer that long after (the main queue keeps
# a message 4 days, the DLQ 14, a redrive sends it again for 4 more), and the
# consumer needs the row to tell a duplicate from a conflict
# (docs/decisions/audit-retention.md).
MIN_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 100 * 366
# Rows one purge statement scans (and at most deletes): one short transaction
# each, far inside the connection's statement_timeout.
DEFAULT_RETENTION_BATCH = 1000
MAX_RETENTION_BATCH = 10_000
MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 30 * 24 * 3600
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# The RDS CA bundle ships inside the package; `make deploy` fetches it before
# `chalice package` (infra/README.md).  Not in the repository.
DEFAULT_DB_SSL_ROOT_CERT = str(Path(__file__).resolve().parent / "adapters" / "postgres"
                               / "rds-ca-bundle.pem")

_PG_SCHEMES = ("postgres", "postgresql")
_REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False
    redis_timeout: float = 1.0
    redis_secret_arn: str | None = None
    #: ``password`` or ``iam`` (REDIS_AUTH)
    redis_auth: str = "password"
    redis_iam_cache_name: str | None = None
    database_url: str | None = None
    db_secret_arn: str | None = None
    db_host: str | None = None
    #: DB_POOLED: a transaction pooler stands between the functions and PostgreSQL
    db_pooled: bool = False
    db_ssl_root_cert: str = DEFAULT_DB_SSL_ROOT_CERT
    queue_url: str | None = None
    queue_name: str | None = None
    dlq_url: str | None = None
    dlq_name: str | None = None
    #: SESSION_QUEUE_FIFO: the queue and the DLQ are FIFO queues
    queue_fifo: bool = False
    session_ttl: int = DEFAULT_SESSION_TTL
    marker_ttl: int = DEFAULT_MARKER_TTL
    #: IDEMPOTENCY_KEY_TTL_SECONDS: how long a write's Idempotency-Key is remembered
    idempotency_ttl: int = DEFAULT_IDEMPOTENCY_KEY_TTL
    max_state_bytes: int = DEFAULT_MAX_STATE_BYTES
    log_level: str = "INFO"
    aws_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    api_keys_secret_arn: str | None = None
    outbox_relay_age: float = 5.0
    #: the request path's SQS attempt (connect and read timeout), seconds
    sqs_send_timeout: float = DEFAULT_SQS_SEND_TIMEOUT_SECONDS
    #: after Redis went back in time, how long sessions it may hold stale
    #: wait (503) for changes still in the queue to reach PostgreSQL
    redis_settle: float = DEFAULT_REDIS_SETTLE_SECONDS
    channel: str = "session-updates"
    #: SESSION_SLIDE_ON_READ: a GET slides the Redis key's TTL
    slide_on_read: bool = False
    #: SESSION_EXPIRY_GRACE_SECONDS: the sweep looks this long after a lifetime's end
    expiry_grace: float = DEFAULT_EXPIRY_GRACE_SECONDS
    #: PGHOST / PGDATABASE / PGSERVICE is set: libpq's environment names the database
    pg_environment: bool = False
    #: SYNC_EVENTS_RETENTION_DAYS; None: sync_events rows are kept forever
    events_retention_days: int | None = None

    @property
    def has_database(self) -> bool:
        return bool(self.database_url or self.db_secret_arn or self.pg_environment)

    @property
    def has_queue(self) -> bool:
        return bool(self.queue_url or self.queue_name)

    @property
    def has_dlq(self) -> bool:
        return bool(self.dlq_url or self.dlq_name)


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(name, f"must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigurationError(name, f"must be between {lo} and {hi}, got {value}")
    return value


def _marker_ttl(env: Mapping[str, str]) -> int:
    if env.get(SESSION_MARKER_TTL, "").strip() == "0":
        return 0
    return _int(env, SESSION_MARKER_TTL, DEFAULT_MARKER_TTL, 60, 10 * 365 * 24 * 3600)


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(name, f"must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigurationError(name, f"must be between {lo} and {hi}, got {value}")
    return value


def retention_days(env: Mapping[str, str]) -> int | None:
    """SYNC_EVENTS_RETENTION_DAYS: None when unset (keep forever)."""
    raw = env.get(SYNC_EVENTS_RETENTION_DAYS, "").strip()
    if not raw:
        return None
    if re.fullmatch(r"[0-9]+", raw) and int(raw) < MIN_RETENTION_DAYS:
        raise ConfigurationError(SYNC_EVENTS_RETENTION_DAYS, (
            f"must be at least {MIN_RETENTION_DAYS} days, got {raw}: a message may reach the "
            "consumer that long after its row was persisted (docs/decisions/audit-retention.md)"))
    return _int(env, SYNC_EVENTS_RETENTION_DAYS, 0, MIN_RETENTION_DAYS, MAX_RETENTION_DAYS)


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(name, f"must be true or false, got {raw!r}")


def _opt(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def check_queue_names(env: Mapping[str, str], fifo: bool) -> None:
    """A FIFO setting and the queue names given must agree: SQS refuses a
    send without MessageGroupId to a FIFO queue, and one with it to a
    standard queue, so a mismatch would fail every write's send."""
    for name in (SESSION_QUEUE_URL, SESSION_QUEUE_NAME, SESSION_DLQ_URL, SESSION_DLQ_NAME):
        value = _opt(env, name)
        if value is None:
            continue
        if fifo and not value.endswith(FIFO_SUFFIX):
            raise ConfigurationError(name, f"{SESSION_QUEUE_FIFO} is on: the queue's name must end "
                                           f"in {FIFO_SUFFIX}, got {value!r}")
        if not fifo and value.endswith(FIFO_SUFFIX):
            raise ConfigurationError(name, f"names a FIFO queue ({value!r}): set {SESSION_QUEUE_FIFO}=true")


def default_queue_name(fifo: bool) -> str:
    return DEFAULT_QUEUE_NAME + FIFO_SUFFIX if fifo else DEFAULT_QUEUE_NAME


def check_redis_url(url: str, setting: str = REDIS_URL) -> str:
    parts = urlsplit(url)
    if parts.scheme not in _REDIS_SCHEMES:
        raise ConfigurationError(
            setting, f"scheme must be redis://, rediss:// or unix://, got {parts.scheme or 'none'!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigurationError(setting, "has no host")
    try:
        _ = parts.port  # urlsplit parses the port lazily
    except ValueError:
        raise ConfigurationError(setting, "has a port that is not a number") from None
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigurationError(setting, f"database must be a number (redis://host:6379/0), got {db!r}")
    return url


def _redis_auth(env: Mapping[str, str], redis_url: str,
                redis_secret_arn: str | None) -> tuple[str, str | None]:
    """REDIS_AUTH and, for ``iam``, the cache name; IAM tokens are only
    accepted over TLS, and replace any password."""
    mode = (_opt(env, REDIS_AUTH) or "password").lower()
    if mode not in REDIS_AUTH_MODES:
        raise ConfigurationError(REDIS_AUTH, f"must be one of {', '.join(REDIS_AUTH_MODES)}, "
                                             f"got {mode!r}")
    cache_name = _opt(env, REDIS_IAM_CACHE_NAME)
    if mode != "iam":
        return mode, None
    parts = urlsplit(redis_url)
    if parts.scheme != "rediss":
        raise ConfigurationError(REDIS_URL, f"{REDIS_AUTH}=iam needs TLS: use a rediss:// URL "
                                            "(ElastiCache accepts IAM tokens only with in-transit "
                                            "encryption)")
    if parts.password:
        raise ConfigurationError(REDIS_URL, f"with {REDIS_AUTH}=iam the password is a token made at "
                                            "run time: remove the password from the URL")
    if not parts.username:
        raise ConfigurationError(REDIS_URL, f"{REDIS_AUTH}=iam needs the ElastiCache user id as the "
                                            "URL's user name (rediss://user-id@host:6379)")
    if redis_secret_arn:
        raise ConfigurationError(REDIS_SECRET_ARN, f"{REDIS_AUTH}=iam makes its own token: "
                                                   "unset the secret")
    if not cache_name:
        raise ConfigurationError(REDIS_IAM_CACHE_NAME, f"{REDIS_AUTH}=iam needs the replication "
                                                       "group (or serverless cache) id")
    return mode, cache_name


def check_database_url(url: str, setting: str = DATABASE_URL) -> str:
    """Validate a PostgreSQL URL; explain the unescaped-password mistake.

    ``postgresql://app:p@ss/word@db:5432/app`` splits at the wrong ``@`` or
    ``/``: the password must be percent-encoded (``p%40ss%2Fword``).
    """
    parts = urlsplit(url)
    if parts.scheme not in _PG_SCHEMES:
        raise ConfigurationError(
            setting, f"scheme must be postgresql://, got {parts.scheme or 'none'!r}")
    bad = None
    if parts.netloc.count("@") > 1:
        bad = "@"
    elif "@" in parts.path or "@" in parts.query or "@" in parts.fragment:
        bad = "/ or ? or #"  # the password was cut at one of them
    if bad is not None:
        suggestion = _escaped_suggestion(url)
        raise ConfigurationError(
            setting,
            f"the password contains an unescaped {bad!s}: percent-encode it"
            + (f", e.g. {suggestion}" if suggestion else ""),
            suggestion=suggestion)
    try:
        _ = parts.port  # urlsplit parses the port lazily
    except ValueError:
        raise ConfigurationError(
            setting, "port is not a number (an unescaped ':' in the password?)") from None
    if not parts.hostname and not parts.path.strip("/") and "host=" not in parts.query:
        raise ConfigurationError(setting, "has neither host nor database")
    return url


def _escaped_suggestion(url: str) -> str | None:
    """Rebuild ``url`` with its password percent-encoded, password masked."""
    m = re.match(r"^(?P<scheme>[a-z]+)://(?P<user>[^:@/]*):(?P<password>.*)@(?P<rest>[^@]*)$", url)
    if not m:
        return None
    escaped = quote(m["password"], safe="")
    # show where the escapes go without printing the secret itself
    masked = re.sub(r"%[0-9A-F]{2}|.", lambda c: c[0] if len(c[0]) == 3 else "*", escaped)
    return f"{m['scheme']}://{m['user']}:{masked}@{m['rest']}"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the environment (``os.environ`` by default).

    Raises ConfigurationError naming the first bad setting.
    """
    env = os.environ if env is None else env
    redis_url = check_redis_url(env.get(REDIS_URL, "").strip() or Settings.redis_url)
    redis_cluster = _bool(env, REDIS_CLUSTER)
    if redis_cluster and urlsplit(redis_url).path.strip("/") not in ("", "0"):
        raise ConfigurationError(REDIS_URL, "Redis Cluster has only database 0; "
                                            f"remove the /db from the URL (or unset {REDIS_CLUSTER})")
    redis_secret_arn = _opt(env, REDIS_SECRET_ARN)
    redis_auth, redis_iam_cache_name = _redis_auth(env, redis_url, redis_secret_arn)
    if redis_secret_arn and (urlsplit(redis_url).username or urlsplit(redis_url).password):
        raise ConfigurationError(REDIS_SECRET_ARN, "the credentials come from the secret: "
                                                   f"remove user and password from {REDIS_URL}")
    database_url = _opt(env, DATABASE_URL)
    if database_url:
        check_database_url(database_url)
    level = env.get(LOG_LEVEL, "INFO").strip().upper() or "INFO"
    if level not in LOG_LEVELS:
        raise ConfigurationError(LOG_LEVEL, f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    max_state = _int(env, MAX_STATE_BYTES, DEFAULT_MAX_STATE_BYTES, 1, SQS_MESSAGE_LIMIT - 16 * 1024)
    api_keys = tuple(k.strip() for k in env.get(API_KEYS, "").split(",") if k.strip())
    for key in api_keys:
        if len(key) < 16:
            raise ConfigurationError(API_KEYS, "every key must have at least 16 characters")
    queue_fifo = _bool(env, SESSION_QUEUE_FIFO)
    check_queue_names(env, queue_fifo)
    endpoint = _opt(env, AWS_ENDPOINT_URL)
    if endpoint and not urlsplit(endpoint).scheme.startswith("http"):
        raise ConfigurationError(AWS_ENDPOINT_URL, f"must be an http(s) URL, got {endpoint!r}")
    return Settings(
        redis_url=redis_url,
        redis_cluster=redis_cluster,
        redis_timeout=_float(env, REDIS_TIMEOUT, 1.0, 0.05, 30.0),
        redis_secret_arn=redis_secret_arn,
        redis_auth=redis_auth,
        redis_iam_cache_name=redis_iam_cache_name,
        database_url=database_url,
        db_secret_arn=_opt(env, DB_SECRET_ARN),
        db_host=_opt(env, DB_HOST),
        db_pooled=_bool(env, DB_POOLED),
        db_ssl_root_cert=_opt(env, DB_SSL_ROOT_CERT) or DEFAULT_DB_SSL_ROOT_CERT,
        queue_url=_opt(env, SESSION_QUEUE_URL),
        queue_name=_opt(env, SESSION_QUEUE_NAME),
        dlq_url=_opt(env, SESSION_DLQ_URL),
        dlq_name=_opt(env, SESSION_DLQ_NAME),
        queue_fifo=queue_fifo,
        session_ttl=_int(env, SESSION_TTL, DEFAULT_SESSION_TTL, MIN_TTL_SECONDS, MAX_TTL_SECONDS),
        marker_ttl=_marker_ttl(env),
        idempotency_ttl=_int(env, IDEMPOTENCY_KEY_TTL, DEFAULT_IDEMPOTENCY_KEY_TTL,
                             MIN_IDEMPOTENCY_KEY_TTL, MAX_IDEMPOTENCY_KEY_TTL),
        max_state_bytes=max_state,
        log_level=level,
        aws_endpoint_url=endpoint,
        aws_region=(env.get(AWS_REGION) or env.get(AWS_DEFAULT_REGION) or "us-east-1").strip(),
        api_keys=api_keys,
        api_keys_secret_arn=_opt(env, API_KEYS_SECRET_ARN),
        outbox_relay_age=_float(env, OUTBOX_RELAY_AGE, 5.0, 0.0, 3600.0),
        sqs_send_timeout=_float(env, SQS_SEND_TIMEOUT, DEFAULT_SQS_SEND_TIMEOUT_SECONDS, 0.05,
                                MAX_SQS_SEND_TIMEOUT_SECONDS),
        redis_settle=_float(env, REDIS_SETTLE, DEFAULT_REDIS_SETTLE_SECONDS, 0.0, 3600.0),
        channel=env.get(PUBSUB_CHANNEL, "").strip() or "session-updates",
        slide_on_read=_bool(env, SESSION_SLIDE_ON_READ),
        expiry_grace=_float(env, SESSION_EXPIRY_GRACE, DEFAULT_EXPIRY_GRACE_SECONDS, 0.0, 86400.0),
        pg_environment=any(_opt(env, name) for name in PG_ENVIRONMENT),
        events_retention_days=retention_days(env),
    )


def trigger_queue_name(env: Mapping[str, str] | None = None) -> str:
    """The queue name for app.py's ``@app.on_sqs_message`` decorator.

    The one setting read when app.py is imported: Chalice builds the event
    source mapping from the decorator when it packages the app, with the
    stage's environment variables already applied (SESSION_QUEUE_NAME, and
    SESSION_QUEUE_FIFO for the default name).
    """
    env = os.environ if env is None else env
    return _opt(env, SESSION_QUEUE_NAME) or default_queue_name(_bool(env, SESSION_QUEUE_FIFO))


def auth_mode(env: Mapping[str, str] | None = None) -> str:
    """How the session routes authenticate: ``api-key`` (default; the Bearer
    key authorizer) or ``iam`` (API Gateway SigV4, for callers with AWS
    credentials).  Read when app.py is imported, like ``trigger_queue_name``:
    the authorizer is part of the deployed API."""
    env = os.environ if env is None else env
    mode = (_opt(env, AUTH_MODE) or "api-key").lower()
    if mode not in AUTH_MODES:
        raise ConfigurationError(AUTH_MODE, f"must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
    return mode
