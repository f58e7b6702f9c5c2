"""`sessionsync watch` prints the Pub/Sub change events, as a user runs it
(a subprocess with its own environment), on the test Redis."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from chalicelib.adapters.redis.store import SessionStore
from tests.support.constants import REDIS_TEST_URL

SESSIONSYNC = Path(sys.executable).parent / "sessionsync"


@pytest.fixture
def channel() -> str:
    return f"watch-test-{uuid.uuid4().hex[:12]}"


def watch(channel: str, *args: str, cwd: Path) -> subprocess.Popen:
    assert SESSIONSYNC.exists(), f"{SESSIONSYNC} missing: install the project (pip install -e .)"
    env = {**os.environ, "REDIS_URL": REDIS_TEST_URL, "SESSIONSYNC_CHANNEL": channel}
    return subprocess.Popen([str(SESSIONSYNC), "watch", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_subscribed(redis_client, channel: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while redis_client.pubsub_numsub(channel)[0][1] < 1:
        if proc.poll() is not None:
            pytest.fail(f"watch exited early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"watch did not subscribe within {timeout}s"
        time.sleep(0.05)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_watch_prints_create_update_and_delete_then_stops_at_count(
        redis_single, channel, session_id, tmp_path):
    # --count ends it; --seconds only bounds a run that misses an event
    proc = watch(channel, "--count", "3", "--seconds", "60", cwd=tmp_path)
    try:
        wait_until_subscribed(redis_single, channel, proc)
        store = SessionStore(redis_single, channel=channel)
        store.create(session_id, '{"step":1}', 60)
        store.update(session_id, '{"step":2}', 1)
        store.delete(session_id, 2)
    finally:
        out, err = finish(proc, timeout=90)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(e["event_type"], e["session_id"], e["version"]) for e in events] == [
        ("session_created", session_id, 1), ("session_updated", session_id, 2),
        ("session_deleted", session_id, 3)]
    assert [e["state"] for e in events] == [{"step": 1}, {"step": 2}, None]


def test_watch_stops_after_seconds_when_nothing_changes(redis_single, channel, tmp_path):
    started = time.monotonic()
    proc = watch(channel, "--seconds", "1", cwd=tmp_path)
    out, err = finish(proc, timeout=30)
    assert proc.returncode == 0, err
    assert out.strip() == ""
    # it waited its second; the upper bound only says it stopped by itself
    # (an interpreter starting on a busy machine takes a few seconds)
    assert 1.0 <= time.monotonic() - started < 30


def test_watch_shows_the_tenant_of_each_change_and_filters_on_it(redis_single, channel, tmp_path):
    # the events carry the tenant in their (internal) session id: a watcher
    # of one tenant sees only its changes, the default tenant's ids have none
    sid = f"w-{uuid.uuid4().hex[:8]}"
    proc = watch(channel, "--tenant", "acme", "--count", "2", "--seconds", "60", cwd=tmp_path)
    try:
        wait_until_subscribed(redis_single, channel, proc)
        store = SessionStore(redis_single, channel=channel)
        store.create(f"beta/{sid}", "{}", 60)
        store.create(sid, "{}", 60)
        store.create(f"acme/{sid}", '{"t":"acme"}', 60)
        store.update(f"acme/{sid}", '{"t":"acme2"}', 1)
    finally:
        out, err = finish(proc, timeout=90)
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [(e["session_id"], e["version"]) for e in events] == [(f"acme/{sid}", 1), (f"acme/{sid}", 2)]
