"""A bench killed mid-run (SIGKILL: a test's timeout, ``kill -9``) leaves
none of its processes behind: its redis-servers and its ``sessionsync
serve`` die with it, though it never got to stop them.

The persistence section is killed once it runs both (a redis-server of its
own and ``serve`` beside the bench's own redis-server); the bench alone is
killed, by its PID, as ``subprocess.run``'s timeout does.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.pipeline import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.localstack]


def children(pid: int) -> dict[int, str]:
    """The live processes whose parent is ``pid``: their command lines."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        # the fields after the command's name (which may hold spaces): state, ppid
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def command_line(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has died


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_bench_killed_mid_run_leaves_no_redis_server_and_no_serve_behind(tmp_path, pg_test_dsn):
    bench = subprocess.Popen(
        [sys.executable, "-c", "from sessionsync.cli import main; main()", "bench", "--smoke",
         "--sections", "persistence", "--no-chart", "--output-dir", str(tmp_path),
         "--database-url", pg_test_dsn],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # the servers' working directories, which a killed bench cannot remove: the test's own
        env={**os.environ, "TMPDIR": str(tmp_path)})
    started: dict[int, str] = {}
    try:
        def running_both() -> bool:
            started.update(children(bench.pid))
            assert bench.poll() is None, "the bench ended before it could be killed"
            return (sum("redis-server" in cmd for cmd in started.values()) >= 2
                    and any(" serve " in cmd for cmd in started.values()))
        wait_until(running_both, timeout=180, what="the bench to run two redis-servers and serve",
                   interval=0.05)
        bench.send_signal(signal.SIGKILL)  # no cleanup of its own can run
        bench.wait(30)
        left = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            left = {pid: cmd for pid, cmd in started.items() if alive(pid)}
            if not left:
                break
            time.sleep(0.1)
        assert left == {}, f"left behind by the killed bench: {left}"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait(30)
        for pid, cmd in started.items():  # only what this test's bench started, by PID
            if alive(pid) and command_line(pid) == cmd:
                os.kill(pid, signal.SIGKILL)
