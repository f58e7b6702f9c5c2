"""History pages are bounded by bytes as well as by count: a Lambda response
is capped, and a page of large states must stop before it, hand the client
a cursor, and never build more than a page in memory.  Real PostgreSQL (the
events are inserted straight into sync_events) and real Redis."""
from __future__ import annotations

import json
import uuid

import pytest

from chalicelib.adapters.redis.store import SessionStore
from chalicelib.api.web import history_page_response
from chalicelib.service.sessions import PAGE_BYTES, SessionService
from tests.support.app import app_client
from tests.support.constants import BEARER

LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024
STATE_BYTES = 250 * 1024
EVENTS = 30


def _insert_history(database, session_id: str, states: list[dict]) -> None:
    """versions 1..len(states), a create then updates, as the consumer writes them."""
    rows = [(session_id, version, "session_created" if version == 1 else "session_updated",
             json.dumps(state)) for version, state in enumerate(states, start=1)]
    with database._connection().cursor() as cursor:
        cursor.executemany(
            "INSERT INTO sync_events (session_id, version, event_type, state, occurred_at)"
            " VALUES (%s, %s, %s, %s::jsonb, now())", rows)


def _large_states(count: int, size: int) -> list[dict]:
    return [{"n": version, "blob": chr(ord("a") + version % 26) * size} for version in range(1, count + 1)]


@pytest.fixture
def service(database, redis_single):
    return SessionService(SessionStore(redis_single), durable=database)


def _walk(service, session_id: str, **options) -> list[list[int]]:
    pages, cursor = [], None
    for _ in range(EVENTS + 2):  # bounded: at least one event a page
        page = service.history(session_id, limit=500, before_version=cursor, **options)
        pages.append([e["version"] for e in page.events])
        cursor = page.next_before_version
        if cursor is None:
            return pages
    raise AssertionError(f"the pages do not end: {pages}")


def test_a_page_of_large_events_stays_under_the_byte_budget_and_the_pages_chain_through_every_version(
        database, service, use_settings, app_settings):
    sid = f"big-{uuid.uuid4().hex[:8]}"
    _insert_history(database, sid, _large_states(EVENTS, STATE_BYTES))
    use_settings(app_settings, service=service)

    seen, sizes, cursor = [], [], None
    with app_client() as http:
        for _ in range(EVENTS + 2):  # bounded
            query = "limit=500" + (f"&cursor={cursor}" if cursor else "")
            reply = http.get(f"/sessions/{sid}/events?{query}", headers=BEARER)
            assert reply.status_code == 200, reply.body[:200]
            # what the Lambda returns: the body as a JSON string in the proxy response
            envelope = json.dumps({"statusCode": 200, "headers": dict(reply.headers),
                                   "body": reply.body.decode()})
            sizes.append((len(reply.body), len(envelope)))
            page = json.loads(reply.body)
            seen += [e["version"] for e in page["events"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break

    assert seen == list(range(EVENTS, 0, -1))  # every version once, newest first
    assert len(sizes) >= 2, sizes  # the whole history is over the budget
    assert all(body <= PAGE_BYTES and envelope < LAMBDA_RESPONSE_LIMIT
               for body, envelope in sizes), sizes
    # pages are full, not one event each: the budget is used
    assert all(body > PAGE_BYTES - 2 * STATE_BYTES for body, _ in sizes[:-1]), sizes


def test_postgresql_ships_no_more_than_the_budget_whatever_the_limit(database, service):
    sid = f"ship-{uuid.uuid4().hex[:8]}"
    _insert_history(database, sid, _large_states(EVENTS, STATE_BYTES))
    shipped = []
    fetch = database._fetch

    def counting_fetch(sql, params, *args, **kwargs):
        rows = fetch(sql, params, *args, **kwargs)
        shipped.append(sum(len(json.dumps(row[4])) for row in rows if row[4] is not None))
        return rows

    database._fetch = counting_fetch
    budget = 1024 * 1024
    pages = _walk(service, sid, max_bytes=budget)

    assert [v for page in pages for v in page] == list(range(EVENTS, 0, -1))
    assert len(shipped) == len(pages) and max(shipped) <= budget, shipped


def test_a_tiny_budget_still_returns_one_event_per_page(database, service):
    sid = f"tiny-{uuid.uuid4().hex[:8]}"
    _insert_history(database, sid, [{"n": version} for version in range(1, EVENTS + 1)])

    pages = _walk(service, sid, max_bytes=1)

    assert pages == [[version] for version in range(EVENTS, 0, -1)]


def test_the_budget_counts_the_escaped_response_not_the_stored_text(database, service):
    # "é" is 2 bytes in PostgreSQL and 6 in the response ("\u00e9"), 7 once
    # the body is a JSON string in the Lambda response: the estimate in SQL
    # lets all of these through, the exact measure must cut the page
    sid = f"wide-{uuid.uuid4().hex[:8]}"
    count = 12
    _insert_history(database, sid, [{"text": "é" * (STATE_BYTES // 2)} for _ in range(count)])

    pages, cursor = [], None
    for _ in range(count + 2):  # bounded
        page = service.history(sid, limit=500, before_version=cursor)
        body = history_page_response(sid, page.events, page.next_before_version).body
        assert len(json.dumps(body)) <= PAGE_BYTES
        pages.append([e["version"] for e in page.events])
        cursor = page.next_before_version
        if cursor is None:
            break

    assert [v for page in pages for v in page] == list(range(count, 0, -1))
    assert len(pages) >= 2


def test_the_count_limit_still_pages_small_events(database, service):
    sid = f"small-{uuid.uuid4().hex[:8]}"
    _insert_history(database, sid, [{"n": version} for version in range(1, 8)])

    pages, cursor = [], None
    for _ in range(8):  # bounded
        page = service.history(sid, limit=3, before_version=cursor)
        pages.append([e["version"] for e in page.events])
        cursor = page.next_before_version
        if cursor is None:
            break

    assert pages == [[7, 6, 5], [4, 3, 2], [1]]
