"""scripts/capacity_render.py (``make capacity``): docs/capacity.md is the
rendering of docs/capacity.json, the inputs extracted from one bench run,
and the model's arithmetic holds on known inputs."""
from __future__ import annotations

import copy
import importlib.util
import json
import math

import pytest

from chalicelib import constants
from chalicelib.adapters.redis.keys import BUCKETS
from tests.support.constants import PROJECT_DIR

SCRIPT = PROJECT_DIR / "scripts" / "capacity_render.py"
_spec = importlib.util.spec_from_file_location("capacity_render", SCRIPT)
assert _spec is not None and _spec.loader is not None
capacity_render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(capacity_render)

SHARD = {"client_processes": 4, "ops_per_second": 8000.0, "server_cpu_utilisation": 0.4,
         "best_ops_per_second": 9000.0}
BENCH = {
    "profile": "full",
    "machine": {"git": {"commit": "abcdef0123456789", "dirty": False}, "started_at": "2026-11-29",
                "cpu_model": "Test CPU", "cpu_count": 2, "load_average_at_start": [0.1, 0.1, 0.1]},
    "sections": {
        "cluster": {"per_shard_capacity": {"update": {**SHARD, "ops_per_server_cpu_second": 20_000.0},
                                           "get": {**SHARD, "ops_per_server_cpu_second": 100_000.0}},
                    "slots": {"keys_imbalance": 1.05, "buckets_imbalance": 1.01,
                              "crossslot_errors": 0}},
        "memory": {"by_state_bytes": {"1024": {"used_memory_per_session_bytes": 1600.0}}},
        "memory_levers": {"best_lever": "combined_listpack",
                          "variants": {"combined_listpack": {"bytes_per_session": 1490.0}}},
        "consumer": {"handler": [
            {"batch_size": 1, "events_per_second": 1500.0, "batch_latency_ms": {"p50_ms": 0.6}},
            {"batch_size": 10, "events_per_second": 6500.0, "batch_latency_ms": {"p50_ms": 1.5}},
            {"batch_size": 100, "events_per_second": 9500.0, "batch_latency_ms": {"p50_ms": 10.6}}]},
        "handler": {"latency": {"handler_get": {"p50_us": 160.0}, "handler_put": {"p50_us": 260.0}}},
    },
}


def test_the_committed_page_is_the_rendering_of_its_committed_inputs():
    page = (PROJECT_DIR / capacity_render.OUTPUT).read_text()

    assert page == capacity_render.render_repo(PROJECT_DIR), "run `make capacity`"
    assert capacity_render.main(["--root", str(PROJECT_DIR), "--check"]) == 0


def test_check_fails_on_a_page_edited_away_from_its_inputs(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / capacity_render.INPUT).write_text(json.dumps(capacity_render.extract(BENCH)))
    assert capacity_render.main(["--root", str(tmp_path)]) == 0
    assert capacity_render.main(["--root", str(tmp_path), "--check"]) == 0

    page = tmp_path / capacity_render.OUTPUT
    page.write_text(page.read_text().replace("| 1,000 |", "| 2,000 |", 1))
    assert capacity_render.main(["--root", str(tmp_path), "--check"]) == 1


def test_inputs_are_extracted_from_the_bench_sections_that_measured_them():
    inputs = capacity_render.extract(BENCH)

    assert inputs["redis"]["update_ops_per_server_cpu_second"] == 20_000.0
    assert inputs["redis"]["update_ops_per_second_measured"] == 9000.0
    assert inputs["redis"]["bytes_per_session"] == 1600.0
    assert inputs["redis"]["best_lever_bytes_per_session"] == 1490.0
    assert inputs["consumer"] == {"batch_size": 10, "events_per_second_per_worker": 6500.0,
                                  "batch_p50_ms": 1.5, "batch_100_events_per_second": 9500.0}
    assert inputs["api"] == {"handler_get_p50_ms": 0.16, "handler_put_p50_ms": 0.26}
    assert inputs["source"]["commit"] == "abcdef0123456789"


def test_a_run_without_a_needed_section_is_refused_by_name():
    broken = copy.deepcopy(BENCH)
    broken["sections"]["cluster"] = {"error": "RuntimeError: no redis-cli"}

    with pytest.raises(capacity_render.InputError, match="cluster"):
        capacity_render.extract(broken)


def test_redis_shards_are_the_larger_of_load_and_memory():
    inputs = capacity_render.extract(BENCH)
    assumed, aws = capacity_render.ASSUMED, capacity_render.AWS

    small = capacity_render.redis_shards(inputs, 1_000, 1_000_000)
    # 1k writes: 1000 * (1/20000 + 2/100000) + 1000 reads / 100000 = 0.08 cores
    assert small["cores_busy"] == 0.08
    assert small["shards_by_load"] == math.ceil(0.08 / assumed["shard_utilisation"])
    big = capacity_render.redis_shards(inputs, 1_000, 100_000_000)
    usable = aws["elasticache_node_gib"] * (1 - aws["elasticache_reserved_fraction"])
    assert big["shards_by_memory"] == math.ceil(
        100_000_000 * 1600 / 2**30 * assumed["fragmentation"] / usable)
    assert big["shards"] == big["shards_by_memory"] and big["bound_by"] == "memory"


def test_consumer_concurrency_follows_one_workers_measured_batch_time():
    inputs = capacity_render.extract(BENCH)
    per_worker = 10 / ((1.5 + capacity_render.ASSUMED["vpc_rtt_ms"]) / 1000)

    out = capacity_render.sqs(inputs, 10_000)

    assert out["consumer_events_per_second_per_instance"] == round(per_worker)
    assert out["consumer_concurrency"] == math.ceil(
        10_000 / (per_worker * capacity_render.ASSUMED["consumer_utilisation"]))
    assert out["requests_per_second"] == 10_000 + 2 * 1_000


def test_the_first_bottleneck_is_the_resource_nearest_its_limit():
    inputs = capacity_render.extract(BENCH)
    grid = capacity_render.model(inputs)

    name, share = capacity_render.bottleneck(grid[(100_000, 100_000_000)])
    # 200k requests/s against the 10k/s account throttle: 20x
    assert name == "API Gateway request quota" and share == 20.0
    assert name in capacity_render.DESIGN_CHANGE


def test_the_scripts_constants_are_the_projects():
    assert capacity_render.CONSUMER_BATCH_SIZE == constants.CONSUMER_BATCH_SIZE
    assert capacity_render.CONSUMER_MAX_CONCURRENCY == constants.CONSUMER_MAX_CONCURRENCY
    assert capacity_render.BUCKETS == BUCKETS


# --- the monthly cost -----------------------------------------------------------

PRICES = capacity_render.load_prices()


def _priced(prices=PRICES):
    """(group.name, entry) of every price of infra/prices.toml."""
    return [(f"{group}.{name}", entry) for group, entries in prices.items() if isinstance(entries, dict)
            for name, entry in entries.items()]


def test_every_price_has_its_date_its_page_and_a_unit_in_one_region():
    import re
    assert PRICES["region"] == "us-east-1"
    assert len(_priced()) >= 15
    for name, entry in _priced():
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry["as_of"]), name
        assert entry["source"].startswith("https://aws.amazon.com/"), name
        assert entry["unit"] and isinstance(entry["checked"], bool), name
        values = [v for k, v in entry.items() if k in ("usd",)] or entry.get("tiers") or [
            v for k, v in entry.items() if k.startswith(("cache.", "db."))]
        assert values, f"{name} has no price"


def test_tiered_prices_charge_each_tier_at_its_rate():
    tiers = [[10, 1.0], [20, 0.5], [0, 0.1]]
    assert capacity_render.tiered(5, tiers) == 5.0
    assert capacity_render.tiered(30, tiers) == 10 * 1.0 + 20 * 0.5
    assert math.isclose(capacity_render.tiered(130, tiers), 10 + 10 + 100 * 0.1)
    # API Gateway's REST tiers: 333M at 3.50, 667M at 2.80 per million
    rest = PRICES["api_gateway"]["rest_request"]["tiers"]
    assert math.isclose(capacity_render.tiered(1_000_000_000, rest, 1_000_000), 333 * 3.5 + 667 * 2.8)


def test_the_costed_instances_and_nodes_are_priced_and_the_alarms_counted_from_the_templates():
    rds = PRICES["rds"]
    for writes, db_class in capacity_render.COSTED["db_instance_class"].items():
        assert writes in capacity_render.WRITES_PER_SECOND
        assert rds["instance_hour"][db_class] > 0 and rds["instance_vcpus"][db_class] >= 2, db_class
    assert PRICES["elasticache"]["node_hour"][capacity_render.AWS["elasticache_node"]] > 0
    templates = [*(PROJECT_DIR / "infra" / "stacks").glob("*.yaml")]
    alarms = sum(t.read_text().count("Type: AWS::CloudWatch::Alarm") for t in templates)
    alarms += (PROJECT_DIR / "infra" / "chalice-merge.json").read_text().count('"AWS::CloudWatch::Alarm"')
    assert capacity_render.ALARMS == alarms
    assert capacity_render.DASHBOARDS == sum(t.read_text().count("Type: AWS::CloudWatch::Dashboard")
                                             for t in templates)
    chalice = json.loads((PROJECT_DIR / ".chalice" / "config.json").read_text())["stages"]["prod"]
    assert capacity_render.function_memory_gb()["api_handler"] == chalice["lambda_memory_size"] / 1024


def test_the_monthly_cost_follows_the_model_line_by_line():
    inputs = capacity_render.extract(BENCH)
    grid = capacity_render.model(inputs)
    memory = {"api_handler": 1.0, "persist_changes": 1.0, "authorizer": 1.0, "relay_outbox": 1.0}
    step = grid[(1_000, capacity_render.LIVE_SESSIONS[0])]
    cost = capacity_render.monthly_cost(step, inputs, 1_000, PRICES, memory)
    month = capacity_render.SECONDS_PER_MONTH

    requests = 2_000 * month  # one read per write
    assert math.isclose(cost["API Gateway"], capacity_render.tiered(
        requests, PRICES["api_gateway"]["rest_request"]["tiers"], 1_000_000))
    # a write is billed ceil(0.26 + 2 x 0.5 + 8) = 10 ms, a read ceil(0.16 + 0.5) = 1 ms, a
    # batch of 10 ceil(1.5 + 0.5) = 2 ms, at 1 GB; and the authorizer and schedules besides
    gb_seconds = (1_000 * month * 0.010 + 1_000 * month * 0.001 + 100 * month * 0.002
                  + 10 * month / 300 * 0.001 + 2 * 60 * 730 * 0.050 + 730 * 2.0)
    assert math.isclose(cost["Lambda duration"],
                        capacity_render.tiered(gb_seconds, PRICES["lambda"]["gb_second_x86"]["tiers"]))
    assert math.isclose(cost["SQS"], 1_200 * month / 1e6 * PRICES["sqs"]["standard_request"]["usd"])
    nodes = step["redis"]["shards"] * 2
    node_hour = PRICES["elasticache"]["node_hour"]["cache.r7g.large"]
    assert math.isclose(cost["ElastiCache"], nodes * node_hour * 730)
    assert math.isclose(cost["RDS instance"], 2 * PRICES["rds"]["instance_hour"]["db.r6g.large"] * 730)
    assert math.isclose(cost["RDS Proxy"], 2 * PRICES["rds"]["proxy_vcpu_hour"]["usd"] * 730)
    # more traffic never costs less, line by line
    bigger = capacity_render.monthly_cost(grid[(10_000, capacity_render.LIVE_SESSIONS[1])], inputs, 10_000,
                                          PRICES, memory)
    assert all(bigger[line] >= cost[line] for line in cost)
