"""Configuration: every environment variable sessionsync reads, each declared once.

A setting is one field of ``Settings``, declared with ``_setting``: the
variable's name, its parser (bounds included), its default, and the
``/health`` check a malformed value takes down.  ``load_settings`` reads
them all; ``variables()`` lists them for chalicelib/api/health.py and for
the README's table (tests/unit/test_config.py keeps the two in step).
Values are read at call time, never at import time, and a malformed one
raises ``ConfigurationError`` naming its variable.  Fixed values that no
variable sets: chalicelib/constants.py.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from chalicelib.constants import (
    DEFAULT_QUEUE_NAME,
    FIFO_SUFFIX,
    MAX_RETENTION_DAYS,
    MAX_TTL_SECONDS,
    MIN_RETENTION_DAYS,
    MIN_TTL_SECONDS,
    SQS_MESSAGE_LIMIT,
)
from chalicelib.domain.errors import ConfigurationError, ValidationError
from chalicelib.domain.keys import NO_KEYS, KeySet, parse_keys

# The variables' names, for the modules that name one in a message or read
# it themselves; what each one means is its declaration in ``Settings``.
REDIS_URL = "REDIS_URL"
REDIS_CLUSTER = "REDIS_CLUSTER"
REDIS_TIMEOUT = "REDIS_TIMEOUT"
REDIS_SECRET_ARN = "REDIS_SECRET_ARN"
REDIS_AUTH = "REDIS_AUTH"
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
DB_SSL_ROOT_CERT = "DB_SSL_ROOT_CERT"
SESSION_QUEUE_URL = "SESSION_QUEUE_URL"
SESSION_QUEUE_NAME = "SESSION_QUEUE_NAME"
SESSION_DLQ_URL = "SESSION_DLQ_URL"
SESSION_DLQ_NAME = "SESSION_DLQ_NAME"
SESSION_QUEUE_FIFO = "SESSION_QUEUE_FIFO"
SESSION_TTL = "SESSION_TTL"
TENANT_MAX_SESSIONS = "TENANT_MAX_SESSIONS"
SESSION_MARKER_TTL = "SESSION_MARKER_TTL"
SESSION_SLIDE_ON_READ = "SESSION_SLIDE_ON_READ"
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
REDIS_SETTLE = "REDIS_SETTLE_SECONDS"
REDIS_WAIT_REPLICAS = "REDIS_WAIT_REPLICAS"
REDIS_WAIT_TIMEOUT = "REDIS_WAIT_TIMEOUT_MS"
PUBSUB_CHANNEL = "SESSIONSYNC_CHANNEL"
AUTH_MODE = "SESSIONSYNC_AUTH"
SYNC_EVENTS_RETENTION_DAYS = "SYNC_EVENTS_RETENTION_DAYS"
# libpq's own variables: any of them means "connect with the PG* environment".
PG_ENVIRONMENT = ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDIS_AUTH_MODES = ("password", "iam")
AUTH_MODES = ("api-key", "iam")

T = TypeVar("T")
N = TypeVar("N", int, float)
#: (the variable's value, stripped and not empty; its name) -> the setting
Parser = Callable[[str, str], T]
#: the key of a ``Settings`` field's ``Variable`` in its metadata
_VARIABLE = "sessionsync.variable"


class Variable:
    """One setting's declaration: the environment variable, how its value
    is parsed and checked, its default, and the /health check that a
    malformed value takes down (None: reported as "configuration").

    A plain class, not a dataclass: config is imported on every cold start,
    and a dataclass's generated methods cost more than they give here."""

    __slots__ = ("check", "default", "name", "names", "parse")

    def __init__(self, name: str, parse: Parser[Any], default: Any, check: str | None = None,
                 alternatives: tuple[str, ...] = ()) -> None:
        self.name = name
        self.parse = parse
        self.default = default
        self.check = check
        #: ``name``, then those read in order when it is unset or blank
        #: (AWS_DEFAULT_REGION)
        self.names = (name, *alternatives)

    def __repr__(self) -> str:
        return f"Variable({self.name!r})"

    def read(self, env: Mapping[str, str]) -> Any:
        """The parsed value of the first of ``names`` set to something
        other than blanks, else the default (never parsed)."""
        for name in self.names:
            raw = env.get(name, "").strip()
            if raw:
                return self.parse(raw, name)
        return self.default


def _setting(name: str, parse: Parser[T], default: T, *, check: str | None = None,
             alternatives: tuple[str, ...] = (), secret: bool = False) -> T:
    """A ``Settings`` field declared by its ``Variable``; ``secret`` keeps
    the value out of the repr."""
    return field(default=default, repr=not secret,
                 metadata={_VARIABLE: Variable(name, parse, default, check, alternatives)})


# --- parsers: (raw, name) -> value, or ConfigurationError naming the variable --

def _text(raw: str, name: str) -> str:
    return raw


def _flag(raw: str, name: str) -> bool:
    value = raw.lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(name, f"must be true or false, got {value!r}")


def _bounded(kind: type[N], lo: N, hi: N) -> Parser[N]:
    """An ``int`` or ``float`` between ``lo`` and ``hi`` (inclusive)."""
    what = "an integer" if kind is int else "a number"

    def parse(raw: str, name: str) -> N:
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigurationError(name, f"must be {what}, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ConfigurationError(name, f"must be between {lo} and {hi}, got {value}")
        return value
    return parse


def _one_of(choices: tuple[str, ...], normalise: Callable[[str], str]) -> Parser[str]:
    def parse(raw: str, name: str) -> str:
        value = normalise(raw)
        if value not in choices:
            raise ConfigurationError(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value
    return parse


def _marker_ttl(raw: str, name: str) -> int:
    """0 (never expires), or seconds: at least a minute, at most ten years."""
    return 0 if raw == "0" else _bounded(int, 60, 10 * 365 * 24 * 3600)(raw, name)


def _retention_days(raw: str, name: str) -> int:
    if re.fullmatch(r"[0-9]+", raw) and int(raw) < MIN_RETENTION_DAYS:
        raise ConfigurationError(name, (
            f"must be at least {MIN_RETENTION_DAYS} days, got {raw}: a message may reach the "
            "consumer that long after its row was persisted (docs/decisions/audit-retention.md)"))
    return _bounded(int, MIN_RETENTION_DAYS, MAX_RETENTION_DAYS)(raw, name)


def _api_keys(raw: str, name: str) -> KeySet:
    """Key records as JSON (chalicelib/domain/keys.py), or plaintext keys,
    comma separated (deprecated)."""
    try:
        return parse_keys(raw)
    except ValidationError as exc:
        raise ConfigurationError(name, exc.message) from None


def _http_url(raw: str, name: str) -> str:
    if not urlsplit(raw).scheme.startswith("http"):
        raise ConfigurationError(name, f"must be an http(s) URL, got {raw!r}")
    return raw


def check_redis_url(url: str, setting: str = REDIS_URL) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
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


def check_database_url(url: str, setting: str = DATABASE_URL) -> str:
    """Validate a PostgreSQL URL; explain the unescaped-password mistake.

    ``postgresql://app:p@ss/word@db:5432/app`` splits at the wrong ``@`` or
    ``/``: the password must be percent-encoded (``p%40ss%2Fword``).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
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


# The RDS CA bundle ships inside the package; `make deploy` fetches it before
# `chalice package` (infra/README.md).  Not in the repository.
_PACKAGED_CA_BUNDLE = str(Path(__file__).resolve().parent / "adapters" / "postgres" / "rds-ca-bundle.pem")


@dataclass(frozen=True)
class Settings:
    """The settings, typed and checked.  A field's default (``Settings.session_ttl``)
    is the setting's default; tests build one directly."""

    redis_url: str = _setting(REDIS_URL, check_redis_url, "redis://127.0.0.1:6379/0", check="redis")
    redis_cluster: bool = _setting(REDIS_CLUSTER, _flag, False, check="redis")
    #: connect and socket timeout, seconds: a dead Redis is a 503 within it
    redis_timeout: float = _setting(REDIS_TIMEOUT, _bounded(float, 0.05, 30.0), 1.0, check="redis")
    #: a Secrets Manager secret holding the Redis password (and user name),
    #: read when a connection authenticates, so a rotated password is
    #: picked up on the next connection
    redis_secret_arn: str | None = _setting(REDIS_SECRET_ARN, _text, None)
    #: ``password`` (the URL's or REDIS_SECRET_ARN's) or ``iam``
    #: (ElastiCache IAM: a SigV4 token made from the Lambda role's
    #: credentials, for the user named in REDIS_URL)
    redis_auth: str = _setting(REDIS_AUTH, _one_of(REDIS_AUTH_MODES, str.lower), "password")
    #: the replication group (or serverless cache) id IAM tokens are signed
    #: for: not the endpoint's host name, which AWS does not accept there
    redis_iam_cache_name: str | None = _setting(REDIS_IAM_CACHE_NAME, _text, None)
    database_url: str | None = _setting(DATABASE_URL, check_database_url, None, check="postgresql")
    db_secret_arn: str | None = _setting(DB_SECRET_ARN, _text, None, check="postgresql")
    db_host: str | None = _setting(DB_HOST, _text, None, check="postgresql")
    #: a transaction pooler stands between the functions and PostgreSQL
    #: (chalicelib/adapters/postgres/connection.py: ``connect``)
    db_pooled: bool = _setting(DB_POOLED, _flag, False, check="postgresql")
    #: the CA bundle that verifies the database server's certificate when
    #: the connection comes from DB_SECRET_ARN (sslmode=verify-full)
    db_ssl_root_cert: str = _setting(DB_SSL_ROOT_CERT, _text, _PACKAGED_CA_BUNDLE)
    queue_url: str | None = _setting(SESSION_QUEUE_URL, _text, None, check="queue")
    queue_name: str | None = _setting(SESSION_QUEUE_NAME, _text, None, check="queue")
    dlq_url: str | None = _setting(SESSION_DLQ_URL, _text, None, check="dlq")
    dlq_name: str | None = _setting(SESSION_DLQ_NAME, _text, None, check="dlq")
    #: FIFO queues: every message carries its session id as MessageGroupId
    #: and its event id as deduplication id (chalicelib/pipeline/producer.py)
    queue_fifo: bool = _setting(SESSION_QUEUE_FIFO, _flag, False)
    session_ttl: int = _setting(SESSION_TTL, _bounded(int, MIN_TTL_SECONDS, MAX_TTL_SECONDS), 3600)
    #: the live sessions a tenant may have at once (a create past it: 429
    #: with Retry-After); 0: no cap, and no count kept (chalicelib/service/tenants.py)
    tenant_max_sessions: int = _setting(TENANT_MAX_SESSIONS, _bounded(int, 0, 1_000_000_000), 0)
    #: how long the version marker outlives its session (recovery never
    #: serves an older version, a deleted id is never reused): 0, never, so
    #: that no volatile-* eviction policy can take it; seconds bound its
    #: memory under noeviction (docs/decisions/version-markers.md)
    marker_ttl: int = _setting(SESSION_MARKER_TTL, _marker_ttl, 0)
    #: how long a write's Idempotency-Key is remembered: at least a day, so
    #: that a client's retries of a write whose answer it lost, however
    #: patient, find it
    idempotency_ttl: int = _setting(IDEMPOTENCY_KEY_TTL, _bounded(int, 24 * 3600, 30 * 24 * 3600),
                                    24 * 3600)
    #: 16 KiB below SQS's limit: the change event carries more than the state
    max_state_bytes: int = _setting(MAX_STATE_BYTES, _bounded(int, 1, SQS_MESSAGE_LIMIT - 16 * 1024),
                                    256 * 1024)
    log_level: str = _setting(LOG_LEVEL, _one_of(LOG_LEVELS, str.upper), "INFO")
    aws_endpoint_url: str | None = _setting(AWS_ENDPOINT_URL, _http_url, None)
    aws_region: str = _setting(AWS_REGION, _text, "us-east-1", alternatives=(AWS_DEFAULT_REGION,))
    #: key records (or plaintext keys, deprecated; a tuple of them is taken too)
    api_keys: KeySet | tuple[str, ...] = _setting(API_KEYS, _api_keys, NO_KEYS, secret=True)  # noqa: RUF009
    api_keys_secret_arn: str | None = _setting(API_KEYS_SECRET_ARN, _text, None)
    #: besides what its wake-ups bring, the relay's sweeps send outbox
    #: entries older than this, seconds (chalicelib/pipeline/outbox.py)
    outbox_relay_age: float = _setting(OUTBOX_RELAY_AGE, _bounded(float, 0.0, 3600.0), 5.0)
    #: after Redis went back in time, how long sessions it may hold stale
    #: wait (503) for changes still in the queue to reach PostgreSQL: longer
    #: than the pipeline's usual lag (chalicelib/service/sessions.py, "settle")
    redis_settle: float = _setting(REDIS_SETTLE, _bounded(float, 0.0, 3600.0), 10.0)
    #: a write is acknowledged only once this many replicas have it (Redis
    #: WAIT after the write's script); 0, off: acknowledged once the primary
    #: has it.  Not on a cluster endpoint (docs/decisions/failover-evidence.md)
    redis_wait_replicas: int = _setting(REDIS_WAIT_REPLICAS, _bounded(int, 0, 5), 0)
    #: how long a write waits for them: past it the write is committed on
    #: the primary but not confirmed, a 503 of unknown outcome.  Within the
    #: one-second budget of a 503
    redis_wait_timeout_ms: int = _setting(REDIS_WAIT_TIMEOUT, _bounded(int, 1, 1000), 200)
    channel: str = _setting(PUBSUB_CHANNEL, _text, "session-updates")
    #: a GET gives the Redis key its full TTL again.  Only Redis sees it:
    #: the lifetime PostgreSQL knows, and recovery honours, moves with
    #: writes alone (docs/decisions/session-lifetime.md)
    slide_on_read: bool = _setting(SESSION_SLIDE_ON_READ, _flag, False)
    #: the expiry sweep looks at sessions whose lifetime ended at least this
    #: long ago, so that a key Redis expires a moment late is not checked in
    #: vain (chalicelib/pipeline/expiry.py)
    expiry_grace: float = _setting(SESSION_EXPIRY_GRACE, _bounded(float, 0.0, 86400.0), 60.0)
    #: libpq's environment names the database (PGHOST, PGDATABASE...)
    pg_environment: bool = _setting(PG_ENVIRONMENT[0], lambda raw, name: True, False,
                                    alternatives=PG_ENVIRONMENT[1:])
    #: days a sync_events row is kept after it was persisted; None: forever.
    #: The scheduled purge keeps every session's latest row whatever its age
    #: (chalicelib/pipeline/retention.py, docs/decisions/audit-retention.md)
    events_retention_days: int | None = _setting(SYNC_EVENTS_RETENTION_DAYS, _retention_days, None)

    @property
    def has_database(self) -> bool:
        return bool(self.database_url or self.db_secret_arn or self.pg_environment)

    @property
    def has_queue(self) -> bool:
        return bool(self.queue_url or self.queue_name)

    @property
    def has_dlq(self) -> bool:
        return bool(self.dlq_url or self.dlq_name)


#: How the session routes authenticate: ``api-key`` (the Bearer key
#: authorizer) or ``iam`` (API Gateway SigV4, for callers with AWS
#: credentials).  Not a ``Settings`` field: app.py reads it on import.
_AUTH_MODE = Variable(AUTH_MODE, _one_of(AUTH_MODES, str.lower), "api-key")


def _declared() -> dict[str, Variable]:
    """Each ``Settings`` field's declaration, in field order."""
    return {f.name: f.metadata[_VARIABLE] for f in fields(Settings)}


def variables() -> tuple[Variable, ...]:
    """Every environment variable sessionsync reads, declared."""
    return (*_declared().values(), _AUTH_MODE)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check the environment (``os.environ`` by default).

    Raises ConfigurationError naming the first bad setting, in declaration
    order, then the first of the settings that contradict each other.
    """
    env = os.environ if env is None else env
    settings = Settings(**{name: variable.read(env) for name, variable in _declared().items()})
    _check_redis(settings)
    _check_queue_names(settings)
    if settings.redis_auth != "iam":
        return replace(settings, redis_iam_cache_name=None)
    return settings


def _check_redis(s: Settings) -> None:
    parts = urlsplit(s.redis_url)
    if s.redis_cluster and parts.path.strip("/") not in ("", "0"):
        raise ConfigurationError(REDIS_URL, "Redis Cluster has only database 0; "
                                            f"remove the /db from the URL (or unset {REDIS_CLUSTER})")
    if s.redis_auth == "iam":
        # IAM tokens are only accepted over TLS, and replace any password
        if parts.scheme != "rediss":
            raise ConfigurationError(REDIS_URL, f"{REDIS_AUTH}=iam needs TLS: use a rediss:// URL "
                                                "(ElastiCache accepts IAM tokens only with in-transit "
                                                "encryption)")
        if parts.password:
            raise ConfigurationError(REDIS_URL, f"with {REDIS_AUTH}=iam the password is a token made "
                                                "at run time: remove the password from the URL")
        if not parts.username:
            raise ConfigurationError(REDIS_URL, f"{REDIS_AUTH}=iam needs the ElastiCache user id as "
                                                "the URL's user name (rediss://user-id@host:6379)")
        if s.redis_secret_arn:
            raise ConfigurationError(REDIS_SECRET_ARN, f"{REDIS_AUTH}=iam makes its own token: "
                                                       "unset the secret")
        if not s.redis_iam_cache_name:
            raise ConfigurationError(REDIS_IAM_CACHE_NAME, f"{REDIS_AUTH}=iam needs the replication "
                                                           "group (or serverless cache) id")
    if s.redis_cluster and s.redis_wait_replicas:
        raise ConfigurationError(REDIS_WAIT_REPLICAS, "is not available on a cluster endpoint: "
                                                      f"unset it (or {REDIS_CLUSTER})")
    if s.redis_secret_arn and (parts.username or parts.password):
        raise ConfigurationError(REDIS_SECRET_ARN, "the credentials come from the secret: "
                                                   f"remove user and password from {REDIS_URL}")


def _check_queue_names(s: Settings) -> None:
    """A FIFO setting and the queue names given must agree: SQS refuses a
    send without MessageGroupId to a FIFO queue, and one with it to a
    standard queue, so a mismatch would fail every write's send."""
    for name, value in ((SESSION_QUEUE_URL, s.queue_url), (SESSION_QUEUE_NAME, s.queue_name),
                        (SESSION_DLQ_URL, s.dlq_url), (SESSION_DLQ_NAME, s.dlq_name)):
        if value is None:
            continue
        if s.queue_fifo and not value.endswith(FIFO_SUFFIX):
            raise ConfigurationError(name, f"{SESSION_QUEUE_FIFO} is on: the queue's name must end "
                                           f"in {FIFO_SUFFIX}, got {value!r}")
        if not s.queue_fifo and value.endswith(FIFO_SUFFIX):
            raise ConfigurationError(name, f"names a FIFO queue ({value!r}): set {SESSION_QUEUE_FIFO}=true")


def default_queue_name(fifo: bool) -> str:
    return DEFAULT_QUEUE_NAME + FIFO_SUFFIX if fifo else DEFAULT_QUEUE_NAME


def trigger_queue_name(env: Mapping[str, str] | None = None) -> str:
    """The queue name for app.py's ``@app.on_sqs_message`` decorator.

    Read when app.py is imported: Chalice builds the event source mapping
    from the decorator when it packages the app, with the stage's
    environment already applied (SESSION_QUEUE_NAME, and SESSION_QUEUE_FIFO
    for the default name).  Only these two settings, so that another
    malformed one fails a request, not the import.
    """
    env = os.environ if env is None else env
    declared = _declared()
    return (declared["queue_name"].read(env)
            or default_queue_name(declared["queue_fifo"].read(env)))


def auth_mode(env: Mapping[str, str] | None = None) -> str:
    """SESSIONSYNC_AUTH, read when app.py is imported, like
    ``trigger_queue_name``: the authorizer is part of the deployed API."""
    return str(_AUTH_MODE.read(os.environ if env is None else env))
