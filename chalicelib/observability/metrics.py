"""CloudWatch metrics as Embedded Metric Format (EMF) log lines.

In Lambda, a JSON log line with an ``_aws.CloudWatchMetrics`` directive
becomes CloudWatch metrics without any API call (no latency, no IAM, no
SDK).  ``emit()`` writes one such line per call, carrying the bound request
id (``chalicelib.observability.logs.request_context``) as a searchable property.

The catalogue below is the complete list of metrics; a name outside it is
a programming error (``KeyError``), so that dashboards and alarms can rely
on the names.  Where each is emitted:

======================  ============  =============================================
WriteLatency            Milliseconds  SessionService create/update/delete/touch (dim: operation)
Conflicts               Count         SessionService: a compare-and-set lost
RecoveryReads           Count         SessionService: a session served from PostgreSQL
ConsumerBatchSize       Count         SQS consumer: records in the batch
PersistedEvents         Count         SQS consumer: events written to PostgreSQL
DlqSends                Count         SQS consumer: poison messages sent to the DLQ
OutboxRelayed           Count         outbox relay: entries sent to SQS
OutboxOldestAgeSeconds  Seconds       outbox relay, every 10 s while it runs: the oldest entry's age
ApiKeyRefreshFailures   Count         API key authorizer: reading the keys secret failed
ShipFailures            Count         outbox relay: changes SQS did not take (they stay in the outbox)
RedisRepairs            Count         SessionService: Redis was behind PostgreSQL (failover): repaired
RedisEpochChanges       Count         SessionService: Redis went back in time (first sight, per bucket)
StaleReads              Count         SessionService: Redis down, a max-stale read served from PostgreSQL
PurgedEvents            Count         retention purge: sync_events rows older than the retention, deleted
PatchRetries            Count         SessionService: a PATCH merged again after losing its compare-and-set
SessionsExpired         Count         expiry sweep: session_expired events written
TenantSessions          Count         a create under TENANT_MAX_SESSIONS: the tenant's live ones (dim: tenant)
SessionLimitRefusals    Count         a create refused at TENANT_MAX_SESSIONS: 429 (dim: tenant)
======================  ============  =============================================

Dimensions are bounded: ``operation`` has five values; ``tenant`` only
comes from the key records an operator writes (never from a request), so
it has as many values as the operator made tenants.  The key id is not a
dimension (every rotation would start new series): it is a property of
every line, as the tenant is, for CloudWatch Logs Insights.

Why not ``aws_lambda_powertools.Metrics``: docs/decisions/no-powertools.md
(its import at every cold start; this writer is a ``json.dumps`` and one
write, figures in docs/performance.md).
"""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO, TypeVar

from chalicelib.observability import logs

F = TypeVar("F", bound=Callable[..., Any])

CATALOGUE: Mapping[str, str] = {
    "WriteLatency": "Milliseconds",
    "Conflicts": "Count",
    "RecoveryReads": "Count",
    "ConsumerBatchSize": "Count",
    "PersistedEvents": "Count",
    "DlqSends": "Count",
    "OutboxRelayed": "Count",
    "OutboxOldestAgeSeconds": "Seconds",
    "ApiKeyRefreshFailures": "Count",
    "ShipFailures": "Count",
    "RedisRepairs": "Count",
    "RedisEpochChanges": "Count",
    "SessionsExpired": "Count",
    "PatchRetries": "Count",
    "StaleReads": "Count",
    "PurgedEvents": "Count",
    "TenantSessions": "Count",
    "SessionLimitRefusals": "Count",
}

# The environment names powertools uses, so that .chalice/config.json and
# the Lambda console read the same as for any powertools-instrumented app.
NAMESPACE_ENV = "POWERTOOLS_METRICS_NAMESPACE"
SERVICE_ENV = "POWERTOOLS_SERVICE_NAME"
DEFAULT_NAMESPACE = "sessionsync"


class EmfWriter:
    """Write EMF lines to a stream (``sys.stdout`` as it is at write time
    when none is given).  Thread-safe: one lock around each write."""

    def __init__(self, *, namespace: str | None = None, service: str | None = None,
                 stream: TextIO | None = None, enabled: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.namespace = namespace or os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
        self.service = service or os.environ.get(SERVICE_ENV) or "sessionsync"
        self.enabled = enabled
        self._stream = stream
        self._clock = clock
        self._lock = threading.Lock()

    def document(self, values: Mapping[str, float], dimensions: Mapping[str, str] | None = None,
                 properties: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The EMF document for ``values``.  Raises KeyError for a metric
        outside the catalogue and ValueError for a value that is not a
        finite number (CloudWatch would drop the whole line)."""
        dims = {"service": self.service, **(dimensions or {})}
        metrics = []
        for name, value in values.items():
            unit = CATALOGUE[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"metric {name} needs a finite number, got {value!r}")
            metrics.append({"Name": name, "Unit": unit})
        doc: dict[str, Any] = dict(logs.current_context())
        doc.update(properties or {})
        doc.update(dims)
        doc.update(values)
        doc["_aws"] = {
            "Timestamp": int(self._clock() * 1000),
            "CloudWatchMetrics": [{"Namespace": self.namespace,
                                   "Dimensions": [list(dims)],
                                   "Metrics": metrics}],
        }
        return doc

    def emit(self, values: Mapping[str, float], *, dimensions: Mapping[str, str] | None = None,
             properties: Mapping[str, Any] | None = None) -> None:
        """Write one EMF line with ``values`` (metric name -> number)."""
        if not self.enabled or not values:
            return
        line = json.dumps(self.document(values, dimensions, properties),
                          separators=(",", ":"), default=str) + "\n"
        stream = self._stream or sys.stdout
        with self._lock:
            try:
                stream.write(line)
                # stdout is block-buffered when it is not a terminal (the
                # local worker under a supervisor): flush so lines show now.
                stream.flush()
            except (OSError, ValueError):
                # a closed or broken stream: metrics are best effort and must
                # never fail the write or the batch they describe
                pass


_writer = EmfWriter()


def timed_write(operation: str) -> Callable[[F], F]:
    """Decorate a write: WriteLatency (ms) when it returns, Conflicts when it
    raises ConcurrencyError; both with the dimension ``operation``.  Other
    errors emit nothing (they are logged where they are handled)."""
    from chalicelib.domain.errors import ConcurrencyError

    dimensions = {"operation": operation}

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = func(*args, **kwargs)
            except ConcurrencyError:
                _writer.emit({"Conflicts": 1}, dimensions=dimensions)
                raise
            _writer.emit({"WriteLatency": round((time.perf_counter() - start) * 1000, 3)},
                         dimensions=dimensions)
            return result
        return wrapper  # type: ignore[return-value]
    return decorate


def configure(*, stream: TextIO | None = None, enabled: bool = True,
              namespace: str | None = None, service: str | None = None) -> EmfWriter:
    """Replace the process-wide writer (the CLI sends EMF to stderr so that
    its stdout stays parseable; benchmarks turn it off)."""
    global _writer
    _writer = EmfWriter(namespace=namespace, service=service, stream=stream, enabled=enabled)
    return _writer


def writer() -> EmfWriter:
    return _writer


def emit(values: Mapping[str, float], *, dimensions: Mapping[str, str] | None = None,
         properties: Mapping[str, Any] | None = None) -> None:
    """Emit ``values`` through the process-wide writer.

    Raises KeyError / ValueError for a programming error (unknown metric,
    non-numeric value): metrics are never allowed to hide a bug, but they
    are also never emitted from a place where an exception would lose data.
    """
    _writer.emit(values, dimensions=dimensions, properties=properties)
