"""``sessionsync diagnose``: what an operator wants to know, in one report.

Each check is a function that takes its client and returns ``Finding``s
(``ok`` / ``info`` / ``warn`` / ``fail``, a one-line summary, the numbers
behind it, and what to do about it).  ``diagnose`` runs them all against a
``Clients`` provider (``chalicelib.runtime`` in production) so that one
dependency being down turns into a failed section, never a crash, and
every other section still reports.

Nothing here writes: SCAN, INFO, DBSIZE, GETRANGE, TTL, ZRANGE, SQS
GetQueueAttributes and SELECTs only.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from chalicelib import config
from chalicelib.adapters import queue_metrics
from chalicelib.config import Settings
from chalicelib.domain.errors import ConfigurationError, SessionSyncError
from sessionsync.bench.stats import percentile
from sessionsync.redis_views import SessionSample, outbox_depth, primaries
from sessionsync.redis_views import sample as sample_sessions

LEVELS = ("ok", "info", "warn", "fail")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Finding:
    section: str
    level: str  # one of LEVELS
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.fix:
            out.pop("fix")
        return out


@dataclass
class Diagnosis:
    findings: list[Finding] = field(default_factory=list)

    @property
    def level(self) -> str:
        return max((f.level for f in self.findings), key=LEVELS.index, default="ok")

    @property
    def configuration_failed(self) -> bool:
        return any(f.section == "configuration" and f.level == "fail" for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "findings": [f.to_dict() for f in self.findings]}


class Clients(Protocol):
    """Builds the clients on demand (``chalicelib.runtime`` is one)."""

    def redis(self) -> Any: ...

    def store(self) -> Any: ...

    def sqs(self) -> Any: ...

    def queue_url(self) -> str: ...

    def dlq_url(self) -> str: ...

    def database(self) -> Any: ...


# --- configuration -------------------------------------------------------------

def check_configuration(env: Mapping[str, str]) -> tuple[Settings | None, list[Finding]]:
    """Validate the environment; name every bad setting found and the fix.

    Each URL is checked on its own first, so that a bad DATABASE_URL and a
    bad REDIS_URL are both reported; then the full loader runs (it stops at
    the first problem).  Returns the settings (None when they do not load).
    """
    findings: list[Finding] = []
    seen: set[str] = set()

    def bad(exc: ConfigurationError) -> None:
        if exc.setting in seen:
            return
        seen.add(exc.setting)
        suggestion = exc.details.get("suggestion")
        fix = f"set {exc.setting} correctly and run again"
        if suggestion:
            fix = (f"percent-encode the password in {exc.setting} as shown (the stars stand "
                   "for its other characters, unchanged); to encode yours: python3 -c "
                   "\"import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1], safe=''))\" "
                   "'<password>'")
        details = {"setting": exc.setting}
        if suggestion:
            details["suggestion"] = suggestion
        findings.append(Finding("configuration", "fail", exc.message, details, fix))

    for name, check in ((config.REDIS_URL, config.check_redis_url),
                        (config.DATABASE_URL, config.check_database_url)):
        value = env.get(name, "").strip()
        if value:
            try:
                check(value, name)
            except ConfigurationError as exc:
                bad(exc)
    try:
        settings = config.load_settings(env)
    except ConfigurationError as exc:
        bad(exc)
        return None, findings
    if findings:
        return None, findings
    findings.extend(_configuration_advice(settings))
    return settings, findings


def _configuration_advice(s: Settings) -> list[Finding]:
    out = [Finding("configuration", "ok", "settings load", describe_settings(s))]
    redis_parts = urlsplit(s.redis_url)
    if redis_parts.scheme == "redis" and redis_parts.hostname not in _LOOPBACK:
        out.append(Finding("configuration", "warn", "REDIS_URL is not TLS (redis://) on a remote host",
                           fix="ElastiCache with in-transit encryption needs rediss://"))
    if not s.has_queue:
        out.append(Finding("configuration", "warn", "no session queue configured",
                           fix=f"set {config.SESSION_QUEUE_URL} or {config.SESSION_QUEUE_NAME}: "
                               "without it no change reaches PostgreSQL"))
    if s.has_queue and not s.has_dlq:
        out.append(Finding("configuration", "info", "no DLQ configured for the CLI",
                           fix=f"set {config.SESSION_DLQ_URL} or {config.SESSION_DLQ_NAME} "
                               "to see its depth and use `sessionsync dlq`"))
    if not s.has_database:
        out.append(Finding("configuration", "warn", "no database configured",
                           fix=f"set {config.DATABASE_URL} or {config.DB_SECRET_ARN}: without it "
                               "expired sessions cannot be recovered and history is empty"))
    if not s.api_keys and not s.api_keys_secret_arn:
        out.append(Finding("configuration", "warn", "no API keys configured: every session "
                           "request will be denied",
                           fix=f"set {config.API_KEYS} or {config.API_KEYS_SECRET_ARN}"))
    if 0 < s.marker_ttl < s.session_ttl:
        out.append(Finding("configuration", "warn", "SESSION_MARKER_TTL is shorter than SESSION_TTL",
                           fix="the version marker must outlive the session, or recovery can "
                               "serve an older version"))
    return out


def describe_settings(s: Settings) -> dict[str, Any]:
    """The effective settings without secrets (no passwords, no keys)."""
    redis_parts = urlsplit(s.redis_url)
    out: dict[str, Any] = {
        "redis": f"{redis_parts.hostname}:{redis_parts.port or 6379}"
                 + (" (TLS)" if redis_parts.scheme == "rediss" else "")
                 + (" cluster" if s.redis_cluster else ""),
        "session_ttl": s.session_ttl, "max_state_bytes": s.max_state_bytes,
        "log_level": s.log_level,
    }
    if s.database_url:
        db = urlsplit(s.database_url)
        out["database"] = f"{db.hostname or '(socket)'}:{db.port or 5432}{db.path or ''}" + (
            f" user={db.username}" if db.username else "")
    elif s.db_secret_arn:
        out["database"] = f"secret {s.db_secret_arn}"
    out["queue"] = s.queue_url or s.queue_name
    out["dlq"] = s.dlq_url or s.dlq_name
    if s.aws_endpoint_url:
        out["aws_endpoint"] = s.aws_endpoint_url
    out["api_keys"] = f"{len(s.api_keys)} static" + (" + secret" if s.api_keys_secret_arn else "")
    return out


# --- Redis -------------------------------------------------------------------------

def percentiles(samples: Sequence[float], points: Iterable[int] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles (and max) of ``samples``, rounded to µs."""
    ordered = sorted(samples)
    out = {f"p{p}": round(percentile(ordered, p), 3) for p in points}
    out["max"] = round(ordered[-1], 3)
    return out


def redis_latency(node: Any, pings: int) -> dict[str, float]:
    """PING round trips in ms over ``pings`` tries: p50, p95, p99, max."""
    samples = []
    for _ in range(pings):
        start = time.perf_counter()
        node.ping()
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


def eviction_risk(policy: str, marker_ttl: int = 0) -> tuple[str, str]:
    """(level, explanation) for a maxmemory-policy, given sessionsync's keys:
    sessions carry a TTL; the outbox (ss:{N}:ob/od), the epoch records and,
    unless SESSION_MARKER_TTL is set, the version markers do not."""
    if policy == "noeviction":
        return "ok", ("nothing is evicted; when memory is full writes fail with OOM (503 to "
                      "clients), which is loud and loses nothing")
    if policy.startswith("volatile-") and marker_ttl == 0:
        return "ok", ("evicts keys with a TTL: only sessions (version markers, the outbox and "
                      "the epoch records have none); an evicted session is recovered from "
                      "PostgreSQL on its next read, never older than the marker says")
    if policy == "volatile-ttl":
        return "info", ("evicts keys with a TTL, nearest expiry first: sessions go before the "
                        "30-day version markers and the outbox (no TTL) is never evicted; an evicted "
                        "session is recovered from PostgreSQL on its next read")
    if policy.startswith("volatile-"):
        return "warn", ("evicts keys with a TTL: sessions AND version markers. The outbox is safe "
                        "(no TTL), and an evicted session is recovered from PostgreSQL, but an "
                        "evicted marker lets recovery serve a version PostgreSQL has not caught up "
                        "with, and lets a deleted id be created again. Prefer noeviction (or "
                        "volatile-ttl) and size the node so it is never reached")
    if policy.startswith("allkeys-"):
        return "fail", ("can evict ANY key, including outbox entries not yet sent to SQS (an "
                        "acknowledged write could then never reach PostgreSQL) and a bucket's "
                        "marker hash (the version markers of 1/1024 of every session at once: "
                        "deleted ids could come back). Use noeviction")
    return "warn", f"unknown policy {policy!r}"


def check_redis(client: Any, settings: Settings, *, pings: int = 100) -> list[Finding]:
    """Per node: latency percentiles, key count, memory and eviction policy;
    and whether the cluster setting matches the server."""
    findings = []
    for name, node in primaries(client):
        latency = redis_latency(node, pings)
        memory = node.info("memory")
        cluster_enabled = bool(node.info("cluster").get("cluster_enabled"))
        keys = node.dbsize()
        used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
        policy = str(memory.get("maxmemory_policy", "unknown"))
        details = {"node": name, "latency_ms": latency, "keys": keys, "used_memory": used,
                   "used_memory_human": memory.get("used_memory_human"),
                   "maxmemory": limit, "maxmemory_policy": policy}
        level = "warn" if latency["p99"] > 5 else "ok"
        findings.append(Finding("redis", level,
                                f"{name}: PING p50 {latency['p50']} ms, p99 {latency['p99']} ms, "
                                f"{keys} keys", details,
                                "p99 above 5 ms: check the node's CPU, network and SLOWLOG"
                                if level == "warn" else None))
        if limit:
            share = used / limit
            mem_level = "fail" if share > 0.95 else "warn" if share > 0.8 else "ok"
            findings.append(Finding("redis", mem_level,
                                    f"{name}: memory {used / 2**20:.1f} MiB of {limit / 2**20:.1f} MiB "
                                    f"({share:.0%})", {"node": name, "used": used, "maxmemory": limit},
                                    "scale the node up or out before maxmemory is reached"
                                    if mem_level != "ok" else None))
        else:
            findings.append(Finding("redis", "info", f"{name}: no maxmemory limit "
                                    f"({used / 2**20:.1f} MiB used)",
                                    {"node": name, "used": used},
                                    "without a limit the host's memory is the limit (the OOM killer)"))
        risk, why = eviction_risk(policy, settings.marker_ttl)
        findings.append(Finding("redis", risk, f"{name}: maxmemory-policy {policy}",
                                {"node": name, "policy": policy}, why if risk != "ok" else None))
        if cluster_enabled and not settings.redis_cluster:
            findings.append(Finding("redis", "fail", f"{name} is a cluster node but REDIS_CLUSTER is off",
                                    fix=f"set {config.REDIS_CLUSTER}=true (keys on other nodes "
                                        "answer MOVED)"))
    return findings


def check_ttls(samples: Sequence[SessionSample], settings: Settings) -> list[Finding]:
    """TTL sanity: every session key must expire, within its own ttl_seconds."""
    if not samples:
        return [Finding("sessions", "info", "no session keys found to sample")]
    live = [s for s in samples if s.ttl_left >= 0]
    no_expiry = [s.session_id for s in samples if s.ttl_left == -1]
    too_long = [s.session_id for s in live if s.ttl_left > s.ttl_setting]
    lefts = [s.ttl_left for s in live]
    details: dict[str, Any] = {"sampled": len(samples), "tombstones": sum(s.deleted for s in samples),
                               "default_ttl": settings.session_ttl}
    if lefts:
        details["ttl_left_s"] = {**percentiles(lefts, (50,)), "min": min(lefts)}
        details["expiring_within_60s"] = sum(1 for t in lefts if t <= 60)
    summary = f"{len(samples)} session keys sampled"
    if lefts:
        summary += (f": TTL left p50 {details['ttl_left_s']['p50']:.0f} s, min {min(lefts)} s, "
                    f"{details['expiring_within_60s']} expiring within 60 s")
    findings = [Finding("sessions", "ok", summary, details)]
    if no_expiry:
        findings.append(Finding("sessions", "fail", f"{len(no_expiry)} session key(s) have no TTL",
                                {"examples": no_expiry[:5]},
                                "every write sets EX; a key without one was written by something "
                                "else (a manual SET?) and will never expire"))
    if too_long:
        findings.append(Finding("sessions", "warn",
                                f"{len(too_long)} key(s) expire later than their own ttl_seconds",
                                {"examples": too_long[:5]}, "a key was changed outside sessionsync"))
    return findings


def check_outbox(store: Any, settings: Settings, *, clock: Callable[[], float] = time.time) -> list[Finding]:
    """Outbox depth and the age of its oldest entry (a stuck relay shows here)."""
    depth = outbox_depth(store)
    oldest_ms = store.outbox_oldest_ms()
    age = None if oldest_ms is None else max(0.0, clock() - oldest_ms / 1000)
    details = {"depth": depth, "oldest_age_s": None if age is None else round(age, 1)}
    stuck_after = max(60.0, settings.outbox_relay_age * 6)
    if age is not None and age > stuck_after:
        return [Finding("outbox", "warn", f"{depth} change(s) not yet sent to SQS, oldest "
                        f"{age:.0f} s old", details,
                        "the relay is not running or SQS refuses sends: check `sessionsync "
                        "queue-metrics`, the relay's logs, or run `sessionsync relay`")]
    return [Finding("outbox", "ok", f"{depth} change(s) waiting to be sent to SQS", details)]


# --- SQS -------------------------------------------------------------------------

def check_queues(sqs: Any, queue_url: str | None, dlq_url: str | None) -> list[Finding]:
    findings = []
    if queue_url:
        depth = queue_metrics.queue_depth(sqs, queue_url)
        findings.append(Finding("queue", "ok", f"queue: {depth.waiting} waiting, {depth.in_flight} "
                                f"in flight, {depth.delayed} delayed", depth.to_dict()))
    if dlq_url:
        dlq = queue_metrics.queue_depth(sqs, dlq_url, setting=config.SESSION_DLQ_URL)
        if dlq.total:
            findings.append(Finding("queue", "warn", f"DLQ: {dlq.total} message(s) could not be "
                                    "persisted", dlq.to_dict(),
                                    "see why with `sessionsync dlq list`; fix the cause, then "
                                    "`sessionsync dlq redrive`"))
        else:
            findings.append(Finding("queue", "ok", "DLQ is empty", dlq.to_dict()))
    return findings


# --- PostgreSQL --------------------------------------------------------------------

def _age_seconds(iso: str | None, now: float) -> float | None:
    if not iso:
        return None
    try:
        stamp = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return max(0.0, now - stamp.timestamp())


def check_postgres(database: Any, *, recent: int = 5,
                   clock: Callable[[], float] = time.time) -> list[Finding]:
    """Reachability (round trip) and the last events persisted."""
    ping_ms = database.ping()
    findings = [Finding("postgresql", "ok", f"reachable, SELECT 1 in {ping_ms:.2f} ms",
                        {"ping_ms": round(ping_ms, 3)})]
    events = database.recent_events(recent)
    if not events:
        findings.append(Finding("postgresql", "info", "no events persisted yet"))
    else:
        age = _age_seconds(events[0].get("persisted_at"), clock())
        findings.append(Finding(
            "postgresql", "ok",
            f"last event persisted {'%.0f s ago' % age if age is not None else 'at an unknown time'}: "
            f"{events[0].get('session_id')} v{events[0].get('version')}",
            {"recent_events": events}))
    return findings


def check_lag(samples: Sequence[SessionSample], database: Any, *, pipeline_busy: bool | None,
              limit: int = 50) -> list[Finding]:
    """Compare each sampled session's Redis version with its persisted one.

    A session behind while changes are still queued is normal (in flight);
    behind with an empty outbox and queue means a change was not persisted:
    look in the DLQ.
    """
    chosen = list(samples)[:limit]
    if not chosen:
        return []
    persisted = database.persisted_versions([s.session_id for s in chosen])
    behind = sorted(((s.version - persisted.get(s.session_id, 0), s.session_id) for s in chosen
                     if s.version > persisted.get(s.session_id, 0)), reverse=True)
    details = {"checked": len(chosen), "behind": len(behind),
               "max_lag_versions": behind[0][0] if behind else 0,
               "examples": [{"session_id": sid, "lag": lag} for lag, sid in behind[:5]]}
    if not behind:
        return [Finding("lag", "ok", f"all {len(chosen)} sampled sessions are persisted at their "
                        "Redis version", details)]
    if pipeline_busy is False:
        return [Finding("lag", "warn", f"{len(behind)} of {len(chosen)} sampled sessions are "
                        "behind in PostgreSQL with nothing in flight", details,
                        "their changes were not persisted: check `sessionsync dlq list`")]
    return [Finding("lag", "info", f"{len(behind)} of {len(chosen)} sampled sessions are behind "
                    "in PostgreSQL (changes in flight)", details)]


# --- the whole report ----------------------------------------------------------------

def _section(diagnosis: Diagnosis, name: str, run: Callable[[], list[Finding]]) -> bool:
    """Run one section; a failure becomes a "fail" finding.  True if it ran."""
    try:
        diagnosis.findings.extend(run())
        return True
    except SessionSyncError as exc:
        diagnosis.findings.append(Finding(name, "fail", exc.message, {"code": exc.code},
                                          _fix_for(name)))
    except Exception as exc:  # report, never crash: the other sections still matter
        diagnosis.findings.append(Finding(name, "fail", f"{type(exc).__name__}: {exc}",
                                          fix=_fix_for(name)))
    return False


def _fix_for(section: str) -> str:
    return {
        "redis": "check REDIS_URL, the security group / network path, TLS (rediss://) and AUTH",
        "sessions": "check Redis (see the redis section)",
        "outbox": "check Redis (see the redis section)",
        "queue": "check the queue names/URLs, AWS_ENDPOINT_URL and credentials",
        "postgresql": "check DATABASE_URL / DB_SECRET_ARN, the network path and that the "
                      "migrations ran (`sessionsync migrate`)",
        "lag": "check PostgreSQL (see the postgresql section)",
    }.get(section, "see the error")


def diagnose(settings: Settings, clients: Clients, *, pings: int = 100, sample: int = 200,
             lag_sample: int = 50) -> Diagnosis:
    """Every check, each section independent of the others' failures."""
    report = Diagnosis()
    samples: list[SessionSample] = []
    busy: dict[str, int] = {}

    _section(report, "redis", lambda: check_redis(clients.redis(), settings, pings=pings))

    def sessions() -> list[Finding]:
        samples.extend(sample_sessions(clients.store(), limit=sample))
        return check_ttls(samples, settings)
    _section(report, "sessions", sessions)

    def outbox() -> list[Finding]:
        found = check_outbox(clients.store(), settings)
        busy["outbox"] = found[0].details.get("depth", 0)
        return found
    _section(report, "outbox", outbox)

    if settings.has_queue or settings.has_dlq:
        def queues() -> list[Finding]:
            queue_url = clients.queue_url() if settings.has_queue else None
            dlq_url = clients.dlq_url() if settings.has_dlq else None
            found = check_queues(clients.sqs(), queue_url, dlq_url)
            if queue_url:
                busy["queue"] = found[0].details["waiting"] + found[0].details["in_flight"] + \
                    found[0].details["delayed"]
            return found
        _section(report, "queue", queues)

    if settings.has_database:
        if _section(report, "postgresql", lambda: check_postgres(clients.database())):
            pipeline_busy = (sum(busy.values()) > 0) if {"outbox", "queue"} <= busy.keys() else None
            _section(report, "lag", lambda: check_lag(samples, clients.database(),
                                                      pipeline_busy=pipeline_busy, limit=lag_sample))
    return report
