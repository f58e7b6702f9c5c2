"""The pure computations of the cluster, cas_split and memory_levers bench
sections, on known inputs."""
from __future__ import annotations

import calendar

import pytest
from redis.crc import key_slot

from chalicelib.adapters.redis.keys import BUCKETS, bucket_tag
from chalicelib.adapters.redis.scripts import UPDATE_SCRIPT
from sessionsync.bench import cas_split, cluster, memory_levers, targets


def test_every_bucket_maps_all_its_keys_to_one_slot_and_buckets_to_distinct_slots():
    check = cluster.bucket_slot_check()

    assert check["buckets_crossing_slots"] == 0
    assert len(check["bucket_slots"]) == BUCKETS
    assert check["distinct_slots"] == BUCKETS
    assert check["bucket_slots"][7] == key_slot(bucket_tag(7).encode())


def test_buckets_are_counted_per_master_from_the_slot_ranges():
    ranges = [(0, 5460, "0"), (5461, 10922, "1"), (10923, 16383, "2")]

    counts = cluster.buckets_per_master([0, 5460, 5461, 16383, 12000], ranges)

    assert counts == {"0": 2, "1": 1, "2": 2}
    with pytest.raises(ValueError, match="no master"):
        cluster.buckets_per_master([100], [(0, 50, "0")])


def test_imbalance_is_the_busiest_share_over_an_even_share():
    assert cluster.imbalance([100, 100, 100]) == 1.0
    assert cluster.imbalance([150, 75, 75]) == 1.5
    assert cluster.imbalance([0, 0, 0]) == 0.0


def test_cpu_ceiling_says_when_processes_outnumber_the_cores_they_may_use():
    pinned = cluster.cpu_ceiling(4, 3, 2, client_cpus=1, server_cpus=1)
    assert pinned["cpu_bound"] and pinned["clients_share_cores"] and pinned["servers_share_cores"]
    assert not cluster.cpu_ceiling(1, 1, 2, client_cpus=1, server_cpus=1)["cpu_bound"]
    assert cluster.cpu_ceiling(2, 1, 2)["cpu_bound"]
    assert not cluster.cpu_ceiling(1, 1, 4)["cpu_bound"]


def test_shard_capacity_is_the_rate_at_one_full_server_core():
    shard = cluster.shard_capacity(ops=10_000, seconds=2.0, server_cpu_seconds=0.5,
                                   usec_per_call=40.0)

    assert shard["ops_per_second"] == 5000.0
    assert shard["server_cpu_utilisation"] == 0.25
    assert shard["ops_per_server_cpu_second"] == 20_000.0
    assert shard["command_time_bound_ops_per_second"] == 25_000.0
    assert shard["command_share_of_server_cpu"] == 0.8


def test_the_update_split_adds_up_to_the_difference_from_the_floor():
    p50 = {"update": 120.0, "floor_evalsha": 60.0, "echo": 75.0, "ping": 58.0}
    server = {"update": 40.0, "floor_evalsha": 2.0, "echo": 6.0}
    client = {"store_python": 5.0, "redis_py_update": 5.0, "redis_py_floor": 2.5}

    out = cas_split.split(p50, server, client)

    parts = out["extra_parts_us"]
    assert parts["script_server_time"] == 38.0
    assert parts["payload_on_the_wire"] == 11.0
    assert parts["sessionsync_python"] == 5.0
    assert sum(parts.values()) == pytest.approx(out["extra_over_floor_us"]) == 60.0
    assert out["floors_us"]["round_trip_plus_script_server_time"] == 98.0
    assert out["floors_us"]["payload_round_trip_plus_script_server_time"] == 109.0
    assert out["ratios"]["update/floor_evalsha"] == 2.0
    assert out["ratios"]["update/(floor_evalsha+script_server_time)"] == round(120 / 98, 3)


def test_each_script_variant_takes_out_exactly_its_step():
    for name, old, new in cas_split.VARIANTS:
        variant = cas_split.variant_script(name)
        assert old not in variant and variant == UPDATE_SCRIPT.replace(old, new), name
    assert cas_split.prelude_script().rstrip().endswith("return 1")
    with pytest.raises(KeyError):
        cas_split.variant_script("no_such_step")


def test_memory_verdicts_compare_each_variant_with_the_payload_and_the_current_format():
    out = memory_levers.verdicts({"current": 1600.0, "marker_in_bucket_listpack": 1500.0}, 1024)

    assert out["current"]["ratio_to_current"] == 1.0
    assert out["current"]["meets_target"] is False
    lever = out["marker_in_bucket_listpack"]
    assert lever["ratio_to_payload"] == round(1500 / 1024, 3)
    assert lever["saved_bytes_per_session"] == 100.0 and lever["meets_target"] is True


def test_the_compact_head_keeps_the_value_but_its_timestamps():
    value = b"3|2026-11-28T16:33:30.405Z|2026-11-28T16:33:31.000Z|3600|Lab12cd34|{\"a\":1}"

    created = calendar.timegm((2026, 11, 28, 16, 33, 30)) * 1000 + 405
    assert memory_levers.compact_value(value) == (
        b"3|%d|%d|3600|Lab12cd34|{\"a\":1}" % (created, created + 595))


def test_session_ids_are_uuid_shaped_distinct_and_reproducible():
    first = memory_levers.ids(1000, 1)

    assert len(set(first)) == 1000 and all(len(i) == 36 for i in first)
    assert first == memory_levers.ids(1000, 1) and not set(first) & set(memory_levers.ids(1000, 2))


def _sections(crossslot: int, lever_ratio: float) -> dict:
    shard = {"ops_per_second": 5000.0, "server_cpu_utilisation": 0.5,
             "ops_per_server_cpu_second": 10_000.0}
    return {
        "cluster": {"masters": 3, "slots": {"crossslot_errors": crossslot,
                                            "buckets_crossing_slots": 0},
                    "per_shard_capacity": {"get": shard, "update": shard}},
        "cas_split": {"ratios": {"update/(floor_evalsha+script_server_time)": 1.2},
                      "server_usec_per_call": {"update": 40.0, "floor_evalsha": 2.0},
                      "script_steps_server_usec": {"minimal_cas_script": 15.0,
                                                   "full/minimal_cas": 2.667}},
        "memory_levers": {"best_lever": "combined_listpack",
                          "best_lever_ratio_to_payload": lever_ratio},
    }


def test_the_scale_out_targets_judge_crossslot_errors_and_the_best_memory_lever():
    checks = {c["target"]: c for c in targets.evaluate(_sections(0, 1.46))}
    slot = checks["no script crosses a hash slot (3-master cluster)"]
    lever = checks["memory per 1 KB session with the best lever (combined_listpack), scratch server"]
    assert slot["met"] is True and lever["met"] is True
    assert checks["per-shard capacity, update (one Redis core)"]["met"] is None
    own = checks["update script's own server time < 25 us"]
    assert (own["measured"], own["limit"], own["met"]) == (40.0, 25.0, False)
    assert "minimal CAS (GET, compare, SET) 15.0 us" in own["how"]

    failing = {c["target"]: c for c in targets.evaluate(_sections(2, 1.6))}
    assert failing["no script crosses a hash slot (3-master cluster)"]["met"] is False
    assert failing["memory per 1 KB session with the best lever (combined_listpack), "
                   "scratch server"]["met"] is False
