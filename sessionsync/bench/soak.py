"""``sessionsync soak``: a running server under a client's load, then an exact
durability check.

Threads, each with one keep-alive connection (http.client), run a mix of
reads, compare-and-set updates (GET, then PUT with If-Match, retried on a
412), creates and deletes (If-Match) over a pool of sessions of the run's
own (ids ``<prefix>-<n>``), for a fixed duration.  Every acknowledged write
is recorded with its version and the state sent.  After the load, the
check waits (bounded) for the pipeline to persist, then requires:

* every acknowledged write in ``sync_events`` (one row per session and
  version), with its event type and its content;
* no row the run did not acknowledge, except for writes whose answer never
  came (a transport error: the server may have applied them);
* ``sync_sessions`` at the highest acknowledged version of each session,
  with its state, or marked deleted when that write was a delete.

It reports latency by route, the persistence lag of the run's events
(``persisted_at - occurred_at``: both clocks on the servers' machine), what
was acknowledged against what was persisted per second (the worker's rate),
the outbox and queue depths, the relay's share (``OutboxRelayed`` metric
lines in the server's log, over acknowledged writes) and the resident
memory of the server and of LocalStack over time.

Everything is bounded: the load by its duration, each request by a timeout,
each update by a number of retries, the persistence wait by its own timeout.
"""
from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.domain.events import CREATED, DELETED, UPDATED
from sessionsync.bench.harness import in_threads
from sessionsync.bench.http_client import HttpClient, RouteStats, TransportError, summarize_routes
from sessionsync.bench.stats import percentile

OPERATIONS = ("read", "update", "create", "delete")
DEFAULT_MIX = "read=60,update=30,create=5,delete=5"
EVENT_TYPES = {"create": CREATED, "update": UPDATED, "delete": DELETED}
# A 503 with Retry-After is waited out and sent again, at most this many times.
UNAVAILABLE_RETRIES = 10
# In the server's log: the relay's metric line, and the inline send's failure.
RELAYED_METRIC = "OutboxRelayed"
INLINE_FAILURE_MESSAGE = "SQS send failed; the outbox relay will retry"


def parse_mix(text: str) -> dict[str, int]:
    """``read=60,update=30,create=5,delete=5`` -> weights.  Raises ValueError."""
    weights = dict.fromkeys(OPERATIONS, 0)
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in weights:
            raise ValueError(f"unknown operation {name!r} (choose from {', '.join(OPERATIONS)})")
        try:
            weights[name] = int(value)
        except ValueError:
            raise ValueError(f"{name} needs a whole number weight, got {value!r}") from None
        if weights[name] < 0:
            raise ValueError(f"{name} has a negative weight")
    if not sum(weights.values()):
        raise ValueError("the mix has no operation with a weight above 0")
    return weights


@dataclass(frozen=True)
class SoakOptions:
    url: str
    api_key: str
    database_url: str
    threads: int = 8
    duration: float = 30.0
    sessions: int = 200
    mix: Mapping[str, int] = field(default_factory=lambda: parse_mix(DEFAULT_MIX))
    state_bytes: int = 100
    request_timeout: float = 10.0
    max_retries: int = 20
    #: how long to wait after the load for every acknowledged write to persist
    settle_timeout: float = 180.0
    sample_interval: float = 1.0
    #: the server's log (its stdout and stderr), for the relay's share
    server_log: Path | None = None
    #: label -> PID whose resident memory is sampled
    pids: Mapping[str, int] = field(default_factory=dict)
    prefix: str = field(default_factory=lambda: f"soak-{uuid.uuid4().hex[:8]}")
    seed: int | None = None


@dataclass(frozen=True)
class Ack:
    """A write the server acknowledged: what must be in PostgreSQL."""
    session_id: str
    version: int
    kind: str  # create | update | delete
    state: dict[str, Any] | None


@dataclass
class ThreadStats(RouteStats):
    acks: list[Ack] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    conflicts: int = 0
    gave_up: int = 0
    gone: int = 0
    stale_reads: int = 0
    #: writes whose answer never came, or was a 503: applied or not, nobody knows
    unknown_writes: int = 0
    #: 503s with Retry-After, waited out and sent again (the API's "retry later")
    unavailable: Counter = field(default_factory=Counter)
    ops: Counter = field(default_factory=Counter)


class Pool:
    """The live sessions (shared by the threads) and the next new id."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self._live: list[str] = []
        self._index: dict[str, int] = {}
        self._next = 0

    def new_id(self) -> str:
        with self._lock:
            self._next += 1
            return f"{self.prefix}-{self._next:07d}"

    def add(self, session_id: str) -> None:
        with self._lock:
            if session_id not in self._index:
                self._index[session_id] = len(self._live)
                self._live.append(session_id)

    def pick(self, rng: random.Random) -> str | None:
        with self._lock:
            return rng.choice(self._live) if self._live else None

    def discard(self, session_id: str) -> bool:
        """Remove it; False when another thread already did."""
        with self._lock:
            at = self._index.pop(session_id, None)
            if at is None:
                return False
            last = self._live.pop()
            if last != session_id:
                self._live[at] = last
                self._index[last] = at
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)


# a lost If-Match is a 412 PreconditionFailed (RFC 9110), not the 409 of expected_version
_EXPECTED = {"GET": {200, 404}, "PUT": {200, 404, 412}, "POST": {201}, "DELETE": {204, 404, 412}}


class Soaker:
    """One thread's client loop."""

    def __init__(self, index: int, options: SoakOptions, pool: Pool, stats: ThreadStats) -> None:
        self.index = index
        self.options = options
        self.pool = pool
        self.stats = stats
        self.client = HttpClient(options.url, options.api_key, options.request_timeout, stats)
        self.rng = random.Random(None if options.seed is None else options.seed * 1000 + index)
        self.seen: dict[str, int] = {}  # session -> highest version this thread acked or read
        self.counter = 0
        self.padding = "x" * max(0, options.state_bytes - 40)

    def _state(self) -> dict[str, Any]:
        self.counter += 1
        return {"thread": self.index, "n": self.counter, "pad": self.padding}

    def _call(self, route: str, method: str, path: str, body: Any = None,
              headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request, sent again after a 503 with Retry-After (as the API
        asks, a bounded number of times).  Raises TransportError (recorded
        as an error) when no answer came."""
        for _ in range(UNAVAILABLE_RETRIES):
            try:
                status, reply_headers, data = self.client.request(route, method, path, body, headers)
            except TransportError as exc:
                self.stats.errors.append(str(exc))
                raise
            retry_after = reply_headers.get("retry-after", "")
            if status != 503 or not retry_after.isdigit():
                break
            self.stats.unavailable[route] += 1
            # a write refused with a 503 may have been applied all the same
            self.stats.unknown_writes += method != "GET"
            time.sleep(min(float(retry_after), self.options.request_timeout))
        return status, reply_headers, data

    def _unexpected(self, route: str, status: int, body: bytes) -> None:
        self.stats.errors.append(f"{route}: HTTP {status}: {body[:200]!r}")

    def _ack(self, session_id: str, version: int, kind: str, state: dict[str, Any] | None) -> None:
        self.stats.acks.append(Ack(session_id, version, kind, state))
        self.seen[session_id] = max(self.seen.get(session_id, 0), version)

    # --- operations ---------------------------------------------------------

    def create(self, session_id: str | None = None) -> None:
        session_id = session_id or self.pool.new_id()
        state = self._state()
        try:
            status, _, body = self._call("POST /sessions", "POST", "/sessions",
                                               {"session_id": session_id, "state": state})
        except TransportError:
            self.stats.unknown_writes += 1
            return
        if status == 201:
            self._ack(session_id, json.loads(body)["version"], "create", state)
            self.pool.add(session_id)
        else:
            self._unexpected("POST /sessions", status, body)

    def create_all(self, session_ids: Sequence[str]) -> None:
        for session_id in session_ids:
            self.create(session_id)

    def _get(self, session_id: str) -> int | None:
        """The current version, None when gone (404).  Raises TransportError."""
        status, _, body = self._call("GET /sessions/{id}", "GET", f"/sessions/{session_id}")
        if status == 404:
            self.stats.gone += 1
            self.pool.discard(session_id)
            return None
        if status != 200:
            self._unexpected("GET /sessions/{id}", status, body)
            return None
        version = json.loads(body)["version"]
        if version < self.seen.get(session_id, 0):
            # this connection acked or read a later version before
            self.stats.stale_reads += 1
            self.stats.errors.append(f"stale read of {session_id}: {version} after "
                                     f"{self.seen[session_id]}")
        self.seen[session_id] = max(self.seen.get(session_id, 0), version)
        return version

    def read(self, session_id: str) -> None:
        try:
            self._get(session_id)
        except TransportError:
            pass

    def update(self, session_id: str) -> None:
        self._compare_and_set(session_id, "PUT /sessions/{id}", "update")

    def delete(self, session_id: str) -> None:
        if not self.pool.discard(session_id):
            return  # another thread is deleting it
        if not self._compare_and_set(session_id, "DELETE /sessions/{id}", "delete"):
            self.pool.add(session_id)

    def _compare_and_set(self, session_id: str, route: str, kind: str) -> bool:
        """GET, then the write with If-Match, again on a 412 (bounded).
        True when acknowledged."""
        method = route.split()[0]
        for _ in range(self.options.max_retries):
            try:
                version = self._get(session_id)
            except TransportError:
                return False
            if version is None:
                return False
            state = self._state() if kind == "update" else None
            try:
                status, _, body = self._call(
                    route, method, f"/sessions/{session_id}", state and {"state": state},
                    {"If-Match": f'"{version}"'})
            except TransportError:
                self.stats.unknown_writes += 1
                return False
            if status in (200, 204):
                new_version = json.loads(body)["version"] if status == 200 else version + 1
                self._ack(session_id, new_version, kind, state)
                return True
            if status == 412:
                self.stats.conflicts += 1
                continue
            if status == 404:
                self.stats.gone += 1
                self.pool.discard(session_id)
            if status not in _EXPECTED[method]:
                self._unexpected(route, status, body)
            return False
        self.stats.gave_up += 1
        return False

    def run_mix(self, deadline: float) -> None:
        names = [n for n in OPERATIONS if self.options.mix.get(n)]
        weights = [self.options.mix[n] for n in names]
        while time.monotonic() < deadline:
            op = self.rng.choices(names, weights)[0]
            session_id = None if op == "create" else self.pool.pick(self.rng)
            if session_id is None:
                op = "create"  # every session was deleted: make one
            self.stats.ops[op] += 1
            getattr(self, op)(*(() if op == "create" else (session_id,)))
        self.client.close()


# --- sampling: depths, rows persisted, memory ---------------------------------

def rss_mb(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux /proc), None when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def listening_pid(port: int) -> int | None:
    """The PID of the process listening on a TCP port of this machine (Linux
    /proc; needs permission to read its file descriptors), else None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if str(fd.readlink()) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def persisted_count(conn: Any, prefix: str, since: float) -> int:
    """Rows of the run's sessions persisted since ``since`` (epoch seconds)."""
    row = conn.execute(
        "SELECT count(*) FROM sync_events WHERE persisted_at >= to_timestamp(%s) "
        "AND starts_with(session_id, %s)", (since, prefix + "-")).fetchone()
    return int(row[0])


class Sampler:
    """Every ``interval``: acknowledged writes so far, rows persisted, the
    probes' values (outbox and queue depth) and memory, until stopped."""

    def __init__(self, options: SoakOptions, acked: Callable[[], int],
                 probes: Mapping[str, Callable[[], float | None]], connect: Callable[[], Any],
                 started_at: float, on_sample: Callable[[dict[str, Any]], object] = lambda _: None
                 ) -> None:
        self.options = options
        self.on_sample = on_sample
        self.acked = acked
        self.probes = probes
        self.connect = connect
        self.started_at = started_at
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def _run(self) -> None:
        conn = None
        while not self.stop.is_set():
            sample: dict[str, Any] = {"t": round(time.time() - self.started_at, 2),
                                      "acknowledged": self.acked()}
            try:
                conn = conn or self.connect()
                sample["persisted"] = persisted_count(conn, self.options.prefix, self.started_at)
            except Exception:  # a sampler must not end the run: the gap shows as None
                sample["persisted"] = None
                conn = None
            for name, probe in self.probes.items():
                try:
                    sample[name] = probe()
                except Exception:
                    sample[name] = None
            sample["rss_mb"] = {label: rss_mb(pid) for label, pid in self.options.pids.items()}
            self.samples.append(sample)
            self.on_sample(sample)
            self.stop.wait(self.options.sample_interval)
        if conn is not None:
            conn.close()

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


# --- the durability check -----------------------------------------------------

@dataclass
class Durability:
    checked_writes: int = 0
    checked_sessions: int = 0
    missing: list[str] = field(default_factory=list)
    wrong_content: list[str] = field(default_factory=list)
    unacknowledged_rows: list[str] = field(default_factory=list)
    sessions_wrong: list[str] = field(default_factory=list)
    deletes_unmarked: list[str] = field(default_factory=list)
    tolerated_unacknowledged: int = 0

    @property
    def exact(self) -> bool:
        return not (self.missing or self.wrong_content or self.sessions_wrong
                    or self.deletes_unmarked
                    or len(self.unacknowledged_rows) > self.tolerated_unacknowledged)

    def summary(self, examples: int = 5) -> dict[str, Any]:
        out: dict[str, Any] = {"exact": self.exact, "checked_writes": self.checked_writes,
                               "checked_sessions": self.checked_sessions,
                               "tolerated_unacknowledged": self.tolerated_unacknowledged}
        for name in ("missing", "wrong_content", "unacknowledged_rows", "sessions_wrong",
                     "deletes_unmarked"):
            found = getattr(self, name)
            out[name] = len(found)
            if found:
                out[f"{name}_examples"] = found[:examples]
        return out


def check_durability(conn: Any, acks: Sequence[Ack], unknown_writes: int) -> Durability:
    """Compare what the server acknowledged with sync_events and sync_sessions."""
    result = Durability(checked_writes=len(acks), tolerated_unacknowledged=unknown_writes)
    by_key = {(a.session_id, a.version): a for a in acks}
    last: dict[str, Ack] = {}
    for ack in acks:
        if ack.session_id not in last or ack.version > last[ack.session_id].version:
            last[ack.session_id] = ack
    ids = sorted(last)
    result.checked_sessions = len(ids)
    rows = conn.execute("SELECT session_id, version, event_type, state FROM sync_events "
                        "WHERE session_id = ANY(%s)", (ids,)).fetchall()
    found = set()
    for session_id, version, event_type, state in rows:
        found.add((session_id, version))
        acked = by_key.get((session_id, version))
        if acked is None:
            result.unacknowledged_rows.append(f"{session_id}:{version}")
        elif event_type != EVENT_TYPES[acked.kind] or state != acked.state:
            result.wrong_content.append(f"{session_id}:{version} is {event_type} {state!r}")
    result.missing = [f"{sid}:{v}" for sid, v in sorted(by_key) if (sid, v) not in found]
    sessions = {sid: (version, deleted, state) for sid, version, deleted, state in conn.execute(
        "SELECT session_id, version, deleted, state FROM sync_sessions WHERE session_id = ANY(%s)",
        (ids,)).fetchall()}
    for session_id, ack in last.items():
        version, deleted, state = sessions.get(session_id, (None, None, None))
        if version != ack.version:
            result.sessions_wrong.append(f"{session_id}: version {version}, acknowledged {ack.version}")
        elif ack.kind == "delete" and not deleted:
            result.deletes_unmarked.append(session_id)
        elif ack.kind != "delete" and (deleted or state != ack.state):
            result.sessions_wrong.append(f"{session_id}: state {state!r} deleted={deleted}")
    return result


def persistence_lags(conn: Any, acks: Sequence[Ack]) -> list[float]:
    """Seconds from each acknowledged event's occurred_at to its persisted_at."""
    ids = sorted({a.session_id for a in acks})
    wanted = {(a.session_id, a.version) for a in acks}
    rows = conn.execute("SELECT session_id, version, "
                        "extract(epoch FROM persisted_at - occurred_at)::float8 FROM sync_events "
                        "WHERE session_id = ANY(%s)", (ids,)).fetchall()
    return sorted(max(0.0, lag) for sid, version, lag in rows if (sid, version) in wanted)


# --- the relay's share, from the server's log ---------------------------------

def log_offset(path: Path | None) -> int:
    try:
        return path.stat().st_size if path else 0
    except OSError:
        return 0


def relay_counts(path: Path, offset: int) -> dict[str, float]:  # counts; the caller adds a share
    """Entries the relay sent and inline sends that failed, in the lines the
    server wrote after ``offset``."""
    relayed = failures = 0
    with path.open("rb") as log:
        log.seek(offset)
        for raw in log:
            if not raw.startswith(b"{"):
                continue
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if RELAYED_METRIC in doc:
                relayed += int(doc[RELAYED_METRIC])
            elif doc.get("message") == INLINE_FAILURE_MESSAGE:
                failures += 1
    return {"relayed": relayed, "inline_send_failures": failures}


# --- the run ------------------------------------------------------------------

def _rate(samples: Sequence[dict[str, Any]], key: str, start: float, end: float) -> float | None:
    """Per-second growth of ``key`` between the samples nearest ``start`` and ``end``."""
    usable = [s for s in samples if s.get(key) is not None]
    if not usable or end <= start:
        return None
    first = min(usable, key=lambda s: abs(s["t"] - start))
    last = min(usable, key=lambda s: abs(s["t"] - end))
    if last["t"] <= first["t"]:
        return None
    return round((last[key] - first[key]) / (last["t"] - first["t"]), 1)


def _peak(samples: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return max(values) if values else None


def _memory(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    labels = {label for s in samples for label in s.get("rss_mb", {})}
    for label in sorted(labels):
        values = [s["rss_mb"][label] for s in samples if s["rss_mb"].get(label) is not None]
        if values:
            out[label] = {"start": values[0], "peak": max(values), "end": values[-1]}
    return out


def run_soak(options: SoakOptions, *, connect: Callable[[], Any],
             probes: Mapping[str, Callable[[], float | None]] | None = None,
             log: Callable[[str], None] = lambda _: None,
             on_sample: Callable[[dict[str, Any]], object] = lambda _: None) -> dict[str, Any]:
    """Load, wait for persistence, check; the report (a JSON-able dict).

    ``connect`` opens a PostgreSQL connection (psycopg, autocommit) to the
    server's database; ``probes`` are sampled every ``sample_interval``
    (name -> callable returning a number or None), each sample then given
    to ``on_sample``; ``log`` hears of each phase.
    """
    pool = Pool(options.prefix)
    stats = [ThreadStats() for _ in range(options.threads)]
    soakers = [Soaker(i, options, pool, s) for i, s in enumerate(stats)]
    started_at = time.time()
    offset = log_offset(options.server_log)

    def acked() -> int:
        return sum(len(s.acks) for s in stats)

    def each(work: Callable[[Soaker, float], object], timeout: float) -> None:
        in_threads(len(soakers), lambda i, released: work(soakers[i], released),
                   timeout=timeout, name="soak")

    bound = options.request_timeout * (options.max_retries + 2) * 2
    with Sampler(options, acked, probes or {}, connect, started_at, on_sample) as sampler:
        log(f"creating {options.sessions} sessions ({options.prefix}-*) with {options.threads} threads")
        initial = [pool.new_id() for _ in range(options.sessions)]
        each(lambda s, _: s.create_all(initial[s.index::options.threads]),
             timeout=bound + 2 * options.request_timeout * (options.sessions // options.threads))
        load_start = time.time() - started_at
        acked_before_load = acked()
        log(f"load: {options.threads} threads for {options.duration:g}s, mix {dict(options.mix)}")
        each(lambda s, released: s.run_mix(released + options.duration),
             timeout=options.duration + bound)
        load_end = time.time() - started_at
        all_acks = [a for s in stats for a in s.acks]
        unknown = sum(s.unknown_writes for s in stats)
        log(f"waiting up to {options.settle_timeout:g}s for {len(all_acks)} writes to persist")
        conn = connect()
        try:
            deadline = time.monotonic() + options.settle_timeout
            while True:
                durability = check_durability(conn, all_acks, unknown)
                if durability.exact or time.monotonic() >= deadline:
                    break
                time.sleep(min(1.0, options.sample_interval))
            settled = time.time() - started_at
            lags = persistence_lags(conn, all_acks)
        finally:
            conn.close()
        time.sleep(min(options.sample_interval, 1.0))  # one last sample after the drain
    samples = sampler.samples
    load_acked = acked() - acked_before_load
    writes = Counter(a.kind for a in all_acks)
    relay: dict[str, float] | None = None
    if options.server_log is not None and options.server_log.exists():
        relay = relay_counts(options.server_log, offset)
        relay["share"] = round(relay["relayed"] / len(all_acks), 4) if all_acks else 0.0
    errors = [e for s in stats for e in s.errors]
    return {
        "options": {**{k: v for k, v in asdict(options).items() if k not in ("api_key", "database_url")},
                    "server_log": str(options.server_log) if options.server_log else None},
        "seconds": {"load_start": round(load_start, 2), "load_end": round(load_end, 2),
                    "persisted_by": round(settled, 2)},
        "operations": dict(sum((s.ops for s in stats), Counter())),
        "routes": summarize_routes(stats),
        "writes": {"acknowledged": len(all_acks), "by_kind": dict(writes),
                   "acknowledged_per_second_under_load":
                       round(load_acked / (load_end - load_start), 1) if load_end > load_start else None,
                   "conflicts_retried": sum(s.conflicts for s in stats),
                   "gave_up_after_retries": sum(s.gave_up for s in stats),
                   "gone_404": sum(s.gone for s in stats),
                   "unavailable_503_retried": dict(sum((s.unavailable for s in stats), Counter())),
                   "unknown_outcome": unknown},
        "errors": {"count": len(errors), "stale_reads": sum(s.stale_reads for s in stats),
                   "examples": errors[:10]},
        "durability": durability.summary(),
        "persistence_lag_seconds": (
            {"n": len(lags), "p50": round(percentile(lags, 50), 3),
             "p99": round(percentile(lags, 99), 3), "max": round(lags[-1], 3)} if lags else None),
        "pipeline": {"persisted_per_second_under_load": _rate(samples, "persisted", load_start, load_end),
                     "persisted_per_second_draining": _rate(samples, "persisted", load_end, settled),
                     "outbox_peak": _peak(samples, "outbox"),
                     "queue_peak": _peak(samples, "queue")},
        "relay": relay,
        "memory_mb": _memory(samples),
        "timeline": samples,
    }


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """The report in a few lines for a terminal."""
    lines = []
    w = report["writes"]
    lines.append(f"writes acknowledged: {w['acknowledged']} {w['by_kind']} "
                 f"({w['acknowledged_per_second_under_load']}/s under load; "
                 f"{w['conflicts_retried']} conflicts retried, {w['unknown_outcome']} unknown outcome)")
    if w["unavailable_503_retried"]:
        lines.append(f"503 with Retry-After, waited out and sent again: {w['unavailable_503_retried']}")
    for route, r in report["routes"].items():
        lines.append(f"  {route:<24} n={r['n']:<7} p50 {r['p50_ms']:>7.2f} ms  p99 {r['p99_ms']:>8.2f} ms  "
                     f"max {r['max_ms']:>8.2f} ms  {r['statuses']}")
    d = report["durability"]
    lines.append("durability: " + ("EXACT" if d["exact"] else "FAILED") + " " + json.dumps(
        {k: v for k, v in d.items() if k != "exact"}))
    lag = report["persistence_lag_seconds"]
    if lag:
        lines.append(f"persistence lag: p50 {lag['p50']} s, p99 {lag['p99']} s, max {lag['max']} s")
    p = report["pipeline"]
    lines.append(f"worker: {p['persisted_per_second_under_load']} persisted/s under load, "
                 f"{p['persisted_per_second_draining']}/s draining; outbox peak {p['outbox_peak']}, "
                 f"queue peak {p['queue_peak']}")
    relay = report["relay"]
    lines.append("relay: not measured (give --server-log)" if relay is None else
                 f"relay: {relay['relayed']} events relayed ({relay['share']:.1%} of writes), "
                 f"{relay['inline_send_failures']} inline send failures")
    for label, m in report["memory_mb"].items():
        lines.append(f"memory {label}: {m['start']} MB -> peak {m['peak']} MB -> {m['end']} MB")
    e = report["errors"]
    lines.append(f"errors: {e['count']}" + (f" e.g. {e['examples'][:3]}" if e["count"] else ""))
    return lines


def queue_depth(sqs: Any, queue_url: str) -> int:
    """Messages waiting or in flight in the queue (SQS's approximations)."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return sum(int(attributes.get(name, 0)) for name in names)
