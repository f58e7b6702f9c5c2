"""Dependency health, CloudWatch style: one status, and per dependency a
status and a latency.  Shared by ``GET /health`` and ``sessionsync health``.

Report shape (``HealthReport.to_dict``)::

    {"status": "ok" | "down",
     "checks": {"redis":      {"status": "ok", "latency_ms": 0.21},
                "postgresql": {"status": "ok", "latency_ms": 0.9},
                "queue":      {"status": "ok", "latency_ms": 4.1,
                               "waiting": 0, "in_flight": 0, "delayed": 0},
                "dlq":        {"status": "ok", "latency_ms": 3.8, "depth": 2,
                               "warning": "2 messages could not be persisted: ..."}},
     "warnings": ["dlq: 2 messages could not be persisted: ..."]}   # only when any

Only configured dependencies appear (``chalicelib.runtime.health_probes``).
A non-empty DLQ is a warning, not an outage: the service still works, and
the alarm on the DLQ depth is what pages someone.

Probes run in parallel threads with one deadline, so a hung dependency
makes the report say "down" within about a second instead of hanging the
Lambda.  Reports never contain connection strings or secrets: errors are
the domain error's message with anything URL-like removed, or only the
exception's type name for anything unexpected.
"""
from __future__ import annotations

import contextvars
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from chalicelib.config import SESSION_DLQ_URL
from chalicelib.errors import SessionSyncError

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

# /health answers without credentials: an error must not tell a stranger
# where the dependencies are or how to log in to them.
_REDACTIONS = (
    (re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE), "<url>"),
    (re.compile(r"\b(password|passwd|pwd|secret|token|user)\s*[=:]\s*\S+", re.IGNORECASE),
     r"\1=<redacted>"),
    (re.compile(r'"[^"]*"'), '"<redacted>"'),  # libpq quotes host names and addresses
    (re.compile(r"\(?\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b\)?"), "<address>"),
    (re.compile(r"\[[0-9a-fA-F:]+\](?::\d+)?"), "<address>"),
    (re.compile(r"\b(?:[a-z0-9-]+\.)+[a-z]{2,}(?::\d+)?\b"), "<host>"),
    (re.compile(r"\bport \d+"), "port <redacted>"),
)


def safe_message(message: str) -> str:
    """``message`` without URLs, credentials, host names, addresses or ports."""
    for pattern, replacement in _REDACTIONS:
        message = pattern.sub(replacement, message)
    return message


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

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": "ok" if self.healthy else "down",
                               "checks": {c.name: c.to_dict() for c in self.checks}}
        if self.warnings:
            out["warnings"] = self.warnings
        return out


def _run(name: str, probe: Probe) -> CheckResult:
    start = time.perf_counter()
    try:
        details = dict(probe() or {})
    except SessionSyncError as exc:
        return CheckResult(name, "down", (time.perf_counter() - start) * 1000,
                           error=safe_message(exc.message), error_code=exc.code)
    except Exception as exc:  # a probe must report, never raise
        return CheckResult(name, "down", (time.perf_counter() - start) * 1000,
                           error=type(exc).__name__)
    warning = details.pop(WARNING, None)
    # A probe that timed the dependency's own round trip reports it; the
    # wall time would also count building the client on a cold process.
    latency = details.pop(LATENCY, None)
    if latency is None:
        latency = (time.perf_counter() - start) * 1000
    return CheckResult(name, "ok", latency, details, warning=warning)


def check(probes: Mapping[str, Probe], deadline: float = DEADLINE_SECONDS) -> HealthReport:
    """Run every probe at once; one that misses the deadline is "down".

    Never raises.  Each probe runs in a copy of the caller's context, so
    its log lines carry the caller's request id.
    """
    futures = {name: _pool.submit(contextvars.copy_context().run, _run, name, probe)
               for name, probe in probes.items()}
    wait(futures.values(), timeout=deadline)
    results = []
    for name, future in futures.items():
        if future.done():
            results.append(future.result())
        else:
            results.append(CheckResult(name, "down", None,
                                       error=f"no answer within {deadline:.1f}s"))
    return HealthReport(tuple(results))


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
    from chalicelib import queue_metrics

    def probe() -> Mapping[str, Any]:
        client, url = sqs(), queue_url()
        start = time.perf_counter()
        depth = queue_metrics.queue_depth(client, url)
        return {LATENCY: (time.perf_counter() - start) * 1000, **depth.to_dict()}
    return probe


def dlq_probe(sqs: Callable[[], Any], dlq_url: Callable[[], str]) -> Probe:
    """DLQ depth; a non-empty DLQ is a warning, not "down"."""
    from chalicelib import queue_metrics

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
