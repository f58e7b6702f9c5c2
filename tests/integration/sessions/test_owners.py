"""An owner's sessions: the listing and "log out everywhere" (revoke-all).

Every test of the first part runs twice through the ``store`` fixture: on
the single node and on the local 3-master Redis Cluster, where the owner's
index and each session are in different slots (no script may span them).
The second part checks what reaches PostgreSQL through the real pipeline
(LocalStack SQS, the consumer, PostgreSQL).  The property proved: after a
revoke-all returns, no session of the owner created (registered) before it
started survives, in Redis or PostgreSQL.  docs/guarantees.md, "owners".
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from chalicelib.adapters.postgres.database import Database
from chalicelib.adapters.redis.keys import (
    bucket_of,
    outbox_keys,
    owner_index_key,
    owner_revoke_keys,
    session_keys,
)
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.domain.errors import ServiceUnavailable, SessionExists, SessionNotFound
from chalicelib.domain.events import CREATED, DELETED, UPDATED, parse_event
from chalicelib.domain.validation import CreateRequest
from chalicelib.service import owners
from chalicelib.service.sessions import SessionService
from sessionsync.redis_views import stored
from tests.support.markers import forget_marker
from tests.support.pipeline import outbox_entries_of, wait_until


def _owner() -> str:
    return f"o-{uuid.uuid4().hex[:12]}"


def _ids(n: int, prefix: str = "t") -> list[str]:
    # sorted: the listing's order is the ids'
    return sorted(f"{prefix}-{uuid.uuid4().hex}" for _ in range(n))


def _create(service: SessionService, sid: str, owner: str | None, state: dict | None = None):
    return service.create(CreateRequest(sid, json.dumps(state or {"n": 1}), 600, owner))


def _index(store: SessionStore, owner: str) -> list[str]:
    return store.owner_ids(owner, count=10_000)


def _all_pages(service: SessionService, owner: str, limit: int) -> list[list[str]]:
    pages, after = [], None
    for _ in range(100):
        page = owners.list_sessions(service, owner, limit=limit, after=after)
        pages.append([s.session_id for s in page.sessions])
        if page.next_after is None:
            return pages
        after = page.next_after
    raise AssertionError("the listing never ended")


def _gone(store: SessionStore, sid: str) -> bool:
    """No live session: a tombstone (or nothing at all)."""
    try:
        return store.get(sid) is None
    except SessionNotFound:
        return True


@pytest.fixture
def service(store) -> SessionService:
    return SessionService(store)


# -- the listing ---------------------------------------------------------------

def test_an_owner_s_live_sessions_are_listed_page_by_page_in_id_order(store, service):
    owner, other = _owner(), _owner()
    mine = _ids(7)
    for sid in mine:
        _create(service, sid, owner)
    [theirs] = _ids(1)
    _create(service, theirs, other)
    [unowned] = _ids(1)
    _create(service, unowned, None)
    service.delete(mine[2])
    live = [sid for sid in mine if sid != mine[2]]

    pages = _all_pages(service, owner, limit=3)

    assert [sid for page in pages for sid in page] == live
    assert all(len(page) <= 3 for page in pages)
    first = owners.list_sessions(service, owner, limit=10)
    assert {s.owner_id for s in first.sessions} == {owner}
    assert json.loads(first.sessions[0].to_json())["owner_id"] == owner
    # the deleted session's entry was dropped on the way (a tombstone is final)
    assert _index(store, owner) == live


def test_an_unknown_owner_has_no_sessions_and_nothing_to_revoke(service):
    owner = _owner()
    page = owners.list_sessions(service, owner, limit=5)
    assert (page.sessions, page.next_after) == ([], None)
    assert owners.revoke_all(service, owner, budget_seconds=10) == owners.RevokeResult(owner, 0, 0, False)


def test_a_page_reads_a_bounded_part_of_an_index_full_of_dead_entries(store, service):
    """Entries with no session (creates not run, expired sessions) are
    skipped; a page reads at most limit x SCAN_FACTOR of them and says where
    to go on, so its cost never depends on the index's size."""
    owner = _owner()
    for sid in _ids(30, prefix="a"):
        store.owner_register(owner, sid)  # registered, never created
    [live] = _ids(1, prefix="z")
    _create(service, live, owner)

    page = owners.list_sessions(service, owner, limit=2)

    assert page.sessions == [] and page.next_after is not None
    assert [sid for p in _all_pages(service, owner, limit=2) for sid in p] == [live]


def test_a_page_of_large_sessions_stays_under_the_byte_budget_and_the_cursor_pages_on(store, service):
    """30 sessions near the state limit are ~7.5 MB: the default page (50)
    must stop before the response passes PAGE_BYTES (a Lambda response
    carries 6 MB), as history pages do, and hand a cursor that reaches the
    rest; a page holds at least one session, however small the budget."""
    from chalicelib.api.web import sessions_page_response
    from chalicelib.service.sessions import PAGE_BYTES

    owner = _owner()
    mine = _ids(30)
    for n, sid in enumerate(mine):
        # quotes and non-ASCII: escaped once more in the Lambda response
        _create(service, sid, owner, {"n": n, "blob": 'é"' * (120 * 1024)})

    read: list[int] = []  # bytes of state a page read from Redis
    peek = store.peek

    def counting_peek(ids):
        sessions = peek(ids)
        read[-1] += sum(len(s.state_json) for s in sessions if s is not None)
        return sessions

    store.peek = counting_peek  # type: ignore[method-assign]
    seen, sizes, after = [], [], None
    for _ in range(len(mine) + 2):  # bounded: a page holds one at least
        read.append(0)
        page = owners.list_sessions(service, owner, limit=50, after=after)
        body = sessions_page_response(owner, page.sessions, page.next_after).body
        sizes.append(len(json.dumps(body)))  # as the proxy response carries it
        seen += [s.session_id for s in page.sessions]
        after = page.next_after
        if after is None:
            break

    assert seen == mine
    assert len(sizes) >= 2 and max(sizes) <= PAGE_BYTES, sizes
    # memory stays bounded whatever the limit: a page reads what it can carry
    assert max(read) <= PAGE_BYTES, read
    tiny = owners.list_sessions(service, owner, limit=50, max_bytes=1)
    assert [s.session_id for s in tiny.sessions] == mine[:1] and tiny.next_after == mine[0]


def test_the_owner_index_has_its_own_slot_and_values_keep_their_owner(store, service, any_redis):
    owner = _owner()
    [sid] = _ids(1)
    _create(service, sid, owner, {"n": 1})
    if isinstance(any_redis, RedisCluster):
        assert key_slot(owner_index_key(owner).encode()) != key_slot(session_keys(sid)[0].encode())
    service.update(_update(sid, {"n": 2}))

    assert store.get(sid).owner_id == owner and store.get(sid).state == {"n": 2}
    deleted = service.delete(sid)
    assert deleted.owner_id == owner
    events = [parse_event(body) for body in _outbox_bodies(store, sid)]
    assert [(e.event_type, e.owner_id) for e in events] == [
        (CREATED, owner), (UPDATED, owner), (DELETED, owner)]


def test_a_session_without_an_owner_is_stored_and_shipped_as_before(store, service):
    [sid] = _ids(1)
    _create(service, sid, None)
    raw = store.client.get(session_keys(sid)[0]).decode()
    assert "@" not in raw.split("|")[4]  # the value format of sessions written before owners
    assert '"owner_id"' not in _outbox_bodies(store, sid)[0]
    assert "owner_id" not in json.loads(store.get(sid).to_json())


# -- revoke-all ----------------------------------------------------------------

def test_revoke_all_deletes_each_session_of_the_owner_and_says_how_many(store, service):
    owner, other = _owner(), _owner()
    mine = _ids(5)
    for sid in mine:
        _create(service, sid, owner)
    [theirs] = _ids(1)
    _create(service, theirs, other)

    result = owners.revoke_all(service, owner, budget_seconds=30)

    assert (result.deleted, result.blocked, result.remaining) == (5, 0, False)
    for sid in mine:
        with pytest.raises(SessionNotFound):
            store.get(sid)
        # each one a normal deletion: a tombstone, its event in the outbox
        assert parse_event(_outbox_bodies(store, sid)[-1]).event_type == DELETED
        with pytest.raises(SessionExists):  # and never created again
            _create(service, sid, owner)
    assert store.get(theirs).owner_id == other
    assert owners.list_sessions(service, owner, limit=10).sessions == []
    assert owners.revoke_all(service, owner, budget_seconds=30).deleted == 0


def test_an_id_registered_whose_create_has_not_run_is_tombstoned_and_its_create_then_fails(
        store, service):
    """The timeline above store.owner_index_key: the create registered its
    id (t0), the revoke-all ran (t1, t2), the create script runs last (t3)."""
    owner = _owner()
    [sid] = _ids(1)
    store.owner_register(owner, sid)  # t0; the create script is late

    result = owners.revoke_all(service, owner, budget_seconds=30)  # t1, t2

    assert (result.deleted, result.blocked) == (0, 1)
    with pytest.raises(SessionExists) as refused:  # t3
        store.create(sid, '{"n":1}', 600, owner_id=owner)
    assert refused.value.deleted
    with pytest.raises(SessionNotFound):
        store.get(sid)
    event = parse_event(_outbox_bodies(store, sid)[-1])
    assert (event.event_type, event.version, event.owner_id) == (DELETED, 1, owner)
    assert _index(store, owner) == []


def test_a_revoke_all_that_needs_postgresql_s_word_while_it_is_down_answers_503_and_keeps_the_entry(
        store):
    """An id registered whose create got a 503 before its script (it too
    needed PostgreSQL's word: Redis has no trace of the id): with
    PostgreSQL down the revoke-all cannot tell a create not run from a
    session Redis forgot, so it neither claims success nor drops the entry."""
    down = Database.from_dsn("postgresql://postgres@127.0.0.1:1/nowhere")
    service = SessionService(store, durable=down)
    owner = _owner()
    [sid] = _ids(1)
    store.owner_register(owner, sid)

    with pytest.raises(ServiceUnavailable):
        owners.revoke_all(service, owner, budget_seconds=30)

    assert _index(store, owner) == [sid]
    assert store.marker(sid) is None  # nothing written: the next call decides


def test_a_create_landing_between_the_revoke_all_s_reads_of_key_and_marker_is_deleted(
        store, service, monkeypatch):
    """t0 the revoke-all finds no key; t1 the create runs (key and marker);
    t2 the revoke-all reads the marker: not an expired session, a new one."""
    owner = _owner()
    [sid] = _ids(1)
    store.owner_register(owner, sid)
    real_marker = store.marker

    def create_lands_first(session_id):
        if session_id == sid and store.client.get(session_keys(sid)[0]) is None:
            store.create(sid, '{"n":1}', 600, owner_id=owner)  # t1
        return real_marker(session_id)

    monkeypatch.setattr(store, "marker", create_lands_first)
    result = owners.revoke_all(service, owner, budget_seconds=30)

    assert (result.deleted, result.blocked) == (1, 0)
    assert _gone(store, sid) and _index(store, owner) == []


def test_an_index_entry_of_an_id_another_owner_holds_is_neither_listed_nor_deleted(store, service):
    owner, other = _owner(), _owner()
    [sid] = _ids(1)
    _create(service, sid, other)
    with pytest.raises(SessionExists):  # registered in owner's index, then refused
        _create(service, sid, owner)
    assert _index(store, owner) == [sid]

    assert owners.list_sessions(service, owner, limit=10).sessions == []
    assert _index(store, owner) == []  # proven not the owner's: dropped
    store.owner_register(owner, sid)
    assert owners.revoke_all(service, owner, budget_seconds=30).deleted == 0
    assert store.get(sid).owner_id == other
    assert _index(store, owner) == []


class Crash(Exception):
    """Stands for the Lambda dying (a timeout, an out-of-memory kill)."""


def test_a_revoke_all_that_dies_halfway_is_finished_by_the_next_call(store, service, monkeypatch):
    owner = _owner()
    mine = _ids(6)
    for sid in mine:
        _create(service, sid, owner)
    store.owner_register(owner, _ids(1, prefix="z")[0])  # a create that never ran
    real_delete, calls = service.delete, []

    def dies_after_three(session_id, expected_version=None):
        if len(calls) == 3:
            raise Crash
        calls.append(session_id)
        return real_delete(session_id, expected_version)

    monkeypatch.setattr(service, "delete", dies_after_three)
    with pytest.raises(Crash):
        owners.revoke_all(service, owner, budget_seconds=30)
    monkeypatch.setattr(service, "delete", real_delete)
    assert calls == mine[:3]
    survivors = [sid for sid in mine if not _gone(store, sid)]
    assert survivors == mine[3:]

    retry = owners.revoke_all(service, owner, budget_seconds=30)

    assert (retry.deleted, retry.blocked, retry.remaining) == (3, 1, False)
    assert all(_gone(store, sid) for sid in mine)
    assert _index(store, owner) == []


def test_a_revoke_all_out_of_time_says_more_remain_and_the_next_call_goes_on(
        store, service, monkeypatch):
    owner = _owner()
    mine = _ids(5)
    for sid in mine:
        _create(service, sid, owner)
    monkeypatch.setattr(owners, "REVOKE_BATCH", 2)

    deleted, calls = 0, 0
    while True:
        calls += 1
        assert calls <= 10
        result = owners.revoke_all(service, owner, budget_seconds=0)  # one session per call
        deleted += result.deleted
        if not result.remaining:
            break
        assert result.deleted == 1

    assert deleted == 5 and calls == 5
    assert all(_gone(store, sid) for sid in mine)


def test_the_revoke_budget_follows_the_lambda_s_remaining_time():
    class Context:
        def __init__(self, ms):
            self.ms = ms

        def get_remaining_time_in_millis(self):
            return self.ms

    assert owners.revoke_budget(None) == owners.REVOKE_BUDGET_SECONDS
    assert owners.revoke_budget(Context(900_000)) == owners.REVOKE_BUDGET_SECONDS
    assert owners.revoke_budget(Context(10_000)) == 10 - owners.REVOKE_MARGIN_SECONDS
    assert owners.revoke_budget(Context(2_000)) == 1.0


def test_no_session_registered_before_a_revoke_all_survives_creates_racing_it(store, monkeypatch):
    """8 threads create sessions of the owner while a revoke-all runs; some
    creates wait between registering and their create script (the window
    the timeline is about).  Every id registered before the revoke-all
    started is dead after it; the ones registered after may live, and are
    listed."""
    owner = _owner()
    service = SessionService(store)
    registered: dict[str, float] = {}
    real_register = store.owner_register

    def slow_register(owner_id, session_id):
        real_register(owner_id, session_id)
        registered[session_id] = time.monotonic()
        if int(session_id[-1], 16) % 2:
            time.sleep(0.05)  # the create script comes late

    monkeypatch.setattr(store, "owner_register", slow_register)
    for sid in _ids(20, prefix="pre"):
        _create(service, sid, owner)
    stop = threading.Event()
    outcomes: dict[str, str] = {}

    def creator(n: int) -> None:
        for i in range(40):
            if stop.is_set():
                return
            sid = f"race-{n}-{i}-{uuid.uuid4().hex}"
            try:
                _create(service, sid, owner)
                outcomes[sid] = "created"
            except SessionExists:
                outcomes[sid] = "refused"

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(creator, n) for n in range(8)]
        # the threads are creating (however busy the machine): revoke now
        wait_until(lambda: len(registered) >= 40, timeout=60, what="the racing creates")
        started = time.monotonic()
        result = owners.revoke_all(service, owner, budget_seconds=60)
        stop.set()
        for future in futures:
            future.result(timeout=120)

    assert not result.remaining and result.deleted >= 20
    before = [sid for sid, at in registered.items() if at < started]
    assert len(before) > 20  # the race was run: creates of the threads preceded it
    survivors = [sid for sid in before if not _gone(store, sid)]
    assert survivors == []
    listed = {sid for page in _all_pages(service, owner, limit=50) for sid in page}
    alive = {sid for sid, outcome in outcomes.items() if outcome == "created" and not _gone(store, sid)}
    assert listed == alive


def test_a_revoke_all_ends_exactly_the_sessions_created_before_it_while_creates_go_on(store):
    """4 threads keep creating sessions of the owner before, during and
    after one revoke-all.  It ends every session whose create ended before
    it began, leaves every create that began after it alone (none refused,
    none deleted), does work bounded by what existed before it (not by the
    creates racing it), and finishes: ``remaining`` false, in one call."""
    owner = _owner()
    service = SessionService(store)
    for sid in _ids(20, prefix="pre"):
        _create(service, sid, owner)
    stop = threading.Event()
    creates: list[tuple[str, float, float, str]] = []  # id, start, end, outcome

    def creator(n: int) -> None:
        for i in range(3000):  # bounded; stopped once the revoke-all returned
            if stop.is_set():
                return
            sid = f"race-{n}-{i:05d}-{uuid.uuid4().hex[:8]}"
            start = time.monotonic()
            try:
                _create(service, sid, owner)
                outcome = "created"
            except SessionExists:
                outcome = "refused"
            creates.append((sid, start, time.monotonic(), outcome))

    # a create that overlaps the call may go either way; the revoke-all
    # takes its snapshot of the owner's ids at one instant within it: one
    # that starts after that instant is not its to end
    snapshot: list[float] = []
    real_begin = store.owner_revoke_begin

    def begin(owner_id, *, only_epoch=False):
        began = real_begin(owner_id, only_epoch=only_epoch)
        if not only_epoch:
            snapshot.append(time.monotonic())
        return began

    store.owner_revoke_begin = begin  # type: ignore[method-assign]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(creator, n) for n in range(4)]
        wait_until(lambda: len(creates) >= 40, timeout=60, what="the racing creates")
        started = time.monotonic()
        result = owners.revoke_all(service, owner, budget_seconds=10)
        ended = time.monotonic()
        # creates go on after it too: none of them is touched
        wait_until(lambda: sum(1 for c in creates if c[1] > ended) >= 20, timeout=60,
                   what="creates after the revoke-all")
        stop.set()
        for future in futures:
            future.result(timeout=120)

    assert not result.remaining, result
    before = [sid for sid, _, end, outcome in creates if end < started and outcome == "created"]
    after = [(sid, outcome) for sid, start, _, outcome in creates if start > snapshot[0]]
    assert len(before) >= 40 - 4 and after
    assert [sid for sid in before if not _gone(store, sid)] == []
    assert [sid for sid, outcome in after if outcome != "created" or _gone(store, sid)] == []
    # bounded by what existed (or was registered) when it took its snapshot
    registered_before = 20 + sum(1 for _, start, _, _ in creates if start < snapshot[0])
    assert result.deleted + result.blocked <= registered_before, (result, registered_before)


# -- helpers -------------------------------------------------------------------

def _update(sid: str, state: dict):
    from chalicelib.domain.validation import UpdateRequest
    return UpdateRequest(sid, json.dumps(state), None)


def _outbox_bodies(store: SessionStore, sid: str) -> list[str]:
    """The session's outbox events, by version."""
    _, _, _, data = session_keys(sid)
    ids = outbox_entries_of(store, [sid])
    bodies = [store.client.hget(data, eid) for eid in ids]
    events = sorted((json.loads(b)["version"], b.decode()) for b in bodies if b is not None)
    return [body for _, body in events]


# -- through the pipeline: PostgreSQL ends with a tombstone for each -------------

def test_postgresql_ends_with_a_tombstone_and_the_owner_for_each_revoked_session(pipeline):
    """The real pipeline (LocalStack SQS, the consumer, PostgreSQL): live
    sessions, one whose key Redis lost (recovered from PostgreSQL, then
    deleted), one registered whose create never ran, and another owner's."""
    store = pipeline.store
    service = SessionService(store, durable=pipeline.database,
                             settle_seconds=0.0)
    owner, other = _owner(), _owner()
    mine = _ids(4)
    for sid in mine:
        _create(service, sid, owner)
    [theirs] = _ids(1)
    _create(service, theirs, other)
    [never] = _ids(1, prefix="z")
    store.owner_register(owner, never)
    pipeline.deliver()
    assert {sid: row[0] for sid, row in pipeline.session_rows(mine).items()} == dict.fromkeys(mine, 1)
    assert pipeline.database.latest(mine[0]).owner_id == owner
    store.client.delete(session_keys(mine[0])[0])  # Redis lost the key; its marker is left

    result = owners.revoke_all(service, owner, budget_seconds=30)
    pipeline.deliver()

    assert (result.deleted, result.blocked, result.remaining) == (4, 1, False)
    rows = dict(pipeline.query(
        "SELECT session_id, (version, deleted, owner_id)::text FROM sync_sessions "
        "WHERE session_id = ANY(%s)", [[*mine, never, theirs]]))
    assert rows == {**{sid: f"(2,t,{owner})" for sid in mine}, never: f"(1,t,{owner})",
                    theirs: f"(1,f,{other})"}
    assert pipeline.query("SELECT count(*) FROM sync_sessions WHERE owner_id = %s AND NOT deleted",
                          [owner]) == [(0,)]
    with pytest.raises(SessionExists):  # the late create of the never-run id
        _create(service, never, owner)


def test_a_session_redis_forgot_with_its_index_entry_is_found_in_postgresql_and_deleted(pipeline):
    """Redis lost the session's key, marker and the owner's index (a restart
    without persistence): PostgreSQL's owned rows are the second list a
    revoke-all walks, so the session cannot come back from PostgreSQL later."""
    store = pipeline.store
    service = SessionService(store, durable=pipeline.database,
                             settle_seconds=0.0)
    owner = _owner()
    mine = _ids(3)
    for sid in mine:
        _create(service, sid, owner)
    pipeline.deliver()
    store.client.delete(session_keys(mine[1])[0], owner_index_key(owner))
    forget_marker(store.client, mine[1])

    result = owners.revoke_all(service, owner, budget_seconds=30)
    pipeline.deliver()

    assert (result.deleted, result.remaining) == (3, False)
    assert {sid: row[2] for sid, row in pipeline.session_rows(mine).items()} == dict.fromkeys(mine, True)
    with pytest.raises(SessionNotFound):
        service.get(mine[1])


def test_expired_rows_do_not_starve_a_live_session_redis_forgot_that_sorts_after_them(
        pipeline, monkeypatch):
    """PostgreSQL holds 2,000 sessions of the owner whose lifetime ended
    (half marked expired by the sweep, half not swept yet) and, sorting
    after them, a live one Redis forgot with its index entry.  A revoke-all
    skips the ended ones and keeps its place between calls: within a few
    calls of a small budget the live one is deleted, and a call after the
    job is done finds nothing left.  The walk is handed the live one only:
    asserted on what it was given, not on whether a fast machine got
    through the ended ones within the budget anyway."""
    store = pipeline.store
    service = SessionService(store, durable=pipeline.database,
                             settle_seconds=0.0)
    handed: list[str] = []
    read_rows = pipeline.database.owner_sessions

    def recorded(*args, **kwargs):
        ids, last = read_rows(*args, **kwargs)
        handed.extend(ids)
        return ids, last
    monkeypatch.setattr(pipeline.database, "owner_sessions", recorded)
    owner = _owner()
    with psycopg.connect(pipeline.dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sync_sessions (session_id, version, state, deleted, created_at,"
            " updated_at, ttl_seconds, owner_id, expires_at, expired)"
            " SELECT 'a-' || lpad(n::text, 5, '0') || %s, 1,"
            "        CASE WHEN n %% 2 = 0 THEN NULL ELSE '{}'::jsonb END, false,"
            "        now() - interval '2 hours', now() - interval '2 hours', 60, %s,"
            "        now() - interval '2 hours' + interval '60 seconds', n %% 2 = 0"
            " FROM generate_series(1, 2000) AS n", [owner[-6:], owner])
    [live] = _ids(1, prefix="z")
    _create(service, live, owner)
    pipeline.deliver()
    store.client.delete(session_keys(live)[0], owner_index_key(owner))  # Redis forgot it
    forget_marker(store.client, live)

    results = []
    for _ in range(5):  # bounded: the live one must be reached within these
        results.append(owners.revoke_all(service, owner, budget_seconds=0.5))
        if not results[-1].remaining:
            break
    pipeline.deliver()

    assert not results[-1].remaining, results
    assert sum(r.deleted for r in results) == 1, results
    assert pipeline.session_rows([live])[live][2] is True
    assert handed == [live], f"{len(handed)} rows handed to the walk: {handed[:3]}"
    assert owners.revoke_all(service, owner, budget_seconds=0.5).deleted == 0


def _forgotten(pipeline, service: SessionService, owner: str, count: int) -> list[str]:
    """``count`` sessions of the owner, persisted, then forgotten by Redis
    with their index entries: only PostgreSQL knows them."""
    mine = _ids(count)
    for sid in mine:
        _create(service, sid, owner)
    pipeline.deliver()
    pipeline.store.client.delete(*[session_keys(sid)[0] for sid in mine], owner_index_key(owner))
    for sid in mine:
        forget_marker(pipeline.store.client, sid)
    return mine


def test_a_revoke_all_out_of_time_in_postgresql_goes_on_where_it_stopped(pipeline, monkeypatch):
    """Out of time after each session (a zero budget), over scans of two
    rows: each call deals with the next session PostgreSQL holds and keeps
    its place, so the calls end; a call that starts over would meet the
    first one again (a tombstone not persisted yet) and never get on."""
    store = pipeline.store
    service = SessionService(store, durable=pipeline.database,
                             settle_seconds=0.0)
    owner = _owner()
    mine = _forgotten(pipeline, service, owner, 5)
    monkeypatch.setattr(owners, "REVOKE_SCAN_ROWS", 2)

    results = []
    for _ in range(12):  # bounded
        results.append(owners.revoke_all(service, owner, budget_seconds=0))
        if not results[-1].remaining:
            break
    pipeline.deliver()

    assert not results[-1].remaining and sum(r.deleted for r in results) == 5, results
    assert {sid: row[2] for sid, row in pipeline.session_rows(mine).items()} == dict.fromkeys(mine, True)
    assert store.client.exists(owner_revoke_keys(owner)[2]) == 0  # done: no place kept


def test_a_session_created_while_the_revoke_all_walks_postgresql_is_left_alone(pipeline):
    """A create that starts after the revoke-all began, persisted before the
    walk of PostgreSQL reads its row: live and the owner's, yet not one
    this revoke-all ends."""
    store = pipeline.store
    service = SessionService(store, durable=pipeline.database,
                             settle_seconds=0.0)
    owner = _owner()
    _forgotten(pipeline, service, owner, 2)
    [late] = _ids(1)
    walk = pipeline.database.owner_sessions

    def create_first(*args, **kwargs):
        if not store.client.exists(session_keys(late)[0]):
            _create(service, late, owner)
            pipeline.deliver()
        return walk(*args, **kwargs)

    service.durable = type("Durable", (), {"owner_sessions": staticmethod(create_first),
                                           "latest": pipeline.database.latest})()
    result = owners.revoke_all(service, owner, budget_seconds=30)
    pipeline.deliver()

    assert (result.deleted, result.remaining) == (2, False)
    assert service.get(late).session.version == 1
    assert pipeline.session_rows([late])[late][2] is False


def test_a_revoke_all_during_which_redis_went_back_in_time_answers_remaining(throwaway_redis):
    """Redis restarts without persistence after the first deletion: the
    revoke-all's set of ids is gone with everything else (on a failover to a
    replica that lacked it, the same), so it cannot tell whether ids
    registered before it remain: it answers ``remaining`` and the next call,
    with a snapshot of its own, finishes."""
    from chalicelib.adapters.redis.client import connect_redis
    from chalicelib.config import Settings

    store = SessionStore(connect_redis(Settings(redis_url=throwaway_redis.url)))
    service = SessionService(store)
    owner = _owner()
    for sid in _ids(3):
        _create(service, sid, owner)
    real_delete, restarted = service.delete, []

    def delete_then_restart(session_id, expected_version=None):
        deleted = real_delete(session_id, expected_version)
        if not restarted:
            throwaway_redis.stop()
            throwaway_redis.start()
            restarted.append(session_id)
            for _ in range(3):  # the pooled connection broke: reconnect
                try:
                    store.client.ping()
                    break
                except redis.ConnectionError:
                    continue
        return deleted

    service.delete = delete_then_restart  # type: ignore[method-assign]
    first = owners.revoke_all(service, owner, budget_seconds=30)
    service.delete = real_delete  # type: ignore[method-assign]

    assert restarted and (first.deleted, first.remaining) == (1, True), first
    assert owners.revoke_all(service, owner, budget_seconds=30).remaining is False


def test_a_revoke_all_tombstone_sqs_took_before_a_lossy_failover_is_persisted_the_other_reported(
        replicated_redis, sqs, queue_pair, database, pg_test_dsn, caplog):
    """The chaos scenario's case, one step at a time: the replica stops
    copying; a revoke-all deletes a (its event reaches SQS) and b (its send
    fails: the event stays in the primary's outbox); the replica is
    promoted.  a ends deleted in PostgreSQL and Redis is repaired from it;
    b's tombstone is lost with the outbox, as any change that never
    reached SQS, and reported: b is back at v1, and the next revoke-all,
    begun after Redis forgot, ends it."""
    from chalicelib.adapters.redis.client import connect_redis
    from chalicelib.config import Settings
    from tests.support.pipeline import Pipeline

    client = connect_redis(Settings(redis_url=replicated_redis.proxy_url))
    pipeline = Pipeline(sqs, queue_pair, SessionStore(client), database, pg_test_dsn)
    owner = _owner()
    a, b = _ids(2)

    def ship_only(sid: str) -> None:
        """The relay's send of one session's outbox entries (SQS took a's
        tombstone before the failover; b's was still waiting)."""
        entries = [eid for eid, _, _ in stored(pipeline.store, sid).outbox]
        _, bodies = outbox_keys(bucket_of(sid))
        events = [(eid, pipeline.store.client.hget(bodies, eid).decode()) for eid in entries]
        assert entries and pipeline.producer.send_many(events) == entries

    service = SessionService(pipeline.store, durable=database, settle_seconds=0.0)
    for sid in (a, b):
        _create(service, sid, owner)
    pipeline.deliver()
    replicated_redis.stop_replication()

    revoked = owners.revoke_all(service, owner, budget_seconds=30)
    assert (revoked.deleted, revoked.remaining) == (2, False)
    ship_only(a)
    pipeline.drain()  # a's tombstone, which SQS took; b's is in the outbox only
    replicated_redis.failover(lose_unreplicated=True)
    pipeline.deliver()  # the new primary's outbox has no trace of b's tombstone

    rows = {sid: row[2] for sid, row in pipeline.session_rows([a, b]).items()}
    assert rows == {a: True, b: False}
    with pytest.raises(SessionNotFound):
        service.get(a)  # Redis's v1 of the old epoch is repaired from PostgreSQL
    assert service.get(b).session.version == 1  # lost with the outbox ...
    reports = [r for r in caplog.records if "went back in time" in r.getMessage()]
    assert reports  # ... and reported
    again = owners.revoke_all(service, owner, budget_seconds=30)
    pipeline.deliver()
    assert again.deleted == 1 and pipeline.session_rows([b])[b][2] is True
    client.close()
