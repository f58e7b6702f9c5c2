"""Dependency health, CloudWatch style: one status, and per dependency a
status and a latency.  Shared by ``GET /health`` and ``sessionsync health``.

Probes run in parallel threads with one deadline, so a hung dependency
makes the report say "timeout" within about a second instead of hanging
the Lambda.  Reports never contain connection strings or secrets.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from chalicelib.errors import SessionSyncError

Probe = Callable[[], Mapping[str, Any]]
DEADLINE_SECONDS = 1.0
_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # "ok" | "down"
    latency_ms: float | None
    details: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status,
                               "latency_ms": None if self.latency_ms is None
                               else round(self.latency_ms, 3)}
        out.update(self.details)
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[CheckResult, ...]

    @property
    def healthy(self) -> bool:
        return all(c.status == "ok" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {"status": "ok" if self.healthy else "down",
                "checks": {c.name: c.to_dict() for c in self.checks}}


def _run(name: str, probe: Probe) -> CheckResult:
    start = time.perf_counter()
    try:
        details = probe()
    except SessionSyncError as exc:
        return CheckResult(name, "down", (time.perf_counter() - start) * 1000, error=exc.message)
    except Exception as exc:  # a probe must report, never raise
        return CheckResult(name, "down", (time.perf_counter() - start) * 1000,
                           error=type(exc).__name__)
    return CheckResult(name, "ok", (time.perf_counter() - start) * 1000, dict(details or {}))


def check(probes: Mapping[str, Probe], deadline: float = DEADLINE_SECONDS) -> HealthReport:
    """Run every probe at once; one that misses the deadline is "down"."""
    futures = {name: _pool.submit(_run, name, probe) for name, probe in probes.items()}
    wait(futures.values(), timeout=deadline)
    results = []
    for name, future in futures.items():
        if future.done():
            results.append(future.result())
        else:
            results.append(CheckResult(name, "down", None,
                                       error=f"no answer within {deadline:.1f}s"))
    return HealthReport(tuple(results))
