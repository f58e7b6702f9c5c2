"""Composition root: builds the clients and services once per process.

Lambda reuses a warm process, so the Redis client, its registered scripts,
the SQS client and the PostgreSQL connection are built on first use and
kept.  Nothing connects at import time (cold start), and nothing else in
chalicelib reads this module: domain code takes its clients as arguments.
``reset()`` drops everything (tests, and the CLI after changing settings).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from chalicelib.config import SESSION_QUEUE_URL, Settings, load_settings
from chalicelib.constants import (
    SCHEDULE_MARGIN_SECONDS,
    SCHEDULE_MIN_BUDGET_SECONDS,
    SCHEDULE_REMAINING_WITHOUT_CONTEXT,
)

if TYPE_CHECKING:  # the builders import these on first use (cold start)
    from chalicelib.adapters.aws import Budget
    from chalicelib.adapters.postgres.database import Database
    from chalicelib.adapters.postgres.migrations import DeployStep
    from chalicelib.adapters.redis.client import RedisClient
    from chalicelib.adapters.redis.store import SessionStore
    from chalicelib.adapters.redis.tenant_counts import TenantCounts
    from chalicelib.api.auth import ApiKeys
    from chalicelib.api.health import Probe
    from chalicelib.domain.keys import Caller
    from chalicelib.pipeline.consumer import Consumer
    from chalicelib.pipeline.dead_letters import DeadLetterQueue
    from chalicelib.pipeline.expiry import ExpirySweep
    from chalicelib.pipeline.outbox import OutboxRelay
    from chalicelib.pipeline.producer import SqsProducer
    from chalicelib.pipeline.retention import PurgeReport
    from chalicelib.service.sessions import SessionService
    from chalicelib.service.tenants import TenantSessions

T = TypeVar("T")
_lock = threading.RLock()
_cache: dict[str, Any] = {}


_building: dict[str, threading.RLock] = {}
#: the AWS clients' budget when not the request path's (``use_aws_budget``)
_aws_budget: Budget | None = None
#: the objects built on that budget
_AWS_CLIENTS = ("sqs", "secretsmanager")


def _once(name: str, build: Callable[[], T]) -> T:
    try:
        return _cache[name]
    except KeyError:
        pass
    # One lock per object, so that a builder doing I/O (a queue URL lookup,
    # a secret) does not hold up building the others (health probes build
    # their clients in parallel threads against a one-second deadline).
    with _lock:
        lock = _building.setdefault(name, threading.RLock())
    with lock:
        if name not in _cache:
            _cache[name] = build()
        return _cache[name]


def reset() -> None:
    with _lock:
        db = _cache.pop("database", None)
        if db is not None:
            db.close()
        _cache.clear()


def use_aws_budget(budget: Budget) -> None:
    """Build the AWS clients on ``budget`` from now on, not the request
    path's (``aws.REQUEST_BUDGET``): an operator's command is no request
    (``sessionsync.cli``).  The Lambda functions never call this."""
    global _aws_budget
    with _lock:
        _aws_budget = budget
        for name in _AWS_CLIENTS:
            _cache.pop(name, None)


def _aws_client(service: str) -> Any:
    from chalicelib.adapters import aws
    return aws.client(service, settings(), budget=_aws_budget or aws.REQUEST_BUDGET)


def install(**objects: Any) -> None:
    """Use these objects instead of building them (``settings=``, ``redis=``...).

    For tests and the CLI: e.g. ``install(settings=Settings(...))`` before the
    first request makes every later builder use those settings.
    """
    with _lock:
        _cache.update(objects)


def settings() -> Settings:
    return _once("settings", load_settings)


def redis() -> RedisClient:
    from chalicelib.adapters.redis.client import connect_redis
    from chalicelib.observability.tracing import instrument_redis
    # instrument_redis is a no-op unless LOG_LEVEL=DEBUG (each command timed)
    s = settings()
    return _once("redis", lambda: instrument_redis(connect_redis(
        s, secrets_client() if s.redis_secret_arn else None)))


def store() -> SessionStore:
    from chalicelib.adapters.redis.store import SessionStore
    s = settings()
    return _once("store", lambda: SessionStore(redis(), marker_ttl=s.marker_ttl, channel=s.channel,
                                                    idempotency_ttl=s.idempotency_ttl,
                                                    wait_replicas=s.redis_wait_replicas,
                                                    wait_timeout_ms=s.redis_wait_timeout_ms))


def sqs() -> Any:
    return _once("sqs", lambda: _aws_client("sqs"))


def queue_url() -> str:
    from chalicelib.adapters import aws
    s = settings()
    return _once("queue_url", lambda: aws.queue_url(_OnFirstUse(sqs), s.queue_url, s.queue_name,
                                                     SESSION_QUEUE_URL))


def dlq_url() -> str:
    from chalicelib.adapters import aws
    from chalicelib.config import SESSION_DLQ_URL
    s = settings()
    # the client is built only if the URL must be looked up by name
    return _once("dlq_url", lambda: aws.queue_url(_OnFirstUse(sqs), s.dlq_url, s.dlq_name,
                                                   SESSION_DLQ_URL))


def database() -> Database | None:
    """The PostgreSQL adapter (one connection, reused while warm), or None."""
    if not settings().has_database:
        return None
    from chalicelib.adapters.postgres import database as persistence
    return _once("database", lambda: persistence.Database.from_settings(settings(), secrets_client))


def dead_letters() -> DeadLetterQueue:
    """The DLQ sender: built when the first poison record needs it."""
    from chalicelib.pipeline.dead_letters import DeadLetterQueue
    return _once("dead_letters", lambda: DeadLetterQueue(sqs(), dlq_url(), fifo=settings().queue_fifo))


def consumer() -> Consumer:
    """The SQS consumer (database + DLQ sender) the Lambda handler calls.

    A batch without poison needs neither the DLQ nor a delete, so their
    SQS client (boto3's import and a client) is built on first use
    (``sessionsync bench --sections coldstart``, consumer_first_batch).  A
    missing DLQ setting still fails the first batch, as the DLQ's URL is
    resolved here whenever that needs no SQS call.
    """
    from chalicelib.config import DATABASE_URL
    from chalicelib.domain.errors import ConfigurationError
    from chalicelib.pipeline.consumer import Consumer, SqsRecordSource

    def build() -> Consumer:
        db = database()
        if db is None:
            raise ConfigurationError(DATABASE_URL, "the consumer needs a database "
                                     "(DATABASE_URL, DB_SECRET_ARN or PG* variables)")
        s = settings()
        if s.dlq_url or not s.dlq_name:
            dlq_url()  # the URL given, or the ConfigurationError naming the setting
        return Consumer(db, cast("DeadLetterQueue", _OnFirstUse(dead_letters)),
                        SqsRecordSource(_OnFirstUse(sqs), queue_url))
    return _once("consumer", build)


def relay() -> OutboxRelay:
    """The outbox relay the scheduled function runs: the store, the
    producer, the lease and the wake-ups (the change events on the store's
    Pub/Sub channel, on a connection of their own per run)."""
    from chalicelib.adapters.redis.lease import RelayLease
    from chalicelib.adapters.redis.subscription import Subscription
    from chalicelib.constants import RELAY_LEASE_SECONDS, RELAY_SENDERS
    from chalicelib.pipeline.outbox import LEASE_POLL_SECONDS, OutboxRelay
    s = settings()
    return _once("relay", lambda: OutboxRelay(
        store(), _OnFirstUse(relay_producer), age_seconds=s.outbox_relay_age,
        lease=RelayLease(redis(), ttl_seconds=RELAY_LEASE_SECONDS, poll_seconds=LEASE_POLL_SECONDS),
        listen=lambda: Subscription(redis(), s.channel), senders=RELAY_SENDERS))


def purge_events(budget_seconds: float | None = None) -> PurgeReport:
    """One run of the audit retention purge (``chalicelib.pipeline.retention``)
    with the settings' SYNC_EVENTS_RETENTION_DAYS; nothing when it is unset
    or there is no database."""
    from chalicelib.pipeline import retention
    s = settings()
    db = database()
    if db is None or s.events_retention_days is None:
        return retention.PurgeReport(None, complete=True)
    return retention.purge_events(db, s.events_retention_days, budget_seconds=budget_seconds)


def relay_producer() -> SqsProducer:
    from chalicelib.pipeline.producer import SqsProducer
    # on the patient client: it sends batches of up to 1 MiB, several at
    # once (RELAY_SENDERS, below the client's pool), and has a schedule's
    # time, not a request's
    return _once("relay_producer", lambda: SqsProducer(sqs(), queue_url(), store(),
                                                       fifo=settings().queue_fifo))


def secrets_client() -> Any:
    return _once("secretsmanager", lambda: _aws_client("secretsmanager"))


def api_keys() -> ApiKeys:
    from chalicelib.api.auth import ApiKeys
    s = settings()
    return _once("api_keys", lambda: ApiKeys(
        s.api_keys, secret_arn=s.api_keys_secret_arn,
        secrets_client=secrets_client() if s.api_keys_secret_arn else None))


class _OnFirstUse:
    """Stands in for an object that is built by ``build`` on first attribute use.

    The service needs PostgreSQL only to recover or list history, the relay
    its SQS producer only once it has something to send; building them up
    front put psycopg or boto3 on every cold start (docs/performance.md,
    "Cold start").
    """

    __slots__ = ("_build",)

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build

    def __getattr__(self, name: str) -> Any:
        return getattr(self._build(), name)


def service() -> SessionService:
    from chalicelib.service.sessions import SessionService
    s = settings()
    return _once("service", lambda: SessionService(
        store(), durable=_OnFirstUse(database) if s.has_database else None, default_ttl=s.session_ttl,
        settle_seconds=s.redis_settle, slide_on_read=s.slide_on_read))


def sessions(caller: Caller) -> TenantSessions:
    """The service as the caller's tenant sees it (its ids, its sessions)."""
    from chalicelib.service.tenants import TenantSessions
    cap = settings().tenant_max_sessions
    return TenantSessions(service(), caller.tenant, counts=tenant_counts() if cap else None,
                          max_sessions=cap)


def tenant_counts() -> TenantCounts:
    from chalicelib.adapters.redis.tenant_counts import TenantCounts
    return _once("tenant_counts", lambda: TenantCounts(redis()))


def expiry_sweep() -> ExpirySweep:
    """The expiry sweep (store, PostgreSQL, producer) the scheduled function calls."""
    from chalicelib.config import DATABASE_URL
    from chalicelib.domain.errors import ConfigurationError
    from chalicelib.pipeline.expiry import ExpirySweep

    def build() -> ExpirySweep:
        s = settings()
        db = database()
        if db is None:
            raise ConfigurationError(DATABASE_URL, "the expiry sweep needs a database "
                                     "(DATABASE_URL, DB_SECRET_ARN or PG* variables)")
        return ExpirySweep(store(), db, publisher=_OnFirstUse(relay_producer) if s.has_queue else None,
                           settle_seconds=s.redis_settle, grace_seconds=s.expiry_grace)
    return _once("expiry_sweep", build)


def schema_migrations() -> DeployStep:
    """The deploy's migration step: the database from DATABASE_URL or
    DB_SECRET_ARN (the instance itself, not DB_HOST's proxy: the function
    that runs it is configured without DB_HOST)."""
    from chalicelib.adapters.cfn_response import respond
    from chalicelib.adapters.postgres.connection import resolve_dsn
    from chalicelib.adapters.postgres.migrations import DeployStep
    return _once("schema_migrations", lambda: DeployStep(
        lambda: resolve_dsn(settings(), secrets_client), respond, pooled=settings().db_pooled))


def health_probes() -> dict[str, Probe]:
    """name -> probe for every configured dependency (chalicelib.api.health).

    Each probe builds its client inside the deadline (a cluster client
    connects as it is built); one lock per object (``_once``) keeps a
    probe blocked on another builder's I/O from holding up the others.
    """
    from chalicelib.api import health
    s = settings()
    probes: dict[str, Probe] = {"redis": health.redis_probe(store)}
    if s.has_database:
        probes["postgresql"] = health.postgres_probe(database)
    if s.has_queue:
        probes["queue"] = health.queue_probe(sqs, queue_url)
    if s.has_dlq:
        probes["dlq"] = health.dlq_probe(sqs, dlq_url)
    return probes


def schedule_budget(context: Any) -> float:
    """The seconds a scheduled run (relay, expiry sweep, retention purge)
    may take: until a margin before its invocation's timeout, so that it
    stops between batches instead of being killed in one."""
    remaining = (context.get_remaining_time_in_millis() / 1000 if context
                 else SCHEDULE_REMAINING_WITHOUT_CONTEXT)
    return max(SCHEDULE_MIN_BUDGET_SECONDS, remaining - SCHEDULE_MARGIN_SECONDS)
