"""Tenants through the whole pipeline (Redis, LocalStack SQS, the consumer,
PostgreSQL): the events, their rows, the history, a recovery and the DLQ
carry the tenant, and one tenant's change never lands in another's rows."""
from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from chalicelib.adapters.redis.keys import session_keys
from chalicelib.domain.keys import SCOPES
from sessionsync import dlq
from tests.support.app import app_client
from tests.support.keys import key_set
from tests.support.pipeline import event_body, wait_until

pytestmark = pytest.mark.localstack


@pytest.fixture
def tenants_app(pipeline, pipeline_settings, use_settings):
    keyset, (acme, beta) = key_set(("acme", SCOPES), ("beta", SCOPES))
    use_settings(dataclasses.replace(pipeline_settings, api_keys=keyset))
    with app_client() as http:
        yield http, acme, beta


def test_the_same_ids_in_two_tenants_persist_to_their_own_rows_and_histories(pipeline, tenants_app):
    http, acme, beta = tenants_app
    sid, owner = f"p-{uuid.uuid4().hex[:10]}", f"u-{uuid.uuid4().hex[:8]}"
    for key, n in ((acme, 1), (beta, 100)):
        created = http.post("/sessions", headers=key.headers(),
                            body=json.dumps({"session_id": sid, "state": {"n": n}, "owner_id": owner}))
        assert created.status_code == 201, created.body
    updated = http.put(f"/sessions/{sid}", headers=acme.headers(),
                       body=json.dumps({"state": {"n": 2}, "expected_version": 1}))
    assert updated.status_code == 200, updated.body
    pipeline.deliver()

    internal = [f"acme/{sid}", f"beta/{sid}", sid]
    assert pipeline.event_rows(internal) == [(f"acme/{sid}", 1), (f"acme/{sid}", 2), (f"beta/{sid}", 1)]
    rows = pipeline.query("SELECT session_id, owner_id, state FROM sync_sessions WHERE session_id = ANY(%s) "
                          "ORDER BY session_id", [internal])
    assert rows == [(f"acme/{sid}", f"acme/{owner}", {"n": 2}), (f"beta/{sid}", f"beta/{owner}", {"n": 100})]

    def history(key):
        reply = http.get(f"/sessions/{sid}/events", headers=key.headers())
        assert reply.status_code == 200, reply.body
        return reply.json_body

    acme_history, beta_history = history(acme), history(beta)
    assert acme_history["session_id"] == beta_history["session_id"] == sid
    assert [(e["version"], e["state"]) for e in acme_history["events"]] == [(2, {"n": 2}), (1, {"n": 1})]
    assert [(e["version"], e["state"]) for e in beta_history["events"]] == [(1, {"n": 100})]

    # Redis loses acme's session: it comes back from acme's rows, beta's untouched
    pipeline.store.client.delete(session_keys(f"acme/{sid}")[0])
    recovered = http.get(f"/sessions/{sid}", headers=acme.headers())
    assert recovered.status_code == 200 and recovered.headers.get("X-Session-Source") == "postgresql"
    assert recovered.json_body["state"] == {"n": 2} and recovered.json_body["session_id"] == sid
    assert http.get(f"/sessions/{sid}", headers=beta.headers()).json_body["state"] == {"n": 100}


def test_a_revoke_all_that_walks_postgresql_stays_in_its_tenant(pipeline, tenants_app):
    http, acme, beta = tenants_app
    owner = f"u-{uuid.uuid4().hex[:8]}"
    sid = f"p-{uuid.uuid4().hex[:10]}"
    for key in (acme, beta):
        assert http.post("/sessions", headers=key.headers(), body=json.dumps(
            {"session_id": sid, "state": {}, "owner_id": owner})).status_code == 201
    pipeline.deliver()
    revoked = http.delete(f"/owners/{owner}/sessions", headers=beta.headers()).json_body
    assert revoked["deleted"] == 1 and revoked["remaining"] is False
    pipeline.deliver()
    assert pipeline.session_rows([f"acme/{sid}"])[f"acme/{sid}"][2] is False
    assert pipeline.session_rows([f"beta/{sid}"])[f"beta/{sid}"][2] is True
    assert http.get(f"/sessions/{sid}", headers=acme.headers()).status_code == 200


def test_a_dead_letter_names_its_tenant(pipeline):
    # version 0 breaks sync_events_version_positive: dead-lettered at once
    pipeline.send_bodies([event_body("acme/bad-version", 0)])
    pipeline.drain()
    [message] = wait_until(lambda: dlq.peek(pipeline.sqs, pipeline.queues.dlq_url, limit=10),
                           timeout=30, what="the dead letter")
    # the event_id attribute carries the tenant (SQS allows 10 attributes, all taken)
    assert message.attributes["event_id"] == "acme/bad-version:0"
    assert message.summary()["tenant"] == "acme" and message.summary()["session_id"] == "acme/bad-version"
