"""What the sections share, so that each reads as its experiment alone.

* the run's Redis as a section uses it (``SectionRedis``): the service's
  client and store, a plain redis-py client for the floors, sessions of the
  section's own, removed afterwards when the Redis is not the run's;
* ``Updater``: compare-and-set updates of one session, version after version;
* servers and processes: ``free_port``, ``stop_process`` (every process the
  bench starts is stopped by its PID), ``serve_process`` (``sessionsync
  serve`` on a free port); client threads and client processes released
  together (``in_threads``, ``in_processes``);
* the server's own time per call (``server_usec``, INFO commandstats);
* PostgreSQL rows of a section (``verify_persisted``, ``delete_rows``) and a
  LocalStack queue of its own (``local_queue``).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from sessionsync.bench.context import STATE_BYTES, BenchContext, state_json

if TYPE_CHECKING:
    import redis

    from chalicelib.adapters.redis.client import RedisClient
    from chalicelib.adapters.redis.store import SessionStore

T = TypeVar("T")

#: the least a script call costs: the floor of every write
TRIVIAL_SCRIPT = "return 1"
#: outbox entries acked per call (one ZREM and one HDEL per bucket)
ACK_CHUNK = 1000


# -- Redis --------------------------------------------------------------------------

def ack_all(store: SessionStore, event_ids: Sequence[str], chunk: int = ACK_CHUNK) -> None:
    """Drop outbox entries, as the producer does once SQS took them (untimed
    housekeeping: the outbox stays at its steady-state size)."""
    for i in range(0, len(event_ids), chunk):
        store.outbox_ack(list(event_ids[i:i + chunk]))


def delete_session_keys(client: RedisClient, session_ids: Iterable[str]) -> None:
    """Remove sessions, their markers and their outbox entries (only needed
    on a Redis the run does not own: ``--redis-url``)."""
    from chalicelib.adapters.redis.keys import bucket_of, marker_key, outbox_keys, session_keys

    session_ids = set(session_ids)
    pipe = client.pipeline(transaction=False)
    for sid in session_ids:
        session, markers = session_keys(sid)[:2]
        pipe.unlink(session, marker_key(sid))
        pipe.hdel(markers, sid)
    pipe.execute()
    # outbox entries are named "<id>:<version>"
    for bucket in {bucket_of(sid) for sid in session_ids}:
        index, data = outbox_keys(bucket)
        ours = [eid for eid in cast(list[bytes], client.zrange(index, 0, -1))
                if eid.decode().rsplit(":", 1)[0] in session_ids]
        if ours:
            client.zrem(index, *ours)
            client.hdel(data, *ours)


class Updater:
    """``store.update`` of one session at its next version, one call each.

    Every call commits; the event ids stay in ``pending`` until ``ack``.
    """

    __slots__ = ("pending", "session_id", "state", "store", "version")

    def __init__(self, store: SessionStore, session_id: str, state: str, version: int = 1) -> None:
        self.store = store
        self.session_id = session_id
        self.state = state
        self.version = version
        self.pending: list[str] = []

    def __call__(self) -> Any:
        result = self.store.update(self.session_id, self.state, self.version)
        self.version += 1
        self.pending.append(result.event_id)
        return result

    def ack(self) -> None:
        ack_all(self.store, self.pending)
        self.pending.clear()


class SectionRedis:
    """A section's view of the run's Redis.

    ``client``/``store``: the client the service builds (``connect_redis``)
    and its store; ``raw``: redis-py with its defaults, for the floors;
    ``state``: the 1 KB state.  What ``create`` makes is removed on exit
    when the Redis is not the run's own.
    """

    def __init__(self, ctx: BenchContext, section: str, *, timeout: float | None = None) -> None:
        import redis

        from chalicelib.adapters.redis.client import connect_redis
        from chalicelib.adapters.redis.store import SessionStore
        from chalicelib.config import Settings

        self.ctx = ctx
        self.prefix = ctx.session_prefix(section)
        self.state = state_json(STATE_BYTES)
        settings = Settings(redis_url=ctx.redis_url)
        if timeout is not None:  # a loaded machine must not trip it; it costs nothing per call
            settings = Settings(redis_url=ctx.redis_url, redis_timeout=timeout)
        self.client = connect_redis(settings)
        self.raw: redis.Redis = redis.Redis.from_url(ctx.redis_url)
        self.store = SessionStore(self.client, channel=f"{self.prefix}-updates")
        self.session_ids: list[str] = []
        self.other_keys: list[str] = []

    def create(self, name: str, state: str | None = None, *, ack: bool = False) -> str:
        """Session ``<prefix>-<name>``, version 1; ``ack``: its outbox entry dropped."""
        session_id = f"{self.prefix}-{name}"
        created = self.store.create(session_id, self.state if state is None else state, 3600)
        self.session_ids.append(session_id)
        if ack:
            self.store.outbox_ack([created.event_id])
        return session_id

    def updater(self, name: str) -> Updater:
        """A new session and the updates of it."""
        return Updater(self.store, self.create(name), self.state)

    def close(self) -> None:
        try:
            if not self.ctx.redis_is_own:
                delete_session_keys(self.raw, self.session_ids)
                for i in range(0, len(self.other_keys), ACK_CHUNK):
                    self.raw.unlink(*self.other_keys[i:i + ACK_CHUNK])
        finally:
            self.raw.close()
            self.client.close()

    def __enter__(self) -> SectionRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def command_stats(client: redis.Redis, command: str) -> tuple[int, int]:
    """(calls, usec) of one command in INFO commandstats."""
    entry = client.info("commandstats").get(f"cmdstat_{command}", {})
    return entry.get("calls", 0), entry.get("usec", 0)


def server_usec(client: redis.Redis, ops: Mapping[str, tuple[str, Callable[[], object]]],
                calls: int, rounds: int = 1) -> dict[str, float]:
    """Redis's own microseconds per call of each op (name -> (command, op)).

    Blocks of one op at a time, the ops taking turns for ``rounds``; each
    op's figure is the median of its blocks (commandstats times a command
    by the wall clock: a block in which the server lost its CPU is an
    outlier, not a shift).  Untimed on the client side; other clients'
    calls of the same command would count too (the bench's servers have none).
    """
    per_block: dict[str, list[float]] = {name: [] for name in ops}
    block = max(1, calls // rounds)
    for _ in range(rounds):
        for name, (command, op) in ops.items():
            calls0, usec0 = command_stats(client, command)
            for _ in range(block):
                op()
            calls1, usec1 = command_stats(client, command)
            if calls1 > calls0:
                per_block[name].append((usec1 - usec0) / (calls1 - calls0))
    return {name: round(statistics.median(values), 2) if values else 0.0
            for name, values in per_block.items()}


# -- processes and threads ------------------------------------------------------------

# A Redis Cluster node also listens on its port + 10000 (the cluster bus), so
# a node's port must leave room for that below 65536.
_HIGHEST_PORT = 65535 - 10000


def free_port() -> int:
    """A free loopback port the kernel chose, low enough for a cluster node."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port <= _HIGHEST_PORT:
            return port
    raise RuntimeError(f"no free port at or below {_HIGHEST_PORT} in 100 tries")


_PR_SET_PDEATHSIG = 1


def child_setup(*, cpus: Iterable[int] | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` for a process the bench starts: it dies with the
    bench, even one killed by SIGKILL (a test's timeout, an operator's
    ``kill -9``), where ``stop_process`` never runs and a redis-server or a
    ``serve`` would be left behind.  Linux sends the child SIGKILL when the
    thread that started it ends (PR_SET_PDEATHSIG): only a child of the main
    thread gets it, as a child of a worker thread would die with that thread.
    Elsewhere, and for those, the bench's process group still reaches them
    (``os.killpg`` of a bench started in a session of its own).
    ``cpus``: the child's CPUs."""
    parent = os.getpid()
    prctl = None
    if threading.current_thread() is threading.main_thread() and sys.platform.startswith("linux"):
        import ctypes
        # looked up before the fork: the child only calls it (no import, no lock)
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    cpu_set = None if cpus is None else set(cpus)

    def setup() -> None:
        if cpu_set is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpu_set)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the bench died before prctl took effect
                os._exit(1)
    return setup


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process the bench started, by its PID: SIGTERM, SIGKILL after ``grace``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


@contextmanager
def serve_process(workdir: Path, env: Mapping[str, str], *args: str,
                  entry: Sequence[str] = ("-c", "from sessionsync.cli import main; main()")
                  ) -> Iterator[tuple[int, Path]]:
    """``sessionsync serve *args`` on a free port with ``env`` over this
    process's environment, on every CPU (the bench itself may be pinned);
    (port, its log) once it answers, stopped on exit.  ``entry``: the
    interpreter's arguments that run the CLI."""
    from sessionsync.project import project_dir

    environment = {**os.environ, **env}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(project_dir()), environment.get("PYTHONPATH")]))
    port = free_port()
    log = workdir / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *entry, "serve", *args, "--port", str(port)],
            cwd=workdir, env=environment, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=child_setup(cpus=range(os.cpu_count() or 1)))
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sessionsync serve exited:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # an answer all the same
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sessionsync serve on {port} did not answer:\n"
                                       f"{log.read_text()[-3000:]}") from None
                time.sleep(0.1)
        yield port, log
    finally:
        stop_process(proc)


def in_threads(count: int, body: Callable[[int, float], T], *, timeout: float,
               name: str = "bench") -> tuple[list[T], float]:
    """``body(i, released_at)`` in ``count`` threads, released together
    (``released_at``: time.monotonic() at the release); their results in
    order and the seconds from the release to the last one's end.  Raises
    the first exception a thread raised, TimeoutError past ``timeout``."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []
    go = threading.Barrier(count + 1)
    released: list[float] = []

    def run(i: int) -> None:
        try:
            go.wait(timeout=60)
            results[i] = body(i, released[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"{name}-{i}", daemon=True)
               for i in range(count)]
    for thread in threads:
        thread.start()
    released.append(time.monotonic())
    go.wait(timeout=60)
    deadline = released[0] + timeout
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    elapsed = time.monotonic() - released[0]
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"{name} threads still running after {timeout:.0f}s")
    if errors:
        raise errors[0]
    return results, elapsed


@contextmanager
def forked(target: Callable[..., None], args: Sequence[tuple[Any, ...]], *,
           grace: float = 60.0) -> Iterator[list[Any]]:
    """One forked process per ``args`` entry running ``target(*entry)``;
    on exit each is joined, and killed (by its PID) if still running after
    ``grace`` seconds."""
    fork = multiprocessing.get_context("fork")
    procs: list[Any] = [fork.Process(target=target, args=entry, daemon=True) for entry in args]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            if proc.pid is None:
                continue
            proc.join(grace)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def in_processes(count: int, prepare: Callable[[int], Callable[[float], T]], *, timeout: float,
                 before: Callable[[], object] | None = None,
                 setup_timeout: float = 60.0) -> tuple[list[T], float]:
    """Client processes released together, each a fork of this one.

    Process ``i`` runs ``prepare(i)`` (connect, warm up), which returns the
    work; once every process is ready, ``before()`` runs here (read the
    servers' counters), then all are released at once and each returns
    ``work(released_at)`` (time.monotonic() at the release), which must be
    picklable.  Their results in order and the seconds from the release to
    the last result.  A process that fails fails the call with its error.
    """
    import queue
    import traceback

    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(count + 1)
    results = fork.Queue()
    released = fork.Value("d", 0.0)

    def child(i: int) -> None:
        try:
            work = prepare(i)
            barrier.wait(setup_timeout)  # ready
            barrier.wait(setup_timeout)  # released
            results.put((i, work(released.value), None))
        except BaseException as exc:
            barrier.abort()  # the others, and the parent, stop waiting at once
            results.put((i, None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"))

    got: list[tuple[int, Any, str | None]] = []
    with forked(child, [(i,) for i in range(count)], grace=timeout + setup_timeout):
        try:
            barrier.wait(setup_timeout)
            if before is not None:
                before()
            released.value = time.monotonic()
            barrier.wait(setup_timeout)
            deadline = released.value + timeout
            for _ in range(count):
                got.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
        except (threading.BrokenBarrierError, queue.Empty) as exc:
            while True:
                try:
                    got.append(results.get(timeout=1))
                except queue.Empty:
                    break
            errors = [error for _, _, error in got if error]
            raise RuntimeError(errors[0] if errors else f"a client process did not report "
                               f"within {timeout:.0f}s") from exc
        elapsed = time.monotonic() - released.value
    errors = [error for _, _, error in got if error]
    if errors:
        raise RuntimeError(f"a client process failed: {errors[0]}")
    return [result for _, result, _ in sorted(got, key=lambda g: g[0])], elapsed


def widen_affinity() -> None:
    """Let this (child) process run on every CPU: it shares them with
    PostgreSQL and the other clients, not with the pinned Redis alone."""
    try:
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    except (AttributeError, OSError):
        pass


# -- PostgreSQL and SQS ----------------------------------------------------------------

def verify_persisted(conn: Any, prefix: str, bodies: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Every event of ``bodies`` ((event id, body), ids ``<session>:<version>``)
    once in sync_events, every session at its highest version in
    sync_sessions; raises AssertionError otherwise."""
    expected: dict[str, int] = {}
    for event_id, _ in bodies:
        sid, version = event_id.rsplit(":", 1)
        expected[sid] = max(expected.get(sid, 0), int(version))
    pattern = prefix + "-%"
    events = conn.execute("SELECT count(*) FROM sync_events WHERE session_id LIKE %s",
                          (pattern,)).fetchone()[0]
    stored = dict(conn.execute("SELECT session_id, version FROM sync_sessions "
                               "WHERE session_id LIKE %s", (pattern,)).fetchall())
    conn.commit()
    behind = sum(1 for sid, version in expected.items() if stored.get(sid) != version)
    if events != len(bodies) or behind:
        raise AssertionError(f"{prefix}: {events} of {len(bodies)} events persisted, "
                             f"{behind} sessions not at their last version")
    return {"events_persisted": int(events), "sessions": len(expected)}


def delete_rows(conn: Any, prefix: str) -> None:
    """The section's rows in sync_events and sync_sessions."""
    conn.execute("DELETE FROM sync_events WHERE session_id LIKE %s", (prefix + "-%",))
    conn.execute("DELETE FROM sync_sessions WHERE session_id LIKE %s", (prefix + "-%",))
    conn.commit()


@contextmanager
def local_queue(ctx: BenchContext, name: str) -> Iterator[tuple[Any, str]]:
    """(SQS client, URL) of a LocalStack queue of this run's own, deleted on
    exit.  The caller checks ``localstack_sqs_unavailable`` first."""
    from sessionsync.bench.aws_local import sqs_client, temporary_queue

    sqs = sqs_client(ctx.aws_endpoint_url)
    with temporary_queue(sqs, f"sessionsync-bench-{name}-{ctx.run_id}") as url:
        yield sqs, url


def quiet_telemetry(stack: ExitStack) -> None:
    """Log and EMF lines to /dev/null for the run, formatted as ever: their
    cost (a JSON encoding and a write per line, as in Lambda) stays in the
    figures, the lines stay out of the terminal.  ``app`` is imported first:
    its import configures logging itself."""
    from chalicelib.observability import logs, metrics
    from sessionsync.project import import_app

    import_app()
    devnull = stack.enter_context(open(os.devnull, "w"))
    previous = metrics.writer()
    logs.configure(os.environ.get("LOG_LEVEL", "INFO"), stream=devnull)
    metrics.configure(stream=devnull, namespace=previous.namespace, service=previous.service)
    stack.callback(logs.configure)
    stack.callback(metrics.configure, namespace=previous.namespace, service=previous.service,
                   enabled=previous.enabled)
