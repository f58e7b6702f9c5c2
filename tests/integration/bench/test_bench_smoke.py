"""``sessionsync bench --smoke`` runs every section and writes well-formed results.

This is not a timed test: it asserts the shape of the results (every
section present, every figure positive, every ratio computed, the chart
written), never a speed.  The one behavioural assertion is the contention
section's invariant (no lost update), which is a guarantee, not a figure.
It runs the real command in a subprocess, as a user would, so that the
CLI's stage defaults do not leak into this test process's environment.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sessionsync.bench import targets
from sessionsync.bench.runner import SECTION_ORDER

pytestmark = [pytest.mark.slow, pytest.mark.localstack]

LATENCY_KEYS = ("p50_us", "p95_us", "p99_us")
POSITIVE = (*LATENCY_KEYS, "events_per_second", "updates_per_second", "import_plus_first_ms",
            "session_key_bytes")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, pg_test_dsn) -> tuple[dict, list[Path]]:
    out = tmp_path_factory.mktemp("bench")
    # the consumer section writes to the test session's database, not to the
    # machine's shared bench database (another run may be using it)
    # in a session of its own: a bench past the timeout is killed with every
    # process it started (its redis-servers, serve), not alone
    proc = subprocess.Popen(
        [sys.executable, "-c", "from sessionsync.cli import main; main()", "bench", "--smoke",
         "--output-dir", str(out), "--database-url", pg_test_dsn],
        cwd=out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the bench took more than 300 s:\n{stdout[-3000:]}{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    files = sorted(out.iterdir())
    results = json.loads(next(p for p in files if p.suffix == ".json").read_text())
    return results, files


def _numbers(node, path=""):
    """Every (path, number) in a JSON document."""
    if isinstance(node, bool):
        return
    if isinstance(node, (int, float)):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _numbers(value, f"{path}[{i}]")


def test_every_section_ran_without_error(smoke):
    results, _ = smoke
    assert results["schema_version"] == 1
    assert results["profile"] == "smoke"
    assert set(results["sections"]) == set(SECTION_ORDER)
    assert results["errors"] == []
    for name, section in results["sections"].items():
        assert "error" not in section and "skipped" not in section, name


def test_machine_and_versions_are_recorded(smoke):
    machine = smoke[0]["machine"]
    assert machine["cpu_model"] and machine["cpu_count"] >= 1
    assert machine["python"].count(".") == 2
    assert machine["redis_server"]["redis_version"]
    assert machine["packages"]["redis"] and machine["packages"]["chalice"]
    assert len(machine["git"]["commit"]) == 40


#: keys of figures that are differences of two measurements (the CAS split's
#: parts and script steps, the bytes a memory lever saves, the persistence
#: lag's steps: two clocks' readings, and the relay may hold a change before
#: its answer reached the client)
DIFFERENCES = ("_minus_", "overhead", "extra_", "step_", "saved_", "script_server_time",
               "persistence_lag.split.")


def test_every_figure_is_a_finite_non_negative_number_and_latencies_are_positive(smoke):
    results, _ = smoke
    for path, value in _numbers(results["sections"]):
        assert math.isfinite(value), path
        # a difference of two medians (client minus server time, handler
        # minus store) can come out below zero on a busy machine
        assert value >= 0 or any(part in path for part in DIFFERENCES), path
        if path.endswith(POSITIVE):
            assert value > 0, path


def test_ratios_to_the_floor_are_computed(smoke):
    sections = smoke[0]["sections"]
    store = sections["store"]
    for op in ("floor_get", "floor_hgetall", "floor_evalsha", "get", "create", "update",
               "update_keyed", "delete", "outbox_ack"):
        assert all(store["latency"][op][k] > 0 for k in LATENCY_KEYS), op
    for key in ("get/floor_get", "update/floor_evalsha", "update_keyed/update"):
        assert set(store["ratios"][key]) == {"p50", "p95", "p99"}
        assert all(v > 0 for v in store["ratios"][key].values())
    for floor in ("c_get", "c_get_verified", "c_update", "c_create"):  # the C client's, redis-benchmark
        assert store["c_client"][floor]["p50_us"] > 0, floor
    for key in ("get_verified/c_get", "update/c_update", "create/c_create"):
        assert store["ratios"][key]["p50"] > 0, key
    assert sections["handler"]["ratios"]["handler_get/store_get"] > 0
    assert sections["handler"]["ratios"]["handler_patch/handler_put"] > 0
    assert sections["handler"]["latency"]["handler_patch"]["p50_us"] > 0
    assert sections["handler"]["sqs"]["send_message"]["p50_us"] > 0
    assert sections["scale"]["flatness"]["get_p99"] > 0
    assert len(sections["scale"]["steps"]) == 2
    for size in ("1024", "16384"):
        assert sections["memory"]["by_state_bytes"][size]["ratios"]["session_key/payload"] > 1
    assert [r["batch_size"] for r in sections["consumer"]["handler"]] == [1, 10, 100]
    cold = sections["coldstart"]
    assert cold["first_get"]["median"]["import_ms"] > 0
    assert cold["imports"]["top_cumulative"]


def test_cold_start_is_measured_for_each_function_as_a_ratio_to_a_bare_chalice_app(smoke):
    cold = smoke[0]["sections"]["coldstart"]
    bare = cold["bare_chalice"]["median"]["import_plus_first_ms"]
    functions = cold["by_function"]

    assert set(functions) == {"api_first_get", "authorizer_first_call", "consumer_first_batch",
                              "relay_first_drain"}
    assert bare > 0
    for name, data in functions.items():
        ratio = data["ratio_to_bare"]
        assert isinstance(ratio, float) and ratio > 0, name
        assert ratio == round(data["median"]["import_plus_first_ms"] / bare, 2), name
        assert isinstance(data["cpu_ratio_to_bare"], float) and data["cpu_ratio_to_bare"] > 0, name
    # the API's figure is the first GET's, not a second measurement
    assert functions["api_first_get"]["median"] == cold["first_get"]["median"]


def test_cold_start_is_measured_from_the_package_with_and_without_bytecode_against_a_bare_app(smoke):
    packaged = smoke[0]["sections"]["coldstart"]["from_zip"]
    functions = {"api_first_get", "authorizer_first_call", "consumer_first_batch", "relay_first_drain"}
    for mode in ("bytecode", "source"):
        bare = packaged[mode]["bare_chalice"]["median"]["import_plus_first_ms"]
        assert set(packaged[mode]["by_function"]) == functions and bare > 0
        for name, data in packaged[mode]["by_function"].items():
            assert data["ratio_to_bare"] == round(data["median"]["import_plus_first_ms"] / bare, 2), name
    assert set(packaged["source_over_bytecode"]) == functions | {"bare_chalice"}
    # the app's package ships bytecode and no boto3; the bare app's is built the same way
    assert packaged["packages"]["app"]["pyc_files"] > 100 and packaged["packages"]["bare"]["pyc_files"] > 0
    assert packaged["packages"]["app"]["zip_bytes"] < 10_000_000
    # built for the template's runtime and run by its interpreter, not the bench's
    from tests.support.packaging import default_runtime, interpreter
    assert packaged["lambda_runtime"] == default_runtime()
    assert packaged["interpreter"] == interpreter(default_runtime()).executable


def test_consumer_persisted_every_event_and_contention_lost_nothing(smoke):
    sections = smoke[0]["sections"]
    for run in sections["consumer"]["handler"]:
        assert run["events_persisted"] == run["events"]
    for mode in sections["contention"]["modes"].values():
        assert mode["no_lost_update"] and mode["lost_updates"] == 0
        assert mode["final_version"] == mode["successful_updates"] + 1


def test_targets_are_evaluated_and_the_chart_is_a_png(smoke):
    results, files = smoke
    checks = results["targets"]
    assert len(checks) >= 10
    # the verdicts are those of the recorded figures (the rules themselves
    # are checked on known inputs: tests/unit/test_bench_targets.py)
    assert checks == json.loads(json.dumps(targets.evaluate(results["sections"])))
    for check in checks:
        assert isinstance(check["measured"], (int, float)) and not isinstance(check["measured"], bool)
        # a verdict exactly where the target sets a number
        assert (check["met"] is None) == (check["limit"] is None), check["target"]
        assert check["met"] is None or isinstance(check["met"], bool)
    png = next(p for p in files if p.suffix == ".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000


# --- the scale-out sections: consumer_floor, consumers_parallel, relay pages, http_load ---

def test_the_consumer_is_measured_against_raw_psycopg_writing_the_same_rows(smoke):
    from sessionsync.bench import consumer_floor

    section = smoke[0]["sections"]["consumer_floor"]
    assert [row["batch_size"] for row in section["by_batch"]] == [1, 10, 100]
    for row in section["by_batch"]:
        assert set(row["writers"]) == set(consumer_floor.WRITERS)
        assert all(w["events_per_second"] > 0 for w in row["writers"].values())
        assert row["ratios"]["floor_is"] in consumer_floor.FLOORS
        # round by round against the faster floor: never above either floor's ratio
        assert 0 < row["ratios"]["consumer/floor"] <= min(
            row["ratios"][f"consumer/{f}"] for f in consumer_floor.FLOORS)


def test_parallel_consumers_persisted_every_event_without_a_deadlock(smoke):
    section = smoke[0]["sections"]["consumers_parallel"]
    assert set(section["workloads"]) == {"many_sessions", "hot_sessions"}
    for workload in section["workloads"].values():
        assert [r["consumers"] for r in workload["runs"]] == [2, 4, 8]
        for run in workload["runs"]:
            assert run["events_persisted"] == run["events"]
            assert run["lock_waits"]["samples"] > 0
            # the upserts take their row locks in key order (APPLY_SQL)
            assert run["deadlocks"] == 0
    assert section["workloads"]["hot_sessions"]["runs"][0]["sessions"] == 4


def test_the_relay_times_every_page_and_drains_to_a_localstack_queue(smoke):
    section = smoke[0]["sections"]["relay"]
    for drain in section["drains"]:
        assert drain["page_flatness"]["first/last"] > 0
    to_sqs = section["drain_to_localstack_sqs"]
    assert to_sqs["messages_in_queue"] == to_sqs["backlog"] > 0
    assert to_sqs["entries_per_second"] > 0


def test_the_http_load_reports_each_route_and_names_every_error(smoke):
    section = smoke[0]["sections"]["http_load"]
    for run in section["by_clients"]:
        assert run["clients"] >= 64
        workloads = run["workloads"]
        assert set(workloads["many_sessions"]["routes"]) == {
            "POST /sessions", "GET /sessions/{id}", "PUT /sessions/{id}", "DELETE /sessions/{id}"}
        assert set(workloads["floor"]["routes"]["GET /bench/no-such-route"]["statuses"]) == {"404"}
        hot_put = workloads["hot_session"]["routes"]["PUT /sessions/{id}"]["statuses"]
        assert hot_put.get("200", 0) > 0
        assert workloads["hot_session"]["conflicts"] == hot_put.get("412", 0) + hot_put.get("409", 0)
        for data in workloads.values():
            assert data["errors"] == sum(data["error_kinds"].values())
            assert sum(sum(r["statuses"].values()) for r in data["routes"].values()) <= data["requests"]
    assert section["errors_total"] == sum(
        w["errors"] for run in section["by_clients"] for w in run["workloads"].values())


def test_the_persistence_lag_is_split_into_its_steps_and_its_load_recorded(smoke):
    from sessionsync.bench.lag_trace import STEPS

    lag = smoke[0]["sections"]["persistence"]["persistence_lag"]
    split = lag["split"]
    # every write followed from its answer to its transaction (a row may be
    # read the moment before its transaction's last note: a few are allowed)
    assert split["writes"] == lag["writes"] > 0 and split["traced"] >= 0.95 * split["writes"]
    assert set(split["steps"]) == {name for name, _, _ in STEPS}
    assert split["send_calls"]["calls"] > 0
    assert len(lag["load_average"]["after_paced_writes"]) == 3
