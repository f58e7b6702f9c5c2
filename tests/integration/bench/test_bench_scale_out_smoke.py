"""``sessionsync bench --smoke --sections cas_split,memory_levers,cluster``
runs the scale-out sections and reports what they promise.

Not a timed test: it asserts the shape and the invariants of the results
(no CROSSSLOT error on a real 3-master cluster, every master served calls
and holds keys, the CAS split's parts add up, every memory variant
measured against the same payload), never a speed.  It runs the real
command in a subprocess, as a user would.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sessionsync.bench import cluster as cluster_section
from sessionsync.bench import targets

pytestmark = [pytest.mark.slow]

SECTIONS = ("cas_split", "memory_levers", "cluster")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench-scale-out")
    proc = subprocess.run(
        [sys.executable, "-c", "from sessionsync.cli import main; main()", "bench", "--smoke",
         "--sections", ",".join(SECTIONS), "--output-dir", str(out), "--no-chart",
         "--format", "json"],
        cwd=out, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # --format json: what the run wrote and its verdicts, as one document on stdout
    summary = json.loads(proc.stdout)
    results = json.loads(Path(summary["results"]).read_text())
    assert summary["chart"] is None and summary["errors"] == {}
    assert summary["targets"] == results["targets"]
    return results


def test_the_scale_out_sections_ran_without_error(results):
    assert results["errors"] == []
    assert set(results["sections"]) == set(SECTIONS)


def test_the_cluster_run_crossed_no_slot_and_spread_keys_and_calls_over_every_master(results):
    section = results["sections"]["cluster"]
    slots = section["slots"]

    assert slots["crossslot_errors"] == 0 and slots["buckets_crossing_slots"] == 0
    assert sum(slots["slots_per_master"]) == 16384
    assert sum(slots["buckets_per_master"]) == 1024 and min(slots["buckets_per_master"]) > 0
    # every session of the run is a session key, and its marker a field of its bucket's hash, on some master
    sessions = cluster_section.SESSIONS_PER_CLIENT * max(section["client_processes"])
    # (at least one hash: the ids' buckets are the run's draw)
    assert sum(slots["keys_per_master"]) >= sessions + 1
    assert min(slots["keys_per_master"]) > 0
    for target in ("single", "cluster"):
        for clients, by_op in section["runs"][target].items():
            for op, run in by_op.items():
                masters = 1 if target == "single" else section["masters"]
                assert len(run["calls_per_master"]) == masters, (target, op)
                assert run["ops"] > 0 and min(run["calls_per_master"]) > 0, (target, op)
                # the server counted at least the calls the clients timed
                assert sum(run["calls_per_master"]) >= run["ops"], (target, op)
                assert run["failed_calls"] == 0, (target, op)
                assert len(run["per_process_ops_per_second"]) == int(clients)
    for op in ("get", "update"):
        shard = section["per_shard_capacity"][op]
        assert shard["ops_per_server_cpu_second"] > 0 and shard["server_cpu_utilisation"] > 0
    assert all(value > 0 for value in section["ratios"]["cluster/single.update.ops"].values())


def test_the_cas_split_parts_add_up_to_the_update_over_its_floor(results):
    split = results["sections"]["cas_split"]

    assert split["update_p50_us"] > split["floor_evalsha_p50_us"] > 0
    assert sum(split["extra_parts_us"].values()) == pytest.approx(
        split["extra_over_floor_us"], abs=0.05)
    assert split["server_usec_per_call"]["update"] > split["server_usec_per_call"]["floor_evalsha"]
    assert set(split["script_steps_server_usec"]["step_cost"]) == {
        "no_epoch_read", "no_publish", "no_outbox", "no_marker"}
    assert split["ratios"]["update/(floor_evalsha+script_server_time)"] > 0


def test_every_memory_lever_is_measured_against_the_same_payload(results):
    levers = results["sections"]["memory_levers"]
    variants = levers["variants"]

    assert variants["current"]["ratio_to_current"] == 1.0
    assert all(v["bytes_per_session"] > levers["payload_bytes"] for v in variants.values())
    # the state alone is the least any format can hold
    floor = variants["floor"]["bytes_per_session"]
    assert all(v["bytes_per_session"] >= floor * 0.98 for v in variants.values())
    assert variants["marker_in_bucket_listpack"]["encoding"] == "listpack"
    assert variants["marker_in_bucket_hash"]["encoding"] == "hashtable"
    assert levers["best_lever"] not in ("floor", "no_marker")


def test_the_scale_out_targets_are_evaluated(results):
    checks = {c["target"]: c for c in results["targets"]}

    assert checks["no script crosses a hash slot (3-master cluster)"]["met"] is True
    assert results["targets"] == json.loads(json.dumps(targets.evaluate(results["sections"])))
