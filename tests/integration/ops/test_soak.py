"""`sessionsync soak` against a `sessionsync serve` with its pipeline (worker
and relay threads), both started here as a user would run them, on the test's
own Redis, database and queues: no request fails, and every acknowledged
write is in PostgreSQL exactly (sessionsync/bench/soak.py says what exactly)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.constants import API_KEY, LOCALSTACK_URL
from tests.support.servers import serve_process

pytestmark = [pytest.mark.localstack, pytest.mark.slow]

BIN = Path(sys.executable).parent


@pytest.fixture
def served(pipeline, pipeline_redis, tmp_path):
    env = {**os.environ, "REDIS_URL": pipeline_redis.url, "DATABASE_URL": pipeline.dsn,
           "SESSION_QUEUE_URL": pipeline.queues.url, "SESSION_DLQ_URL": pipeline.queues.dlq_url,
           "AWS_ENDPOINT_URL": LOCALSTACK_URL, "SESSIONSYNC_API_KEYS": API_KEY,
           "OUTBOX_RELAY_AGE_SECONDS": "1", "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"}
    with serve_process(env, tmp_path) as (port, log):
        yield f"http://127.0.0.1:{port}", log, env


def test_a_short_soak_has_no_error_and_every_acknowledged_write_persisted_exactly(served, tmp_path):
    url, log, env = served
    report_path = tmp_path / "soak.json"
    proc = subprocess.run(
        [str(BIN / "sessionsync"), "soak", "--url", url, "--threads", "8", "--duration", "20",
         "--sessions", "100", "--settle-timeout", "120", "--server-log", str(log),
         "--output", str(report_path), "--seed", "17"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + log.read_text()[-2000:]
    report = json.loads(report_path.read_text())

    assert report["errors"] == {"count": 0, "stale_reads": 0, "examples": []}
    durability = report["durability"]
    assert durability["exact"] is True, durability
    assert durability["missing"] == durability["wrong_content"] == durability["sessions_wrong"] == 0
    assert durability["deletes_unmarked"] == durability["unacknowledged_rows"] == 0
    # the mix did run: every kind of write was acknowledged and checked
    writes = report["writes"]
    assert set(writes["by_kind"]) == {"create", "update", "delete"}, writes
    assert durability["checked_writes"] == writes["acknowledged"] > 100
    assert set(report["routes"]) == {"GET /sessions/{id}", "PUT /sessions/{id}", "POST /sessions",
                                     "DELETE /sessions/{id}"}
    # what it reports is there: a lag per write, the relay's count, the server's memory
    assert report["persistence_lag_seconds"]["n"] == writes["acknowledged"]
    assert report["relay"] is not None and report["relay"]["relayed"] >= 0
    assert report["memory_mb"]["server"]["peak"] > 0
    # and its timeline drawn beside the report
    assert report_path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"chart: {report_path.with_suffix('.png')}" in proc.stdout
