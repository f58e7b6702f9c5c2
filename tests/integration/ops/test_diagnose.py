"""``sessionsync diagnose`` on a real stack: what it finds, and what it tells
the operator to do about it."""
from __future__ import annotations

import dataclasses
import json
import uuid
from types import SimpleNamespace

import pytest
import redis

from chalicelib.adapters.redis.keys import session_keys
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.pipeline.outbox import OutboxRelay
from chalicelib.pipeline.producer import SqsProducer
from chalicelib.service.sessions import SessionService
from sessionsync import operations, redis_views
from tests.support.ops import cli_env, run_cli


def clients_for(pipeline, redis_client) -> SimpleNamespace:
    """The ``operations.Clients`` provider over a test pipeline's queues and
    database, and ``redis_client``."""
    store = SessionStore(redis_client)
    return SimpleNamespace(redis=lambda: redis_client, store=lambda: store,
                           sqs=lambda: pipeline.sqs, queue_url=lambda: pipeline.queues.url,
                           dlq_url=lambda: pipeline.queues.dlq_url, database=lambda: pipeline.database)


def findings(report: dict, section: str) -> list[dict]:
    return [f for f in report["findings"] if f["section"] == section]


@pytest.fixture
def own_redis(throwaway_redis):
    """A Redis of the test's own: diagnose reports on a whole server (its
    keys, outbox depth and sessions), which must hold only the test's data."""
    client = redis.Redis.from_url(throwaway_redis.url)
    yield client
    client.close()


def test_diagnose_on_a_healthy_stack_reports_every_section_and_exits_0(
        pipeline, pipeline_settings, throwaway_redis, own_redis):
    store = SessionStore(own_redis)
    service = SessionService(store)
    ids = [f"diag-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    for sid in ids:
        service.create(CreateRequest(sid, '{"step":1}', 600))
        service.update(UpdateRequest(sid, '{"step":2}', 1))
    # the relay ships them (this Redis is not the pipeline's), the worker persists them
    OutboxRelay(store, SqsProducer(pipeline.sqs, pipeline.queues.url, store), age_seconds=0).drain(
        budget_seconds=60)
    pipeline.drain(timeout=60)
    settings = dataclasses.replace(pipeline_settings, redis_url=throwaway_redis.url)

    result = run_cli("diagnose", "--format", "json", "--pings", "50", env=cli_env(settings))

    assert result.returncode == 0, (result.stdout, result.stderr)
    report = json.loads(result.stdout)
    assert {f["section"] for f in report["findings"]} == {
        "configuration", "redis", "sessions", "outbox", "queue", "postgresql", "lag"}
    # every verdict of a healthy stack, but one: a PING p99 above 5 ms is a
    # warning on a loaded machine (what the noisy neighbour costs, not a fault)
    ping = [f for f in findings(report, "redis") if "PING" in f["summary"]]
    assert len(ping) == 1 and ping[0]["level"] in ("ok", "warn")
    assert [(f["section"], f["level"]) for f in report["findings"] if f not in ping] == [
        ("configuration", "ok"), ("redis", "info"), ("redis", "ok"), ("sessions", "ok"),
        ("outbox", "ok"), ("queue", "ok"), ("queue", "ok"), ("postgresql", "ok"),
        ("postgresql", "ok"), ("lag", "ok")]
    assert "no maxmemory limit" in findings(report, "redis")[1]["summary"]  # the throwaway server's
    assert report["level"] == ("warn" if ping[0]["level"] == "warn" else "info")
    latency = findings(report, "redis")[0]["details"]["latency_ms"]
    assert set(latency) == {"p50", "p95", "p99", "max"} and latency["p50"] <= latency["p99"]
    assert findings(report, "redis")[0]["details"]["keys"] >= 6  # 3 sessions + markers
    policy = next(f for f in findings(report, "redis") if "maxmemory-policy" in f["summary"])
    assert policy["details"]["policy"] == "noeviction" and policy["level"] == "ok"
    sessions = findings(report, "sessions")[0]["details"]
    assert sessions["sampled"] >= 3 and sessions["ttl_left_s"]["min"] > 0
    assert findings(report, "outbox")[0]["details"]["depth"] == 0
    assert [f["summary"] for f in findings(report, "queue")] == [
        "queue: 0 waiting, 0 in flight, 0 delayed", "DLQ is empty"]
    recent = next(f for f in findings(report, "postgresql") if "recent_events" in f["details"])
    assert {e["session_id"] for e in recent["details"]["recent_events"]} & set(ids)
    lag = findings(report, "lag")[0]
    assert lag["level"] == "ok" and lag["details"]["behind"] == 0 and lag["details"]["checked"] >= 3

    text = run_cli("diagnose", "--pings", "5", env=cli_env(settings))
    assert text.returncode == 0
    assert "[ok]   reachable, SELECT 1 in" in text.stdout
    lines = text.stdout.rstrip().splitlines()
    verdicts = [line.split()[0] for line in lines if line.startswith("  [") and "PING" not in line]
    assert sorted(verdicts) == ["[info]"] + ["[ok]"] * 9
    ping_mark = next(line for line in lines if "PING" in line).split()[0]
    assert ping_mark in ("[ok]", "[warn]")
    assert lines[-1] == "overall: " + ("warn" if ping_mark == "[warn]" else "info")


@pytest.mark.parametrize("password, escaped", [("p@ssw0rd", "*%40******"), ("pa/ss@1", "**%2F**%40*")])
def test_diagnose_explains_an_unescaped_character_in_the_database_password(
        pipeline_settings, password, escaped):
    env = cli_env(pipeline_settings,
                  DATABASE_URL=f"postgresql://app:{password}@db.internal:5432/sessionsync")

    result = run_cli("diagnose", env=env)

    assert result.returncode == 2, result.stdout
    assert "[FAIL] DATABASE_URL: the password contains an unescaped" in result.stdout
    assert f"postgresql://app:{escaped}@db.internal:5432/sessionsync" in result.stdout
    assert "percent-encode the password in DATABASE_URL" in result.stdout
    assert password not in result.stdout + result.stderr  # masked, never printed
    assert "\nredis\n" not in result.stdout  # nothing is probed with a broken configuration

    report = json.loads(run_cli("diagnose", "--format", "json", env=env).stdout)
    failure = report["findings"][0]
    assert failure["details"]["setting"] == "DATABASE_URL"
    assert failure["details"]["suggestion"].endswith(f":{escaped}@db.internal:5432/sessionsync")


def test_diagnose_names_every_bad_setting_it_can(pipeline_settings):
    env = cli_env(pipeline_settings, REDIS_URL="http://cache:6379",
                  DATABASE_URL="postgresql://app:a@b@db/x")
    result = run_cli("diagnose", "--format", "json", env=env)
    assert result.returncode == 2
    settings = [f["details"]["setting"] for f in json.loads(result.stdout)["findings"]]
    assert settings == ["REDIS_URL", "DATABASE_URL"]


def test_a_session_persisted_behind_redis_with_nothing_in_flight_points_at_the_dlq(pipeline, own_redis):
    store = SessionStore(own_redis)
    sid = f"lost-{uuid.uuid4().hex[:8]}"
    written = store.create(sid, '{"a":1}', 600)
    # a change that left the outbox but never reached PostgreSQL (dead-lettered)
    store.outbox_ack([written.event_id])
    settings = Settings(queue_url=pipeline.queues.url, dlq_url=pipeline.queues.dlq_url,
                        database_url=pipeline.dsn, api_keys=("k" * 16,))

    report = operations.diagnose(settings, clients_for(pipeline, own_redis), pings=5).to_dict()

    lag = findings(report, "lag")[0]
    assert lag["level"] == "warn"
    assert {"session_id": sid, "lag": 1} in lag["details"]["examples"]
    assert "dlq list" in lag["fix"]


def test_diagnose_reports_a_dependency_that_is_down_and_still_checks_the_others(pipeline, throwaway_redis):
    throwaway_redis.stop()
    dead = redis.Redis.from_url(throwaway_redis.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    settings = Settings(redis_url=throwaway_redis.url, queue_url=pipeline.queues.url,
                        dlq_url=pipeline.queues.dlq_url, database_url=pipeline.dsn)
    clients = clients_for(pipeline, dead)

    report = operations.diagnose(settings, clients, pings=5)

    by_section = {f.section: f for f in report.findings}
    assert by_section["redis"].level == "fail" and "check REDIS_URL" in by_section["redis"].fix
    assert by_section["queue"].level == "ok"
    # reachable; whether events were persisted yet depends on the tests that ran before
    postgresql = [f.level for f in report.findings if f.section == "postgresql"]
    assert postgresql[0] == "ok" and "fail" not in postgresql, postgresql
    assert report.level == "fail"


@pytest.mark.parametrize("policy, marker_ttl, level", [
    ("noeviction", 0, "ok"), ("volatile-lru", 0, "ok"), ("volatile-ttl", 3600 * 24, "info"),
    ("volatile-lru", 3600 * 24, "warn"), ("allkeys-lru", 0, "fail")])
def test_the_eviction_policy_is_judged_by_what_it_can_evict(throwaway_redis, policy, marker_ttl, level):
    """Markers without a TTL (the default) cannot be taken by volatile-*."""
    client = redis.Redis.from_url(throwaway_redis.url)
    client.config_set("maxmemory-policy", policy)
    client.config_set("maxmemory", str(64 * 1024 * 1024))

    found = operations.check_redis(client, Settings(redis_url=throwaway_redis.url,
                                                    marker_ttl=marker_ttl), pings=5)

    verdict = next(f for f in found if "maxmemory-policy" in f.summary)
    assert verdict.level == level
    if level != "ok":
        assert verdict.fix  # explains what it can evict
    if policy.startswith("allkeys"):
        assert "outbox" in verdict.fix
    memory = next(f for f in found if f.summary.startswith(f"127.0.0.1:{throwaway_redis.port}: memory"))
    assert memory.details["maxmemory"] == 64 * 1024 * 1024
    client.close()


def test_ttl_sampling_finds_a_session_key_that_would_never_expire(throwaway_redis):
    client = redis.Redis.from_url(throwaway_redis.url)
    store = SessionStore(client)
    for i in range(5):
        store.create(f"ttl-{i}", '{"x":1}', 120)
    stray = session_keys("stray")[0]
    client.set(stray, "1|2026-01-01T00:00:00.000Z|2026-01-01T00:00:00.000Z|3600|L|{}")  # no EX

    samples = redis_views.sample(store, limit=50)
    found = operations.check_ttls(samples, Settings())

    assert {s.session_id for s in samples} == {f"ttl-{i}" for i in range(5)} | {"stray"}
    assert all(0 < s.ttl_left <= 120 for s in samples if s.session_id != "stray")
    no_ttl = next(f for f in found if f.level == "fail")
    assert no_ttl.details["examples"] == ["stray"]
    client.close()


@pytest.mark.cluster
def test_diagnose_checks_every_cluster_node_and_catches_a_cluster_setting_left_off(redis_cluster):
    store = SessionStore(redis_cluster)
    ids = [f"cl-{uuid.uuid4().hex[:8]}-{i}" for i in range(12)]
    for sid in ids:
        store.create(sid, '{"x":1}', 300)

    found = operations.check_redis(redis_cluster, Settings(redis_cluster=False), pings=5)
    samples = redis_views.sample(store, limit=10_000)

    nodes = {f.details["node"] for f in found if "latency_ms" in f.details}
    assert len(nodes) == 3
    assert [f.level for f in found if "REDIS_CLUSTER" in (f.fix or "")] == ["fail"] * 3
    assert set(ids) <= {s.session_id for s in samples}
    with_setting = operations.check_redis(redis_cluster, dataclasses.replace(Settings(), redis_cluster=True),
                                          pings=5)
    assert not [f for f in with_setting if "REDIS_CLUSTER" in (f.fix or "")]


def test_the_session_sample_tells_tombstones_from_live_sessions(own_redis):
    store = SessionStore(own_redis)
    store.create("diag-live", "{}", 600)
    store.create("diag-gone", "{}", 600)
    store.delete("diag-gone")

    samples = {s.session_id: s for s in redis_views.sample(store)}

    assert {sid: (s.version, s.deleted) for sid, s in samples.items()} == {
        "diag-live": (1, False), "diag-gone": (2, True)}
    details = operations.check_ttls(list(samples.values()), Settings())[0].details
    assert (details["sampled"], details["tombstones"]) == (2, 1)
