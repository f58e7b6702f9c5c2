"""What every benchmark section receives: the run's profile and endpoints."""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Payload of the latency sections: a 1 KB state, as the targets assume.
STATE_BYTES = 1024
#: The consumer section's own database (never the app's), created and migrated.
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/sessionsync_bench"


@dataclass(frozen=True)
class Profile:
    """How much work each section does.  ``full`` is what docs/performance.md reports."""

    name: str
    store_iterations: int
    store_warmup: int
    handler_iterations: int
    sqs_iterations: int
    coldstart_runs: int
    consumer_events: int          # per batch size (batch 1 gets a fifth)
    memory_sessions: int
    scale_sizes: tuple[int, ...]
    scale_samples: int
    contention_writers: int
    contention_seconds: float
    contention_modes: tuple[str, ...]
    relay_backlogs: tuple[int, int]   # outbox backlogs drained (small, large)


PROFILES = {
    "full": Profile("full", store_iterations=20_000, store_warmup=1_000, handler_iterations=5_000,
                    sqs_iterations=300, coldstart_runs=7, consumer_events=20_000,
                    memory_sessions=1_000, scale_sizes=(10_000, 100_000, 1_000_000),
                    scale_samples=10_000, contention_writers=16, contention_seconds=5.0,
                    contention_modes=("threads", "processes"),
                    relay_backlogs=(100_000, 1_000_000)),
    "quick": Profile("quick", store_iterations=2_000, store_warmup=200, handler_iterations=1_000,
                     sqs_iterations=100, coldstart_runs=3, consumer_events=3_000,
                     memory_sessions=200, scale_sizes=(10_000, 100_000), scale_samples=2_000,
                     contention_writers=16, contention_seconds=2.0,
                     contention_modes=("threads", "processes"),
                     relay_backlogs=(10_000, 100_000)),
    # The test suite's mode: proves every section runs and reports, in seconds.
    "smoke": Profile("smoke", store_iterations=200, store_warmup=20, handler_iterations=100,
                     sqs_iterations=10, coldstart_runs=1, consumer_events=200,
                     memory_sessions=20, scale_sizes=(1_000, 5_000), scale_samples=200,
                     contention_writers=16, contention_seconds=0.5,
                     contention_modes=("threads",), relay_backlogs=(1_000, 10_000)),
}


@dataclass(frozen=True)
class Placement:
    """Which CPUs the bench's redis-servers and the bench itself run on.

    On a VM a loopback round trip is faster when the peer wakes on the
    same or a busy CPU than when it wakes a halted one (docs/performance.md
    has the two figures), and the scheduler moves processes between the
    two cases at will: one run's
    floor and another's, or two servers in one run, would then not be
    comparable.  Pinning the servers to the last CPU and the bench to the
    others makes every round trip cross CPUs, as a client and a server on
    different machines always do.  ``None`` (one CPU, or ``--no-pin``): no
    pinning.
    """

    server_cpus: frozenset[int]
    client_cpus: frozenset[int]

    @classmethod
    def split(cls) -> Placement | None:
        if not hasattr(os, "sched_getaffinity"):
            return None
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return None
        return cls(frozenset(cpus[-1:]), frozenset(cpus[:-1]))


@dataclass
class BenchContext:
    """Shared by the sections of one run."""

    profile: Profile
    redis_url: str
    #: True when redis_url is a server this run started (it may be filled and flushed)
    redis_is_own: bool
    database_url: str | None
    aws_endpoint_url: str | None
    log: Callable[[str], None] = print
    placement: Placement | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    #: what provisioning the bench's database did, the first time a section asked
    provisioned: dict[str, Any] | None = None
    #: the Lambda runtime the cold start's packages are built for and run on
    #: (python3.13...); None: the template's LambdaRuntime
    lambda_runtime: str | None = None

    @property
    def server_cpus(self) -> frozenset[int] | None:
        return self.placement.server_cpus if self.placement else None

    def session_prefix(self, section: str) -> str:
        """Session ids of a section: recognisable, and unique per run."""
        return f"bench-{self.run_id}-{section}"

    @property
    def dsn(self) -> str:
        return self.database_url or DEFAULT_DATABASE_URL

    def migrated_dsn(self) -> str:
        """The bench's database, created if missing and migrated (once a run)."""
        if self.provisioned is None:
            from sessionsync import provisioning

            created = provisioning.ensure_database(self.dsn)
            applied = provisioning.migrate(self.dsn)
            self.provisioned = {"database_created": created,
                                "migrations_applied": [m.filename for m in applied]}
        return self.dsn


def state_document(size: int = STATE_BYTES) -> dict:
    """A realistic session state whose compact JSON is exactly ``size`` bytes."""
    doc = {
        "user": {"id": "u-7f3a9c", "locale": "en-GB", "roles": ["reader", "editor"]},
        "cart": [{"sku": f"SKU-{i:05d}", "qty": i % 3 + 1, "price_cents": 1299 + i} for i in range(3)],
        "flags": {"beta": True, "dark_mode": False},
        "pad": "",
    }
    base = len(json.dumps(doc, separators=(",", ":")))
    if size < base:
        raise ValueError(f"state size must be at least {base} bytes")
    doc["pad"] = "x" * (size - base)
    return doc


def state_json(size: int = STATE_BYTES) -> str:
    encoded = json.dumps(state_document(size), separators=(",", ":"))
    assert len(encoded) == size
    return encoded
