"""Dependency health, CloudWatch style: one status, and per dependency a
status and a latency.  Shared by ``GET /health`` and ``sessionsync health``.

Report shape (``HealthReport.to_dict``)::

    {"status": "ok" | "degraded" | "down",
     "checks": {"redis":      {"status": "ok", "latency_ms": 0.21},
                "postgresql": {"status": "ok", "latency_ms": 0.9},
                "queue":      {"status": "ok", "latency_ms": 4.1,
                               "waiting": 0, "in_flight": 0, "delayed": 0},
                "dlq":        {"status": "ok", "latency_ms": 3.8, "depth": 2,
                               "warning": "2 messages could not be persisted: ..."}},
     "warnings": ["dlq: 2 messages could not be persisted: ..."]}   # only when any

Only configured dependencies appear (``chalicelib.runtime.health_probes``).
"degraded" (still HTTP 200) is Redis down while PostgreSQL and the rest
answer: only reads that accept a stale copy are served (``HealthReport.degraded``).
A non-empty DLQ is a warning, not an outage: the service still works, and
the alarm on the DLQ depth is what pages someone.

Probes run in parallel threads with one deadline, so a hung dependency
makes the report say "down" within about a second instead of hanging the
Lambda.

``/health`` answers without credentials, so a report says which dependency
is down and why in words chosen here, never in the error's own text (which
carries host names, users, database names, account ids, ARNs and queue
URLs): ``describe`` maps the error's class or code to a fixed phrase, such
as "PostgreSQL unreachable", "SQS access denied", "SQS queue does not
exist" or "configuration error: DATABASE_URL is malformed", and anything
it does not know to "<dependency> failed".  The full error goes to the log.
"""
from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from chalicelib import config
from chalicelib.config import SESSION_DLQ_URL
from chalicelib.domain.errors import ConfigurationError, ServiceUnavailable, SessionSyncError

Probe = Callable[[], Mapping[str, Any]]
DEADLINE_SECONDS = 1.0
# Sized so that a few overlapping checks against a hung dependency (each
# probe thread stays blocked until its client's own timeout) do not starve
# the probes of the healthy ones.
_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="health")

#: a probe may return this key to flag a problem that is not an outage
WARNING = "warning"
#: a probe may return the dependency's own round trip (ms) under this key
LATENCY = "latency_ms"

log = logging.getLogger("sessionsync.health")

# --- what a report may say about an error ------------------------------------

_LABELS = {"redis": "Redis", "postgresql": "PostgreSQL", "sqs": "SQS",
           "secretsmanager": "Secrets Manager"}
#: the dependency behind each check, when the check is not named after it
_CHECK_DEPENDENCY = {"queue": "sqs", "dlq": "sqs"}
#: the settings a ConfigurationError may name in a report: config's variables
_SETTINGS = frozenset(name for variable in config.variables() for name in variable.names)
#: the check a broken setting stops (when the settings cannot even be loaded)
_SETTING_CHECK = {name: variable.check for variable in config.variables() if variable.check
                  for name in variable.names}

_ACCESS_DENIED = "access denied"
_AWS_CODES = {
    **dict.fromkeys(("AccessDenied", "AccessDeniedException", "AuthorizationError",
                     "UnauthorizedOperation", "KMSAccessDeniedException"), _ACCESS_DENIED),
    **dict.fromkeys(("InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
                     "InvalidSignatureException", "IncompleteSignature", "ExpiredToken",
                     "ExpiredTokenException", "MissingAuthenticationToken"),
                    "refused the credentials"),
    **dict.fromkeys(("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist",
                     "NonExistentQueue"), "queue does not exist"),
    "ResourceNotFoundException": "secret does not exist",
    "DecryptionFailure": "cannot decrypt the secret",
    **dict.fromkeys(("Throttling", "ThrottlingException", "RequestThrottled",
                     "TooManyRequestsException", "RequestLimitExceeded"), "throttled"),
    **dict.fromkeys(("ServiceUnavailable", "InternalFailure", "InternalError",
                     "InternalServiceError"), "unavailable"),
}
_AWS_STATUS = {403: _ACCESS_DENIED, 404: "does not exist", 429: "throttled"}
#: the service behind an AWS operation, when it is not the check's own
_AWS_OPERATION_DEPENDENCY = {"GetSecretValue": "secretsmanager"}

_REDIS_RESPONSES = (  # (redis-py class name, phrase), most specific first
    ("NoPermissionError", "permission denied (ACL)"),
    ("AuthenticationWrongNumberOfArgsError", "refused the credentials"),
    ("ReadOnlyError", "read-only (a replica)"),
    ("OutOfMemoryError", "out of memory"),
    ("MasterDownError", "primary down"),
    ("ClusterDownError", "cluster down"),
    ("TryAgainError", "cluster resharding"),
    ("ResponseError", "refused the command"),
)
# libpq reports a failed connection without a SQLSTATE; its message is
# matched here only to choose one of these phrases, never shown
_LIBPQ_FAILURES = (
    ("timeout expired", "timed out"),
    ("authentication failed", "refused the credentials"),
    ("no pg_hba.conf entry", "refused the credentials"),
    ("does not exist", "database does not exist"),
    ("starting up", "starting up"),
    ("shutting down", "shutting down"),
    ("too many clients", "too many connections"),
    ("remaining connection slots", "too many connections"),
)
_PG_SQLSTATES = {"28P01": "refused the credentials", "28000": "refused the credentials",
                 "3D000": "database does not exist", "57P01": "shutting down",
                 "57P02": "shutting down", "57P03": "starting up",
                 "53300": "too many connections", "57014": "timed out",
                 "25006": "read-only (a standby)"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it, then what caused that..."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _aws_reason(exc: BaseException) -> tuple[str, str | None] | None:
    from botocore import exceptions as boto

    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        reason = _AWS_CODES.get(str(error.get("Code", ""))) or _AWS_STATUS.get(status)
        if reason is None:
            reason = "unavailable" if isinstance(status, int) and status >= 500 else "refused the request"
        return reason, _AWS_OPERATION_DEPENDENCY.get(exc.operation_name)
    if isinstance(exc, (boto.ConnectTimeoutError, boto.ReadTimeoutError)):
        return "timed out", None
    if isinstance(exc, (boto.EndpointConnectionError, boto.ConnectionClosedError)):
        return "unreachable", None
    if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError)):
        return "no AWS credentials", None
    if isinstance(exc, boto.BotoCoreError):
        return "unavailable", None
    return None


def _redis_reason(exc: BaseException) -> str | None:
    from redis import exceptions as r

    if isinstance(exc, r.TimeoutError):
        return "timed out"
    if isinstance(exc, r.AuthenticationError):
        return "refused the credentials"
    if isinstance(exc, r.BusyLoadingError):
        return "loading its data"
    if isinstance(exc, r.ConnectionError):
        return "unreachable"
    if isinstance(exc, r.RedisClusterException):
        return "unreachable"
    for name, phrase in _REDIS_RESPONSES:
        if isinstance(exc, getattr(r, name)):
            return phrase
    return "failed" if isinstance(exc, r.RedisError) else None


def _postgres_reason(exc: BaseException) -> str | None:
    import psycopg

    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        return "timed out"
    if not isinstance(exc, psycopg.Error):
        return None
    if exc.sqlstate in _PG_SQLSTATES:
        return _PG_SQLSTATES[exc.sqlstate]
    if isinstance(exc, psycopg.OperationalError) and not exc.sqlstate:
        text = str(exc)
        for fragment, phrase in _LIBPQ_FAILURES:
            if fragment in text:
                return phrase
        return "unreachable"
    if isinstance(exc, psycopg.ProgrammingError) and not exc.sqlstate:
        return "connection settings are malformed"  # libpq refused the conninfo
    return "refused the query"


def _vendor_reason(exc: BaseException) -> tuple[str, str | None] | None:
    """(phrase, dependency or None) for a vendor error sessionsync knows."""
    module = type(exc).__module__.split(".", 1)[0]
    if module == "botocore":
        return _aws_reason(exc)
    if module == "redis":
        reason = _redis_reason(exc)
    elif module == "psycopg":
        reason = _postgres_reason(exc)
    else:
        return None
    return (reason, None) if reason else None


def _config_phrase(exc: ConfigurationError) -> str:
    if exc.setting in _SETTINGS:
        return f"configuration error: {exc.setting} is malformed"
    return "configuration error"


def describe(exc: BaseException, dependency: str) -> str:
    """Why ``dependency`` is down, in a fixed phrase (see the module doc).

    ``dependency`` is the check's own ("redis", "postgresql", "sqs"...); an
    error that names another one (PostgreSQL's password read from Secrets
    Manager) is reported under that one's name.
    """
    chain = list(_chain(exc))
    for error in chain:
        if isinstance(error, ServiceUnavailable) and error.dependency in _LABELS:
            dependency = error.dependency
            break
    for error in chain:
        found = _vendor_reason(error)
        if found is None:
            continue
        reason, owner = found
        phrase = f"{_LABELS.get(owner or dependency, 'dependency')} {reason}"
        if isinstance(exc, ConfigurationError) and exc.setting in _SETTINGS:
            phrase += f" (check {exc.setting})"
        return phrase
    label = _LABELS.get(dependency, "dependency")
    if isinstance(exc, ConfigurationError):
        return _config_phrase(exc)
    if isinstance(exc, ServiceUnavailable):
        return f"{label} unavailable"
    return f"{label} failed"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "ok" | "down"
    latency_ms: float | None
    details: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: the SessionSyncError code behind a "down" (e.g. ConfigurationError)
    error_code: str | None = None
    warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status,
                               "latency_ms": None if self.latency_ms is None
                               else round(self.latency_ms, 3)}
        out.update(self.details)
        if self.warning:
            out[WARNING] = self.warning
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[CheckResult, ...]

    @property
    def healthy(self) -> bool:
        return all(c.status == "ok" for c in self.checks)

    @property
    def warnings(self) -> list[str]:
        return [f"{c.name}: {c.warning}" for c in self.checks if c.warning]

    def check(self, name: str) -> CheckResult | None:
        return next((c for c in self.checks if c.name == name), None)

    @property
    def degraded(self) -> bool:
        """Redis is down (an outage, not a setting) and everything else,
        PostgreSQL included, answers: the service serves the reads that
        accept a stale copy (``Cache-Control: max-stale``) from PostgreSQL,
        and nothing else.  Any other check down as well is "down"."""
        redis, postgresql = self.check("redis"), self.check("postgresql")
        return (redis is not None and redis.status == "down"
                and redis.error_code != ConfigurationError.code
                and postgresql is not None and postgresql.status == "ok"
                and all(c.status == "ok" for c in self.checks if c is not redis))

    @property
    def status(self) -> str:
        """ "ok", "degraded" (see ``degraded``) or "down"."""
        return "ok" if self.healthy else "degraded" if self.degraded else "down"

    @property
    def http_status(self) -> int:
        """200 unless "down": a degraded service still answers the clients
        that opted in, so a load balancer keeps it (docs/troubleshooting.md)."""
        return 503 if self.status == "down" else 200

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status,
                               "checks": {c.name: c.to_dict() for c in self.checks}}
        if self.warnings:
            out["warnings"] = self.warnings
        return out


def _run(name: str, probe: Probe) -> CheckResult:
    start = time.perf_counter()
    try:
        details = dict(probe() or {})
    except Exception as exc:  # a probe must report, never raise
        return _down(name, exc, (time.perf_counter() - start) * 1000)
    warning = details.pop(WARNING, None)
    # A probe that timed the dependency's own round trip reports it; the
    # wall time would also count building the client on a cold process.
    latency = details.pop(LATENCY, None)
    if latency is None:
        latency = (time.perf_counter() - start) * 1000
    return CheckResult(name, "ok", latency, details, warning=warning)


def _down(name: str, exc: Exception, latency_ms: float | None) -> CheckResult:
    reason = describe(exc, _CHECK_DEPENDENCY.get(name, name))
    # the operator's copy, with the error's own words (the log is private)
    log.warning("health check failed", extra={
        "check": name, "reason": reason, "error_type": type(exc).__name__,
        "error": exc.message if isinstance(exc, SessionSyncError) else str(exc)})
    return CheckResult(name, "down", latency_ms, error=reason,
                       error_code=exc.code if isinstance(exc, SessionSyncError) else None)


def check(probes: Mapping[str, Probe], deadline: float | None = None) -> HealthReport:
    """Run every probe at once; one that misses the deadline (by default
    ``DEADLINE_SECONDS``) is "down".

    Never raises.  Each probe runs in a copy of the caller's context, so
    its log lines carry the caller's request id.
    """
    if deadline is None:
        deadline = DEADLINE_SECONDS
    futures = {name: _pool.submit(contextvars.copy_context().run, _run, name, probe)
               for name, probe in probes.items()}
    wait(futures.values(), timeout=deadline)
    results = []
    for name, future in futures.items():
        if future.done():
            results.append(future.result())
        else:
            label = _LABELS.get(_CHECK_DEPENDENCY.get(name, name), "dependency")
            results.append(CheckResult(name, "down", None,
                                       error=f"{label} timed out (no answer within {deadline:.1f}s)"))
    return HealthReport(tuple(results))


def check_configured(probes: Callable[[], Mapping[str, Probe]],
                     deadline: float | None = None) -> HealthReport:
    """``check(probes())``; settings that cannot be loaded (a malformed
    DATABASE_URL) are a "down" report naming the setting, not an error
    response carrying the setting's value.  Never raises."""
    try:
        built = probes()
    except ConfigurationError as exc:
        name = _SETTING_CHECK.get(exc.setting, "configuration")
        return HealthReport((_down(name, exc, None),))
    return check(built, deadline)


# --- the probes (each takes its client; chalicelib.runtime wires them) -----

def redis_probe(store: Callable[[], Any]) -> Probe:
    """PING through the session store (``SessionStore.ping``).

    ``store`` is a callable: a cluster client connects as it is built, so
    building it belongs inside the deadline (and reports "down", not a 500).
    """
    def probe() -> Mapping[str, Any]:
        return {LATENCY: store().ping()}
    return probe


def postgres_probe(database: Callable[[], Any]) -> Probe:
    """``Database.ping()`` (a round trip on the pooled connection).

    ``database`` is a callable so that building the adapter (which may
    connect, or read a Secrets Manager secret) happens inside the deadline.
    """
    def probe() -> Mapping[str, Any]:
        return {LATENCY: database().ping()}
    return probe


def queue_probe(sqs: Callable[[], Any], queue_url: Callable[[], str]) -> Probe:
    """Main queue depth: waiting, in flight and delayed messages."""
    from chalicelib.adapters import queue_metrics

    def probe() -> Mapping[str, Any]:
        client, url = sqs(), queue_url()
        start = time.perf_counter()
        depth = queue_metrics.queue_depth(client, url)
        return {LATENCY: (time.perf_counter() - start) * 1000, **depth.to_dict()}
    return probe


def dlq_probe(sqs: Callable[[], Any], dlq_url: Callable[[], str]) -> Probe:
    """DLQ depth; a non-empty DLQ is a warning, not "down"."""
    from chalicelib.adapters import queue_metrics

    def probe() -> Mapping[str, Any]:
        client, url = sqs(), dlq_url()
        start = time.perf_counter()
        depth = queue_metrics.queue_depth(client, url, setting=SESSION_DLQ_URL).total
        out: dict[str, Any] = {LATENCY: (time.perf_counter() - start) * 1000, "depth": depth}
        if depth:
            out[WARNING] = (f"{depth} message(s) could not be persisted: "
                            "inspect with `sessionsync dlq list`")
        return out
    return probe
