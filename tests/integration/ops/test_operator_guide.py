"""docs/troubleshooting.md opens with every step of the old guide and what
does the same job in sessionsync.  Every command of that table is read from
the document and run as written (a shell, the binaries it names) against a
served stack: the table stays true or this fails."""
from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

from tests.integration.ops.utils import readme_blocks
from tests.support.constants import API_KEY
from tests.support.ops import PROJECT_DIR, cli_env
from tests.support.pipeline import outbox_entries_of, wait_until
from tests.support.servers import serve_process

pytestmark = [pytest.mark.localstack, pytest.mark.slow]

GUIDE = PROJECT_DIR / "docs" / "troubleshooting.md"
HEADER = "| # | the old guide | in sessionsync | notes |"
# what the table's commands need besides sessionsync; a missing one fails the
# test with what to install (the document names them too)
BINARIES = {"redis-cli": "the Redis client (Debian: redis-tools)",
            "psql": "the PostgreSQL client (Debian: postgresql-client)", "curl": "curl"}
# commands that run until Ctrl-C: run in a terminal, as an operator does
STREAMING = re.compile(r"\b(SUBSCRIBE|MONITOR)\b|--latency|sessionsync watch")
# streaming commands that print the change a write makes while they run
SHOWS_WRITES = re.compile(r"\b(SUBSCRIBE|MONITOR)\b|sessionsync watch")
# the old guide's saved queries, which must run unchanged
SAVED_QUERIES = {10: "SELECT * FROM sync_events ORDER BY timestamp DESC LIMIT 10",
                 11: "SELECT * FROM sync_sessions WHERE session_id = 'xxx'"}


@dataclass(frozen=True)
class Row:
    number: int
    old: str
    commands: list[str]
    equivalent: str


@dataclass(frozen=True)
class Ran:
    command: str
    returncode: int | None  # None: stopped with Ctrl-C, as meant
    out: str
    err: str


def guide_rows() -> list[Row]:
    text = GUIDE.read_text()
    assert HEADER in text, f"{GUIDE.name} lost its table of the old guide"
    rows = []
    for line in text.split(HEADER, 1)[1].splitlines()[2:]:
        if not line.startswith("| "):
            break
        number, old, equivalent, _notes = (cell.strip() for cell in line.strip().strip("|").split(" | "))
        rows.append(Row(int(number), old, re.findall(r"`([^`]+)`", equivalent), equivalent))
    return rows


def test_the_table_has_every_step_of_the_old_guide_with_the_saved_queries_unchanged():
    rows = guide_rows()
    assert [r.number for r in rows] == list(range(1, 19))
    for row in rows:
        if row.number == 17:
            # the retry loop is code, in the README, run by test_readme_retry
            assert not row.commands and "../README.md#conflicts-read-again-re-apply-retry" in row.equivalent
            assert len(readme_blocks()) == 2
        else:
            assert row.commands, f"row {row.number} has no command"
    for number, query in SAVED_QUERIES.items():
        assert f"`{query}`" == rows[number - 1].old
        assert any(query in command for command in rows[number - 1].commands)


def test_sync_events_timestamp_is_the_time_of_the_change_indexed_and_read_only(pg_test_dsn):
    import psycopg
    sid = f"guide-ts-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_test_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO sync_events (session_id, version, event_type, state, occurred_at) "
                     "VALUES (%s, 1, 'session_created', '{}', '2026-01-02T03:04:05.678Z')", (sid,))
        stamp, occurred = conn.execute("SELECT timestamp, occurred_at FROM sync_events "
                                       "WHERE session_id = %s", (sid,)).fetchone()
        index = conn.execute("SELECT indexdef FROM pg_indexes "
                             "WHERE indexname = 'sync_events_timestamp_idx'").fetchone()
        with pytest.raises(psycopg.errors.GeneratedAlways):
            conn.execute("UPDATE sync_events SET timestamp = now() WHERE session_id = %s", (sid,))
    assert stamp == occurred == datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert index is not None and index[0].endswith('("timestamp" DESC)')

def run_in_terminal(command: str, env: dict[str, str], cwd, *, ready: Callable[[str], bool],
                    during: Callable[[], None], done: Callable[[str], bool], timeout: float = 30) -> Ran:
    """Run ``command`` in a pseudo-terminal until ``ready(output)``, call
    ``during()``, wait for ``done(output)``, then press Ctrl-C."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(["bash", "-c", command], stdin=slave, stdout=slave, stderr=slave,
                            env=env, cwd=cwd, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed
                return
            if not data:
                return
            chunks.append(data)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def output() -> str:
        return b"".join(chunks).decode(errors="replace")
    try:
        wait_until(lambda: proc.poll() is not None or ready(output()), timeout=timeout,
                   what=f"{command!r} to start", interval=0.05)
        assert proc.poll() is None, f"{command!r} exited early: {output()}"
        during()
        wait_until(lambda: done(output()), timeout=timeout, what=f"{command!r} to show it",
                   interval=0.05)
    finally:
        # Ctrl-C to the command's own process group (it was started in a new session)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        reader.join(5)
        os.close(master)
    return Ran(command, None, output(), "")


def run(command: str, env: dict[str, str], cwd) -> Ran:
    """``command`` in bash, to its end.  ``sessionsync health`` is run again
    (bounded) until it exits 0: each run is a new process that builds its
    clients within the one-second deadline, which LocalStack on a busy
    machine sometimes misses (as in test_health)."""
    give_up = time.monotonic() + 30
    while True:
        proc = subprocess.run(["bash", "-c", command], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=120)
        if proc.returncode == 0 or "sessionsync health" not in command or time.monotonic() > give_up:
            return Ran(command, proc.returncode, proc.stdout, proc.stderr)


def http(base: str, method: str, path: str, body=None, headers=None) -> dict:
    request = urllib.request.Request(base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {API_KEY}",
                                              "Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.load(reply)


def write(base: str, sid: str, item: str) -> None:
    session = http(base, "GET", f"/sessions/{sid}")
    http(base, "PUT", f"/sessions/{sid}", {"state": {"items": [*session["state"]["items"], item]}},
         {"If-Match": f'"{session["version"]}"'})


def configuration_details(diagnose_json: str) -> dict:
    report = json.loads(diagnose_json)
    return next(f["details"] for f in report["findings"]
                if f["section"] == "configuration" and f["summary"] == "settings load")


def loggers(stderr: str, level: str) -> set[str]:
    """The loggers of the JSON log lines at ``level`` on a command's stderr."""
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return {line["logger"] for line in lines if line.get("level") == level}


def check_rows(*, sid: str, stream_sid: str, redis_url: str) -> dict[int, Callable[[list[Ran]], bool]]:
    """Row -> what its commands must show (by position in the row)."""
    redis_host = "%s:%s" % (urlsplit(redis_url).hostname, urlsplit(redis_url).port)
    return {
        1: lambda r: r[0].out.strip() == "PONG" and "overall: " in r[1].out,
        2: lambda r: (r[0].out.strip() == redis_url
                      and configuration_details(r[1].out)["redis"] == redis_host),
        3: lambda r: "(1 row)" in r[0].out and "overall: " in r[1].out,
        4: lambda r: (0 < int(r[0].out) <= 3600 and f":s:{sid}" in r[1].out
                      and r[1].out.rstrip().endswith("overall: ok")),
        5: lambda r: "used_memory:" in r[0].out and "\nredis\n" in r[1].out,
        6: lambda r: int(r[0].out) >= 4,
        7: lambda r: all(stream_sid in ran.out for ran in r),
        8: lambda r: stream_sid in r[0].out and "sessionsync.redis" in loggers(r[1].err, "DEBUG"),
        9: lambda r: ("min: " in r[0].out and "seconds range" in r[1].out
                      and "PING p50" in r[2].out),
        10: lambda r: sid in r[0].out and "timestamp" in r[0].out.splitlines()[0],
        11: lambda r: sid in r[0].out and "(1 row)" in r[0].out and f":s:{sid}" in r[1].out,
        12: lambda r: set(json.loads(r[0].out)["checks"]) == {"redis", "postgresql", "queue", "dlq"},
        13: lambda r: "overall: " in r[0].out,
        14: lambda r: "overall: " in r[0].out,
        15: lambda r: (json.loads(r[0].out)["failed"] >= 1 and json.loads(r[0].out)["completed"] >= 2
                       and {"waiting", "in_flight", "delayed"} <= set(json.loads(r[0].out)["queue"])),
        16: lambda r: bool(loggers(r[0].err, "DEBUG")),
        18: lambda r: "PermanentPersistenceError" in r[0].out and "22P05" in r[0].out,
    }


def test_every_command_of_the_table_runs_as_written_against_a_served_stack(
        pipeline, pipeline_settings, tmp_path):
    for binary, package in BINARIES.items():
        assert shutil.which(binary), f"{binary} is not installed: install {package}"
    env = cli_env(pipeline_settings, KEY=API_KEY,
                  PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
                  PYTHONPATH=os.pathsep.join(p for p in (str(PROJECT_DIR), os.environ.get("PYTHONPATH"))
                                             if p))
    with serve_process(cli_env(pipeline_settings, OUTBOX_RELAY_AGE_SECONDS="1"), tmp_path) as (port, _):
        base = f"http://127.0.0.1:{port}"
        sid, stream_sid = f"guide-{uuid.uuid4().hex[:8]}", f"guide-stream-{uuid.uuid4().hex[:8]}"
        for session in (sid, stream_sid):
            http(base, "POST", "/sessions", {"session_id": session, "state": {"items": []}})
        write(base, sid, "book")
        # a change PostgreSQL refuses (\u0000 in jsonb, 22P05): the served
        # relay and worker dead-letter it with its reason
        pipeline.store.create(f"guide-poison-{uuid.uuid4().hex[:8]}", '{"a":"\\u0000"}', 600)
        wait_until(lambda: (pipeline.session_rows([sid]).get(sid, (0,))[0] == 2
                            and not outbox_entries_of(pipeline.store, [sid])
                            and pipeline.queue_depth(pipeline.queues.dlq_url)[0] >= 1),
                   timeout=60, what="the writes persisted and the poison dead-lettered")

        runs: dict[int, list[Ran]] = {}
        for row in guide_rows():
            for command in row.commands:
                concrete = command.replace("xxx", sid).replace("http://127.0.0.1:8000", base)
                if STREAMING.search(command):
                    shows = bool(SHOWS_WRITES.search(command))
                    started = [0.0]
                    # the served relay listens on the channel too (its wake-ups)
                    others = pipeline.store.client.pubsub_numsub(pipeline_settings.channel)[0][1]

                    def ready(out: str, others: int = others) -> bool:
                        return (bool(out) or pipeline.store.client.pubsub_numsub(
                            pipeline_settings.channel)[0][1] > others)

                    def during(shows: bool = shows, started: list[float] = started) -> None:
                        started[0] = time.monotonic()
                        if shows:
                            write(base, stream_sid, "streamed")

                    def done(out: str, shows: bool = shows, started: list[float] = started) -> bool:
                        if shows:
                            return stream_sid in out
                        return time.monotonic() - started[0] > 2.5 and bool(out.strip())
                    ran = run_in_terminal(concrete, env, tmp_path, ready=ready, during=during, done=done)
                else:
                    ran = run(concrete, env, tmp_path)
                    assert ran.returncode == 0, (row.number, ran)
                runs.setdefault(row.number, []).append(ran)

    checks = check_rows(sid=sid, stream_sid=stream_sid, redis_url=pipeline_settings.redis_url)
    assert set(checks) == set(runs), "every row with commands has its check here, and only those"
    for number, check in checks.items():
        assert check(runs[number]), (number, runs[number])
