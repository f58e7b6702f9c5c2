"""Cold start: a fresh interpreter imports app.py and serves its first request.

Each run is a new ``python`` process (as a new Lambda execution
environment is), with the environment of a deployed function: Redis, the
queue and the database are all configured, so the figure shows what the
first GET really pulls in.  The child reports, from its own clock, the
import of ``app`` and the first ``app(event, context)`` call (which builds
the clients and opens the Redis connection); the parent adds the process's
whole wall time (interpreter start and exit included).  One further run
under ``python -X importtime`` gives the breakdown by module.

Sources are byte-compiled before the timed runs (a first untimed run
writes ``__pycache__``); a Lambda package without .pyc files would pay
compilation on every cold start on top of these figures.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

from sessionsync.bench.context import (
    DEFAULT_DATABASE_URL,
    STATE_BYTES,
    BenchContext,
    delete_session_keys,
    state_json,
)
from sessionsync.bench.events import session_get_event, session_put_event
from sessionsync.bench.stats import median
from sessionsync.project import project_dir

API_KEY = "bench-api-key-0123456789abcdef"
#: Modules that should stay off the GET path (they matter only elsewhere).
HEAVY = ("boto3", "botocore", "psycopg", "aws_lambda_powertools", "matplotlib", "click")

# Runs in the child.  The event arrives ready-made on stdin so that the
# child imports nothing the real handler would not.
CHILD = r"""
import json, sys, time
t0 = time.perf_counter_ns()
import app
t1 = time.perf_counter_ns()
event = json.loads(sys.stdin.read())
class Context:
    function_name = "sessionsync-prod"
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    memory_limit_in_mb = 1024
    def get_remaining_time_in_millis(self):
        return 10000
t2 = time.perf_counter_ns()
response = app.app(event, Context())
t3 = time.perf_counter_ns()
heavy = sorted(m for m in %r if m in sys.modules)
print(json.dumps({"import_ms": (t1 - t0) / 1e6, "first_request_ms": (t3 - t2) / 1e6,
                  "status": response["statusCode"], "heavy_modules_loaded": heavy,
                  "modules_loaded": len(sys.modules)}))
""" % (HEAVY,)


def child_environment(ctx: BenchContext, queue_url: str) -> dict[str, str]:
    """A deployed function's configuration, pointed at the bench's services
    (and a Pub/Sub channel of the run's own)."""
    from chalicelib import config

    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        config.REDIS_URL: ctx.redis_url,
        config.DATABASE_URL: ctx.database_url or DEFAULT_DATABASE_URL,
        config.SESSION_QUEUE_URL: queue_url,
        config.API_KEYS: API_KEY,
        config.PUBSUB_CHANNEL: f"{ctx.session_prefix('cold')}-updates",
        config.LOG_LEVEL: "INFO",
        config.AWS_ENDPOINT_URL: ctx.aws_endpoint_url or "http://127.0.0.1:4566",
        config.AWS_DEFAULT_REGION: "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "POWERTOOLS_SERVICE_NAME": "sessionsync",
        "POWERTOOLS_METRICS_NAMESPACE": "sessionsync",
    }


def _run_child(event: dict[str, Any], env: dict[str, str], *, importtime: bool = False
               ) -> tuple[dict[str, Any], float, str]:
    args = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", CHILD]
    start = time.perf_counter()
    proc = subprocess.run(args, input=json.dumps(event), capture_output=True, text=True,
                          cwd=project_dir(), env=env, timeout=120)
    wall_ms = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if report["status"] != 200:
        raise RuntimeError(f"cold-start child got HTTP {report['status']}")
    return report, wall_ms, proc.stderr


def parse_importtime(stderr: str) -> list[dict[str, Any]]:
    """``-X importtime`` lines as dicts: module, self_us, cumulative_us, depth."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        # "import time:  <self us> | <cumulative us> | <indent><module>"
        self_us, cumulative_us, name = line[len("import time:"):].split("|", 2)
        rows.append({"module": name.strip(), "self_us": int(self_us),
                     "cumulative_us": int(cumulative_us),
                     "depth": (len(name) - len(name.lstrip()) - 1) // 2})
    return rows


def import_breakdown(rows: list[dict[str, Any]], top: int = 15) -> dict[str, Any]:
    """Top modules by cumulative time, and self time summed per top-level package."""
    by_package: dict[str, int] = defaultdict(int)
    for row in rows:
        by_package[row["module"].split(".")[0]] += row["self_us"]
    app_row = next((r for r in rows if r["module"] == "app"), None)
    return {
        "app_cumulative_ms": round(app_row["cumulative_us"] / 1000, 1) if app_row else None,
        "top_cumulative": [
            {"module": r["module"], "cumulative_ms": round(r["cumulative_us"] / 1000, 1),
             "self_ms": round(r["self_us"] / 1000, 1), "depth": r["depth"]}
            for r in sorted(rows, key=lambda r: r["cumulative_us"], reverse=True)
            if r["module"] != "app"][:top],
        "self_by_package_ms": {
            name: round(us / 1000, 1)
            for name, us in sorted(by_package.items(), key=lambda kv: kv[1], reverse=True)[:top]},
    }


def _scenario(events: list[dict[str, Any]], env: dict[str, str], runs: int) -> dict[str, Any]:
    reports = []
    for event in events[:runs]:
        report, wall_ms, _ = _run_child(event, env)
        reports.append({**report, "process_wall_ms": wall_ms,
                        "import_plus_first_ms": report["import_ms"] + report["first_request_ms"]})
    summary = {key: round(median([r[key] for r in reports]), 1)
               for key in ("import_ms", "first_request_ms", "import_plus_first_ms", "process_wall_ms")}
    return {"runs": len(reports), "median": summary,
            "min_import_plus_first_ms": round(min(r["import_plus_first_ms"] for r in reports), 1),
            "heavy_modules_loaded": reports[-1]["heavy_modules_loaded"],
            "modules_loaded": reports[-1]["modules_loaded"]}


def run(ctx: BenchContext) -> dict[str, Any]:
    import redis

    from chalicelib.adapters.redis.store import SessionStore

    runs = max(1, ctx.profile.coldstart_runs)
    prefix = ctx.session_prefix("cold")
    state = state_json(STATE_BYTES)
    client = redis.Redis.from_url(ctx.redis_url)
    store = SessionStore(client, channel=f"{prefix}-updates")
    read_id = f"{prefix}-read"
    store.create(read_id, state, 3600)
    # The PUT scenario ships to a queue that exists when LocalStack runs;
    # without it the send fails fast and the outbox keeps the event, which
    # is the documented degraded mode (and still a fair cold-start figure).
    queue_url = f"{(ctx.aws_endpoint_url or 'http://127.0.0.1:4566').rstrip('/')}" \
                f"/000000000000/sessionsync-bench-cold-{ctx.run_id}"
    env = child_environment(ctx, queue_url)
    write_ids = [f"{prefix}-w{i}" for i in range(runs)]
    try:
        get_event = session_get_event(read_id, API_KEY)
        _run_child(get_event, env)  # untimed: writes __pycache__
        get = _scenario([get_event] * runs, env, runs)
        _, _, importtime_err = _run_child(get_event, env, importtime=True)
        breakdown = import_breakdown(parse_importtime(importtime_err))
        for sid in write_ids:
            store.create(sid, state, 3600)
        put = _scenario([session_put_event(sid, state, 1, API_KEY) for sid in write_ids], env, runs)
    finally:
        if not ctx.redis_is_own:
            delete_session_keys(client, [read_id, *write_ids])
        client.close()
    return {
        "runs": runs,
        "python": sys.version.split()[0],
        "first_get": get,
        "first_put": put,
        "imports": breakdown,
        "notes": "import_plus_first_ms = import app + first app(event, context), from the child's "
                 "clock; process_wall_ms adds interpreter start-up and exit. The PUT's first "
                 "request includes building the boto3 SQS client and one SendMessage to LocalStack.",
    }
