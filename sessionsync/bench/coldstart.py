"""Cold start: a fresh interpreter imports app.py and serves its first call.

Each run is a new ``python`` process (as a new Lambda execution
environment is), with the environment of a deployed function: Redis, the
queue, the DLQ and the database are all configured.  The child reports,
from its own clock, the import of ``app`` and the first call of one of
app.py's Lambda functions (which builds what that function needs); the
parent adds the process's whole wall time (interpreter start and exit
included).  One further run under ``python -X importtime`` gives the
breakdown by module of ``import app``.

Chalice deploys every function of app.py (the API, the ``authorizer``,
the ``persist_changes`` consumer, the ``relay_outbox`` schedule) with the
same app.py, so each imports all of it: the section
measures each function's cold start, and the same for a bare one-route
Chalice app generated in a temporary directory, so that each function is
also given as a ratio to what Chalice itself costs on this machine and run.

Sources are byte-compiled before the timed runs (a first untimed run
writes ``__pycache__``); a Lambda package without .pyc files would pay
compilation on every cold start on top of these figures.

``from_zip`` measures what Lambda runs: the package ``make package`` builds
(scripts/deploy_stage.py, offline), unpacked as /var/task is, in a fresh
interpreter that sees it, the runtime's boto3 on a path of its own and the
standard library, nothing else (``-I -S``), and writes no bytecode (``-B``:
/var/task is read-only).  Each function twice: with the package's .pyc
files, and without them (compile included, as a package without bytecode
pays on every cold start); the bare one-route app packaged and measured the
same way, both ways; and the first PUT (it builds boto3's SQS client) with
boto3 from the runtime's path and from inside the zip, with the zips' sizes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sessionsync.bench.context import BenchContext
from sessionsync.bench.events import (
    api_gateway_event,
    authorizer_event,
    schedule_event,
    session_get_event,
    session_put_event,
    sqs_event,
    sqs_record,
)
from sessionsync.bench.harness import SectionRedis, delete_rows
from sessionsync.bench.stats import median
from sessionsync.project import project_dir

API_KEY = "bench-api-key-0123456789abcdef"
#: Modules that should stay off the GET path (they matter only elsewhere).
HEAVY = ("boto3", "botocore", "psycopg", "aws_lambda_powertools", "matplotlib", "click")

# Runs in the child.  The function's name and its event arrive ready-made on
# stdin so that the child imports nothing the real function would not.
CHILD = r"""
import json, sys, time
c0, t0 = time.process_time_ns(), time.perf_counter_ns()
import app
t1 = time.perf_counter_ns()
call = json.loads(sys.stdin.read())
class Context:
    function_name = "sessionsync-prod"
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    memory_limit_in_mb = 1024
    def get_remaining_time_in_millis(self):
        # the relay runs until its deadline less the margin: the least budget
        return 6000 if call["function"] == "relay_outbox" else 10000
t2 = time.perf_counter_ns()
response = getattr(app, call["function"])(call["event"], Context())
t3, c3 = time.perf_counter_ns(), time.process_time_ns()
if isinstance(response, dict) and "ready_seconds" in response:
    # the continuous relay: its first call lasts until then, relaying
    t3 = t2 + int(response["ready_seconds"] * 1e9)
heavy = sorted(m for m in %r if m in sys.modules)
print(json.dumps({"import_ms": (t1 - t0) / 1e6, "first_request_ms": (t3 - t2) / 1e6,
                  "import_plus_first_cpu_ms": (c3 - c0) / 1e6,
                  "response": response, "heavy_modules_loaded": heavy,
                  "modules_loaded": len(sys.modules)}))
""" % (HEAVY,)

#: The bare app the ratios divide by: Chalice and one route, nothing else.
BARE_APP = """from chalice import Chalice

app = Chalice(app_name="bare")


@app.route("/")
def index():
    return {}
"""


def child_environment(ctx: BenchContext, queue_url: str, database_url: str, dlq_url: str
                      ) -> dict[str, str]:
    """A deployed function's configuration, pointed at the bench's services
    (and a Pub/Sub channel of the run's own)."""
    from chalicelib import config

    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        config.REDIS_URL: ctx.redis_url,
        config.DATABASE_URL: database_url,
        config.SESSION_QUEUE_URL: queue_url,
        config.SESSION_DLQ_URL: dlq_url,
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


#: Before CHILD in a package's interpreter: the unpacked zip first on the
#: path, then the runtime's directory, as Lambda orders /var/task and /var/runtime.
ZIP_PREAMBLE = "import sys\nsys.path[:0] = sys.argv[1:3]\n"


def _run_child(function: str, event: dict[str, Any], env: dict[str, str], *,
               cwd: Path | None = None, importtime: bool = False,
               package: tuple[Path, Path, str] | None = None) -> tuple[dict[str, Any], float, str]:
    """One fresh process: ``package`` (task root, runtime directory, the
    runtime's interpreter) runs that bare interpreter on the unpacked zip,
    else this one in ``cwd``."""
    if package is not None:
        task_root, runtime_dir, python = package
        args = [python, "-I", "-S", "-B", "-c", ZIP_PREAMBLE + CHILD, str(task_root), str(runtime_dir)]
        cwd = task_root
    else:
        args = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", CHILD]
    start = time.perf_counter()
    proc = subprocess.run(args, input=json.dumps({"function": function, "event": event}),
                          capture_output=True, text=True, cwd=cwd or project_dir(), env=env,
                          timeout=120)
    wall_ms = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"cold-start child {function} failed ({proc.returncode}): "
                           f"{proc.stderr[-2000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    wrong = _wrong_answer(function, report["response"])
    if wrong:
        raise RuntimeError(f"cold-start child {function}: {wrong}")
    return report, wall_ms, proc.stderr


def _wrong_answer(function: str, response: Any) -> str | None:
    """Why ``response`` is not the successful answer of ``function`` (None if it is):
    a figure for a call that failed would measure the failure."""
    if function == "app":
        ok = response.get("statusCode") == 200
    elif function == "authorizer":
        statements = response.get("policyDocument", {}).get("Statement", [])
        ok = bool(statements) and statements[0].get("Effect") == "Allow"
    elif function == "persist_changes":
        ok = response == {"batchItemFailures": []}
    else:
        ok = isinstance(response, dict) and "found" in response
    return None if ok else f"unexpected answer {json.dumps(response)[:500]}"


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


def _scenarios(calls: dict[str, tuple[Any, ...]], env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """name -> (function, one event per run, directory of its app.py[, the
    package: task root, runtime directory, interpreter]): each measured in fresh
    processes, round-robin (run i of every call, then run i + 1), so that a
    machine getting busier mid-section shifts them all alike and their
    ratios stay fair."""
    reports: dict[str, list[dict[str, Any]]] = {name: [] for name in calls}
    for i in range(max(len(call[1]) for call in calls.values())):
        for name, (function, events, cwd, *package) in calls.items():
            if i < len(events):
                report, wall_ms, _ = _run_child(function, events[i], env, cwd=cwd,
                                                package=package[0] if package else None)
                reports[name].append({**report, "process_wall_ms": wall_ms, "import_plus_first_ms":
                                      report["import_ms"] + report["first_request_ms"]})
    return {name: _summary(runs) for name, runs in reports.items()}


def _summary(reports: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {key: round(median([r[key] for r in reports]), 1)
               for key in ("import_ms", "first_request_ms", "import_plus_first_ms",
                           "import_plus_first_cpu_ms", "process_wall_ms")}
    return {"runs": len(reports), "median": summary,
            "min_import_plus_first_ms": round(min(r["import_plus_first_ms"] for r in reports), 1),
            "heavy_modules_loaded": reports[-1]["heavy_modules_loaded"],
            "modules_loaded": reports[-1]["modules_loaded"]}


def with_ratios(functions: dict[str, dict[str, Any]], bare: dict[str, Any]) -> dict[str, Any]:
    """Each function's scenario with ``ratio_to_bare``: its median import + first
    call over the bare app's, both measured in this run."""
    floor, cpu_floor = (bare["median"][k] for k in ("import_plus_first_ms", "import_plus_first_cpu_ms"))
    return {name: {**data,
                   "ratio_to_bare": round(data["median"]["import_plus_first_ms"] / floor, 2),
                   "cpu_ratio_to_bare": round(data["median"]["import_plus_first_cpu_ms"] / cpu_floor, 2)}
            for name, data in functions.items()}


# --- from the deployment package ------------------------------------------------

def _deploy_stage() -> Any:
    """scripts/deploy_stage.py (the package's build) as a module."""
    import importlib.util
    path = project_dir() / "scripts" / "deploy_stage.py"
    spec = importlib.util.spec_from_file_location("deploy_stage", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_packages(workdir: Path, *, with_boto3: bool, runtime: str) -> dict[str, Path]:
    """name -> deployment.zip for the Lambda ``runtime``: ``app`` (what
    `make package` builds), ``bare`` (BARE_APP, packaged the same way), and
    with ``with_boto3`` ``app_boto3`` (the app with boto3 and its
    dependencies in the zip, at the versions that stand in for the runtime's)."""
    import shutil
    stage = _deploy_stage()
    root = project_dir()
    projects: dict[str, tuple[Path, Path | None]] = {}
    for name in ("app", "app_boto3") if with_boto3 else ("app",):
        project = workdir / name / "project"
        project.mkdir(parents=True)
        shutil.copy(root / "app.py", project)
        shutil.copytree(root / "chalicelib", project / "chalicelib",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(root / ".chalice", project / ".chalice",
                        ignore=shutil.ignore_patterns("deployments", "deployed"))
        requirements = (root / "requirements.txt").read_text()
        if name == "app_boto3":
            pins = stage.requirement_pins(stage.RUNTIME_PROVIDED).values()
            requirements += "".join(f"{pin}\n" for pin in pins)
        (project / "requirements.txt").write_text(requirements)
        projects[name] = (project, stage.MERGE_TEMPLATE)
    bare = workdir / "bare" / "project"
    (bare / ".chalice").mkdir(parents=True)
    (bare / "app.py").write_text(BARE_APP)
    (bare / "requirements.txt").write_text("")
    (bare / ".chalice" / "config.json").write_text(json.dumps(
        {"version": "2.0", "app_name": "bare", "stages": {"dev": {"api_gateway_stage": "dev"}}}))
    projects["bare"] = (bare, None)
    return {name: stage.build_offline(project, workdir / name / "out", workdir / name, "dev",
                                      merge_template=merge, runtime=runtime) / "deployment.zip"
            for name, (project, merge) in projects.items()}


def unpack(package: Path, directory: Path, *, bytecode: bool) -> Path:
    """``package`` unpacked into ``directory``, without its .pyc files unless ``bytecode``."""
    import zipfile
    with zipfile.ZipFile(package) as archive:
        archive.extractall(directory, [n for n in archive.namelist() if bytecode or not n.endswith(".pyc")])
    return directory


def _package_facts(package: Path) -> dict[str, int]:
    import zipfile
    with zipfile.ZipFile(package) as archive:
        infos = archive.infolist()
    return {"zip_bytes": package.stat().st_size, "unpacked_bytes": sum(i.file_size for i in infos),
            "files": len(infos), "pyc_files": sum(i.filename.endswith(".pyc") for i in infos)}


def _median_ms(mode: dict[str, Any], name: str) -> float:
    scenario = mode["bare_chalice"] if name == "bare_chalice" else mode["by_function"][name]
    return float(scenario["median"]["import_plus_first_ms"])


def from_zip(ctx: BenchContext, env: dict[str, str],
             events: dict[str, tuple[str, dict[str, list[dict[str, Any]]]]],
             put_events: list[dict[str, Any]], workdir: Path) -> dict[str, Any]:
    """Each function's cold start from its package, with and without the
    bytecode, as ratios to the bare app's in the same mode; the first PUT
    with boto3 from the runtime and from the zip (``events``: a scenario's
    name -> its function and, per mode, one event per run; ``put_events``:
    twice the runs, a session each)."""
    stage = _deploy_stage()
    # the Lambda runtime: the template's unless the run names another (--lambda-runtime)
    lambda_runtime = ctx.lambda_runtime or stage.default_runtime()
    python = stage.interpreter(lambda_runtime)  # StageError: the section fails naming it
    with_boto3 = ctx.profile.name != "smoke"  # a third package: the smoke run proves the shape
    packages = build_packages(workdir / "build", with_boto3=with_boto3, runtime=lambda_runtime)
    runtime = stage.runtime_provided(workdir / "var-runtime", lambda_runtime)
    roots = {(name, mode): (unpack(path, workdir / f"{name}-{mode}", bytecode=mode == "bytecode"), runtime,
                            python.executable)
             for name, path in packages.items() for mode in ("bytecode", "source")
             if name != "app_boto3" or mode == "bytecode"}
    runs = max(1, ctx.profile.coldstart_runs)
    bare_event = api_gateway_event("GET", "/", "/", api_key=API_KEY)
    calls: dict[str, tuple[Any, ...]] = {}
    for mode in ("bytecode", "source"):
        calls[f"bare_chalice/{mode}"] = ("app", [bare_event] * runs, None, roots[("bare", mode)])
        for name, (function, per_mode) in events.items():
            calls[f"{name}/{mode}"] = (function, per_mode[mode], None, roots[("app", mode)])
    measured = _scenarios(calls, env)
    by_mode: dict[str, dict[str, Any]] = {}
    for mode in ("bytecode", "source"):
        bare = measured.pop(f"bare_chalice/{mode}")
        functions = {name: measured[f"{name}/{mode}"] for name in events}
        by_mode[mode] = {"bare_chalice": bare, "by_function": with_ratios(functions, bare)}
    result: dict[str, Any] = {
        "runs": runs,
        "lambda_runtime": lambda_runtime,
        "interpreter": python.executable,
        "packages": {name: _package_facts(path) for name, path in packages.items()},
        **by_mode,
        # what the bytecode saves each function: its median without over with
        "source_over_bytecode": {name: round(_median_ms(by_mode["source"], name)
                                             / _median_ms(by_mode["bytecode"], name), 2)
                                 for name in [*events, "bare_chalice"]},
    }
    if with_boto3:
        put = _scenarios({
            "boto3_from_runtime": ("app", put_events[:runs], None, roots[("app", "bytecode")]),
            "boto3_in_zip": ("app", put_events[runs:], None, roots[("app_boto3", "bytecode")]),
        }, env)
        result["first_put"] = {**put, "in_zip_over_runtime": round(
            put["boto3_in_zip"]["median"]["import_plus_first_ms"]
            / put["boto3_from_runtime"]["median"]["import_plus_first_ms"], 2)}
    result["notes"] = (
        "Each package built for lambda_runtime, unpacked as /var/task, run by that runtime's interpreter "
        "(`python3.X -I -S -B`) with the runtime's boto3 on a path of its own (the versions of "
        "infra/lambda/runtime-provided.txt, with that interpreter's bytecode). "
        "bytecode: the package as `make package` builds it (unchecked-hash .pyc files); source: the "
        "same files without them, so every import compiles (-B: nothing is written, as on a read-only "
        "/var/task). ratio_to_bare: a function's median import + first call over the bare one-route "
        "app's, packaged and run the same way, same mode. first_put: the first PUT of a fresh process "
        "(boto3's SQS client built, one SendMessage), boto3 from the runtime's path or from inside "
        "the zip (the smoke profile leaves that third package out).")
    return result


def run(ctx: BenchContext) -> dict[str, Any]:
    from chalicelib.adapters.postgres import connection
    from sessionsync.bench.consumer import change_event

    runs = max(1, ctx.profile.coldstart_runs)
    dsn = ctx.migrated_dsn()
    # The PUT scenario ships to a queue that exists when LocalStack runs;
    # without it the send fails fast and the outbox keeps the event, which
    # is the documented degraded mode (and still a fair cold-start figure).
    # The DLQ is never sent to (no poison), so it need not exist.
    base = f"{(ctx.aws_endpoint_url or 'http://127.0.0.1:4566').rstrip('/')}/000000000000"
    env = child_environment(ctx, f"{base}/sessionsync-bench-cold-{ctx.run_id}", dsn,
                            f"{base}/sessionsync-bench-cold-dlq-{ctx.run_id}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    with SectionRedis(ctx, "cold") as r:
        prefix, state = r.prefix, r.state
        # acked: by the relay's turn the setup's events would be old outbox entries
        get_event = session_get_event(r.create("read", ack=True), API_KEY)
        # one new session per consumer run: each first batch inserts, as a real one does
        batches = [sqs_event([sqs_record(change_event(f"{prefix}-c{i}", 1, {"n": i}, stamp),
                                         event_id=f"{prefix}-c{i}:1")]) for i in range(runs)]
        # the packages' consumers: new sessions of their own, each mode its own
        zip_batches = {mode: [sqs_event([sqs_record(change_event(f"{prefix}-{mode[0]}c{i}", 1, {"n": i},
                                                                 stamp),
                                                    event_id=f"{prefix}-{mode[0]}c{i}:1")])
                              for i in range(runs)]
                       for mode in ("bytecode", "source")}
        try:
            _run_child("app", get_event, env)  # untimed: writes __pycache__
            with tempfile.TemporaryDirectory(prefix="sessionsync-bare-") as bare_dir:
                bare_event = api_gateway_event("GET", "/", "/", api_key=API_KEY)
                (Path(bare_dir) / "app.py").write_text(BARE_APP)
                _run_child("app", bare_event, env, cwd=Path(bare_dir))  # untimed: __pycache__
                measured = _scenarios({
                    "bare_chalice": ("app", [bare_event] * runs, Path(bare_dir)),
                    "api_first_get": ("app", [get_event] * runs, project_dir()),
                    "authorizer_first_call": ("authorizer", [authorizer_event(API_KEY)] * runs,
                                              project_dir()),
                    "consumer_first_batch": ("persist_changes", batches, project_dir()),
                    # before the PUTs: their events, unsent to a missing queue,
                    # would otherwise wait in the outbox for this drain
                    "relay_first_drain": ("relay_outbox", [schedule_event()] * runs, project_dir()),
                }, env)
            bare = measured.pop("bare_chalice")
            get = measured["api_first_get"]
            _, _, importtime_err = _run_child("app", get_event, env, importtime=True)
            breakdown = import_breakdown(parse_importtime(importtime_err))
            puts = [session_put_event(r.create(f"w{i}", ack=True), state, 1, API_KEY)
                    for i in range(runs)]
            put = _scenarios({"put": ("app", puts, project_dir())}, env)["put"]
            # the PUTs from the packages: boto3 from the runtime's path, then from the zip
            zip_puts = [session_put_event(r.create(f"zw{i}", ack=True), state, 1, API_KEY)
                        for i in range(2 * runs)]
            with tempfile.TemporaryDirectory(prefix="sessionsync-coldstart-zip-") as zip_dir:
                def both(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
                    return {"bytecode": events, "source": events}
                packaged = from_zip(ctx, env, {
                    "api_first_get": ("app", both([get_event] * runs)),
                    "authorizer_first_call": ("authorizer", both([authorizer_event(API_KEY)] * runs)),
                    # a batch of new sessions for each mode: each first batch inserts
                    "consumer_first_batch": ("persist_changes", zip_batches),
                    "relay_first_drain": ("relay_outbox", both([schedule_event()] * runs)),
                }, zip_puts, Path(zip_dir))
        finally:
            with connection.connect(dsn) as conn:
                delete_rows(conn, prefix)
    return {
        "runs": runs,
        "python": sys.version.split()[0],
        "first_get": get,
        "first_put": put,
        "bare_chalice": bare,
        "by_function": with_ratios(measured, bare),
        "imports": breakdown,
        "from_zip": packaged,
        "notes": "import_plus_first_ms = import app + the first call of one function of app.py "
                 "(in the child, from its own clock); it excludes interpreter start-up and exit, "
                 "which process_wall_ms adds. ratio_to_bare = a function's median "
                 "import_plus_first_ms / that of bare_chalice (a one-route Chalice app and its "
                 "first GET, this run, measured round-robin with the functions). "
                 "cpu_ratio_to_bare: the same ratio of the child's CPU time (process_time), "
                 "steadier on a busy machine but blind to waiting on Redis, PostgreSQL or SQS. "
                 "by_function: the API's first GET (a session in Redis), the authorizer's first "
                 "call (a valid key), the consumer's first batch (one new event into PostgreSQL), "
                 "the relay's first run until it relays (its lease taken, its wake-ups heard, "
                 "its first sweep done; its CPU time also covers the rest of its 1 s run). "
                 "The PUT's first request includes building the boto3 SQS client and one "
                 "SendMessage to LocalStack.",
    }
