"""``sessionsync inspect``, ``sessionsync key`` and ``queue-metrics`` on the
real pipeline (Redis, LocalStack SQS, PostgreSQL), run as an operator runs
them: a process with its own environment."""
from __future__ import annotations

import json
import uuid

import pytest

from chalicelib.adapters.redis.keys import session_keys
from chalicelib.domain.store import Marker
from chalicelib.domain.validation import CreateRequest, UpdateRequest
from chalicelib.service.sessions import SessionService
from sessionsync.redis_views import key_names, stored
from tests.support.ops import cli_env, run_cli
from tests.support.pipeline import outbox_entries_of, wait_until

pytestmark = [pytest.mark.localstack]


@pytest.fixture
def service(pipeline) -> SessionService:
    return SessionService(pipeline.store, durable=pipeline.database)


@pytest.fixture
def sid() -> str:
    return f"inspect-{uuid.uuid4().hex[:10]}"


def inspect(settings, sid: str, *args: str) -> tuple[int, dict]:
    result = run_cli("inspect", sid, "--json", *args, env=cli_env(settings))
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def summaries(doc: dict) -> list[str]:
    return [f"[{f['level']}] {f['summary']}" for f in doc["findings"]]


def test_inspect_shows_a_healthy_session_in_redis_and_postgresql_and_exits_0(
        pipeline, pipeline_settings, service, sid):
    service.create(CreateRequest(sid, '{"step":1}', 600))
    service.update(UpdateRequest(sid, '{"step":2}', 1))
    pipeline.deliver()

    code, doc = inspect(pipeline_settings, sid)

    assert code == 0, doc
    assert doc["level"] == "ok"
    redis_doc = doc["redis"]
    assert redis_doc["key"] == session_keys(sid)[0] == doc["keys"]["session"]
    assert (redis_doc["present"], redis_doc["version"], redis_doc["deleted"]) == (True, 2, False)
    assert 0 < redis_doc["ttl_left_s"] <= 600 and redis_doc["ttl_seconds"] == 600
    assert redis_doc["value_bytes"] > len('{"step":2}') and redis_doc["memory_bytes"] > 0
    assert redis_doc["marker"]["version"] == 2 and redis_doc["marker"]["ttl_left_s"] == -1
    assert redis_doc["outbox"] == []
    assert doc["postgresql"]["session"]["version"] == 2 and doc["postgresql"]["lag_versions"] == 0
    assert [(e["version"], e["event_type"]) for e in doc["postgresql"]["events"]] == [
        (2, "session_updated"), (1, "session_created")]
    assert doc["dlq"]["messages"] == []
    assert summaries(doc)[-1] == "[ok] PostgreSQL agrees: v2"

    text = run_cli("inspect", sid, env=cli_env(pipeline_settings))
    assert text.returncode == 0
    assert f"redis       {session_keys(sid)[0]}  v2  TTL " in text.stdout
    assert "outbox      nothing waiting" in text.stdout
    assert "lag 0 version(s)" in text.stdout
    assert text.stdout.rstrip().endswith("overall: ok")


def test_inspect_explains_an_expired_session_that_the_next_read_recovers(
        pipeline, pipeline_settings, service, sid):
    service.create(CreateRequest(sid, '{"step":1}', 600))
    pipeline.deliver()
    pipeline.store.client.delete(session_keys(sid)[0])  # what expiry or eviction leaves

    code, doc = inspect(pipeline_settings, sid)

    assert code == 0, doc
    assert doc["redis"]["present"] is False and doc["redis"]["marker"]["version"] == 1
    assert summaries(doc) == [
        "[info] the Redis key has expired (or was evicted); the marker says v1: the next read "
        "recovers it from PostgreSQL",
        "[ok] PostgreSQL agrees: v1"]


def test_inspect_shows_a_deleted_session_as_deleted_everywhere(pipeline, pipeline_settings, service, sid):
    service.create(CreateRequest(sid, '{"step":1}', 600))
    service.delete(sid, 1)
    pipeline.deliver()

    code, doc = inspect(pipeline_settings, sid)

    assert code == 0, doc
    assert (doc["redis"]["version"], doc["redis"]["deleted"]) == (2, True)
    assert doc["postgresql"]["session"]["deleted"] is True
    assert summaries(doc)[-1] == "[ok] PostgreSQL agrees: v2 (deleted)"
    assert summaries(doc)[0].startswith("[ok] deleted at v2 (the tombstone expires in ")


def test_inspect_tells_a_version_waiting_in_the_outbox_from_one_in_flight_or_lost(
        pipeline, pipeline_settings, service, sid):
    service.create(CreateRequest(sid, '{"step":1}', 600))
    pipeline.deliver()
    # v2 went to SQS (its outbox entry acknowledged) and nobody consumes it;
    # v3 never reached SQS: its outbox entry is still there
    service.update(UpdateRequest(sid, '{"step":2}', 1))
    pipeline.relay.drain(budget_seconds=30)  # v2 shipped, not consumed
    pipeline.store.update(sid, '{"step":3}', 2)
    assert outbox_entries_of(pipeline.store, [sid]) == [f"{sid}:3"]

    code, doc = inspect(pipeline_settings, sid)

    assert code == 0, doc  # both explained: in flight and waiting are normal for seconds
    assert doc["postgresql"]["lag_versions"] == 2
    assert [e["version"] for e in doc["redis"]["outbox"]] == [3]
    assert summaries(doc)[-2:] == [
        "[info] Redis is at v3, PostgreSQL at v1: v3 is waiting in the outbox for SQS",
        "[info] Redis is at v3, PostgreSQL at v1, no outbox entry for v2: 1 version is in flight "
        "or lost, see dlq list"]

    pipeline.relay.drain(budget_seconds=30)  # v3 now in SQS too: no outbox entry at all
    code, doc = inspect(pipeline_settings, sid)
    assert code == 1, doc
    assert summaries(doc)[-1] == ("[warn] Redis is at v3, PostgreSQL at v1, no outbox entry: 2 versions "
                                  "are in flight or lost, see dlq list")

    pipeline.drain(timeout=60)
    code, doc = inspect(pipeline_settings, sid)
    assert code == 0 and summaries(doc)[-1] == "[ok] PostgreSQL agrees: v3"


def test_inspect_finds_the_sessions_dead_letters_and_leaves_them_in_the_dlq(
        pipeline, pipeline_settings, service, sid):
    service.create(CreateRequest(sid, '{"step":1}', 600))
    pipeline.deliver()
    # a state PostgreSQL's jsonb refuses (\u0000, SQLSTATE 22P05): the
    # consumer dead-letters it with its reason
    pipeline.store.update(sid, '{"step":"\\u0000"}', 1)
    pipeline.deliver()
    wait_until(lambda: pipeline.queue_depth(pipeline.queues.dlq_url)[0] == 1, timeout=30,
               what="the change in the DLQ")

    code, doc = inspect(pipeline_settings, sid)

    assert code == 1, doc
    assert [(m["session_id"], m["version"], m["error_code"]) for m in doc["dlq"]["messages"]] == [
        (sid, 2, "22P05")]
    finding = doc["findings"][-1]
    assert (finding["level"], finding["summary"]) == (
        "fail", "Redis is at v2, PostgreSQL at v1: v2 is in the DLQ")
    assert f"sessionsync dlq redrive --session-id {sid}" in finding["fix"]
    # peeked, not taken
    wait_until(lambda: pipeline.queue_depth(pipeline.queues.dlq_url) == (1, 0), timeout=30,
               what="the DLQ message visible again")

    text = run_cli("inspect", sid, env=cli_env(pipeline_settings))
    assert text.returncode == 1
    assert "dlq         1 message(s) for this session (of 1 read, left in place)" in text.stdout
    assert "  message   v2 PermanentPersistenceError 22P05" in text.stdout
    assert "[FAIL] Redis is at v2, PostgreSQL at v1: v2 is in the DLQ" in text.stdout


def test_inspect_of_an_unknown_id_says_so_and_exits_1(pipeline_settings, sid):
    code, doc = inspect(pipeline_settings, sid)
    assert code == 1
    assert summaries(doc) == [f"[warn] no trace of {sid!r}: Redis has no key and no marker, "
                              "PostgreSQL has no row"]


def test_inspect_reports_a_source_it_cannot_read_and_shows_the_others(pipeline, pipeline_settings,
                                                                       service, sid):
    service.create(CreateRequest(sid, '{"step":1}', 600))
    env = cli_env(pipeline_settings, DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere")

    result = run_cli("inspect", sid, "--json", env=env)

    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["redis"]["version"] == 1
    assert "postgresql" in doc["errors"]
    assert doc["findings"][0]["summary"].startswith("postgresql could not be read: ")


def test_key_prints_the_session_key_and_with_all_every_key_by_role(pipeline_settings, sid):
    env = cli_env(pipeline_settings)

    one = run_cli("key", sid, env=env)
    every = run_cli("key", "--all", sid, env=env)
    bad = run_cli("key", "not valid", env=env)

    assert (one.returncode, one.stdout) == (0, session_keys(sid)[0] + "\n")
    rows = [line.split() for line in every.stdout.splitlines()[1:]]
    assert dict(rows) == key_names(sid)
    assert set(session_keys(sid)) <= {k for _, k in rows}
    assert bad.returncode == 2 and "session id must match" in bad.stderr


def test_queue_metrics_reports_completed_from_postgresql_and_failed_from_the_dlq(
        pipeline, pipeline_settings, service, sid):
    env = cli_env(pipeline_settings)
    before = json.loads(run_cli("queue-metrics", "--json", env=env).stdout)
    service.create(CreateRequest(sid, '{"step":1}', 600))
    service.update(UpdateRequest(sid, '{"step":2}', 1))
    pipeline.store.update(sid, '{"step":"\\u0000"}', 2)  # dead-lettered (22P05)
    pipeline.deliver()
    wait_until(lambda: pipeline.queue_depth(pipeline.queues.dlq_url)[0] == 1, timeout=30,
               what="the change in the DLQ")

    result = run_cli("queue-metrics", "--format", "json", "--minutes", "10", env=env)

    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["queue"] == {"waiting": 0, "in_flight": 0, "delayed": 0}
    assert doc["failed"] == 1 == doc["dlq"]["waiting"]
    assert doc["completed_minutes"] == 10
    # the database is shared with the run's other tests: at least this test's two events
    assert doc["completed"] - before["completed"] >= 2
    table = run_cli("queue-metrics", env=env)
    assert table.returncode == 0
    assert "failed     1  messages in the DLQ" in table.stdout
    # the older spelling (--json, before --format json): the same, and a note
    older = run_cli("queue-metrics", "--json", "--minutes", "10", env=env)
    assert older.returncode == 0 and json.loads(older.stdout)["failed"] == 1
    assert "--json is deprecated" in older.stderr
    assert "events persisted in the last 5 min (PostgreSQL)" in table.stdout


def test_stored_reads_one_sessions_value_marker_and_outbox_entries_only(store, session_id):
    """On the single node and on the cluster: the bucket's outbox is shared,
    and only this session's entries come back."""
    neighbour = next(f"{session_id}-{n}" for n in range(10_000)
                     if session_keys(f"{session_id}-{n}")[2] == session_keys(session_id)[2])
    store.create(session_id, '{"a":1}', 120)
    store.update(session_id, '{"a":2}', 1)
    store.create(neighbour, '{"b":1}', 120)

    found = stored(store, session_id)

    assert (found.session.version, found.session.state) == (2, {"a": 2})
    assert 0 < found.ttl_left <= 120 and found.epoch_current is True
    assert found.value_bytes == len(store.client.get(session_keys(session_id)[0]))
    assert found.memory_bytes >= found.value_bytes
    assert (found.marker, found.marker_ttl_left) == (Marker(2, "L"), -1)
    assert [(eid, v) for eid, v, _ in found.outbox] == [(f"{session_id}:1", 1), (f"{session_id}:2", 2)]
    store.outbox_ack([f"{session_id}:1", f"{session_id}:2", f"{neighbour}:1"])
    store.client.delete(session_keys(session_id)[0])
    gone = stored(store, session_id)
    assert (gone.session, gone.ttl_left, gone.value_bytes, gone.outbox) == (None, None, 0, ())
    assert gone.marker == Marker(2, "L")
