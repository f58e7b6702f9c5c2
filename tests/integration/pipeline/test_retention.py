"""Audit retention on real PostgreSQL: old ``sync_events`` rows go in
bounded batches; every session's latest row stays, and so does every row
younger than the retention (the rows a duplicate or a conflict is checked
against); a dry run and an unset setting change nothing; a purge running
beside the consumer neither removes a row that just became the latest nor
deadlocks.

Each test has a database of its own (``empty_dsn``, migrated), so the
counts it asserts are its own rows'.
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from chalicelib import runtime
from chalicelib.adapters.postgres import retention as sql
from chalicelib.adapters.postgres.database import APPLY_SQL, Database, apply_parameters
from chalicelib.config import Settings
from chalicelib.domain.events import CREATED, DELETED, UPDATED, ChangeEvent
from chalicelib.pipeline.retention import PurgeReport, purge_events
from sessionsync import provisioning
from tests.support.constants import API_KEY, REDIS_TEST_URL, TEST_CHANNEL
from tests.support.ops import cli_env, run_cli, run_cli_on_terminal

DAYS = 90
OLD = 400  # days ago: past the retention
YOUNG = 10  # days ago: inside it
# a wait that must not happen (a purge blocked by the consumer) shows as this
BLOCKED_SECONDS = 10


@pytest.fixture
def dsn(empty_dsn) -> str:
    provisioning.migrate(empty_dsn)
    return empty_dsn


@pytest.fixture
def db(dsn):
    database = Database.from_dsn(dsn)
    yield database
    database.close()


@pytest.fixture
def admin(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def event(session_id: str, version: int, state: dict | None = None, *, deleted: bool = False,
          occurred_at: str = "2025-01-01T00:00:00.000Z") -> ChangeEvent:
    kind = DELETED if deleted else CREATED if version == 1 else UPDATED
    state_json = None if deleted else json.dumps(state or {"v": version}, separators=(",", ":"))
    return ChangeEvent(f"{session_id}:{version}", kind, session_id, version, "2025-01-01T00:00:00.000Z",
                       occurred_at, 3600, state_json)


def persist(db: Database, admin, session_id: str, ages: dict[int, int], *,
            deleted_last: bool = False) -> None:
    """Versions 1..n of ``session_id`` through the consumer's statement,
    then each one's persisted_at moved ``ages[version]`` days back."""
    last = max(ages)
    result = db.apply_events([event(session_id, v, deleted=deleted_last and v == last) for v in sorted(ages)])
    assert not result.failures and result.inserted == len(ages), result
    for version, days in ages.items():
        admin.execute("UPDATE sync_events SET persisted_at = now() - make_interval(days => %s) "
                      "WHERE session_id = %s AND version = %s", (days, session_id, version))


def versions(admin, session_id: str) -> list[int]:
    rows = admin.execute("SELECT version FROM sync_events WHERE session_id = %s ORDER BY version",
                         (session_id,)).fetchall()
    return [v for (v,) in rows]


def all_rows(admin) -> list[tuple]:
    return admin.execute("SELECT session_id, version, persisted_at FROM sync_events "
                         "ORDER BY session_id, version").fetchall()


class CountingConnection:
    """The purge's connection, counting the statements sent through it."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.sent: list[str] = []

    def execute(self, query, params=None):
        self.sent.append("batch" if query in (sql.PURGE_BATCH_SQL, sql.COUNT_BATCH_SQL) else query)
        return self.conn.execute(query, params)

    def __getattr__(self, name):  # closed, broken...
        return getattr(self.conn, name)


@pytest.fixture
def statements(db, monkeypatch) -> list[str]:
    """Every statement the purge sends on ``db`` ("batch" for a batch)."""
    sent: list[str] = []
    held = db.held_connection

    @contextmanager
    def counting():
        with held() as conn:
            counted = CountingConnection(conn)
            yield counted
            sent.extend(counted.sent)
    monkeypatch.setattr(db, "held_connection", counting)
    return sent


def test_old_rows_are_purged_in_batches_of_the_size_given_and_each_session_keeps_its_latest(
        db, admin, statements):
    for name in ("a", "b", "c"):
        persist(db, admin, name, {v: OLD for v in range(1, 6)})
    seen: list[tuple[int, int, int]] = []

    report = purge_events(db, DAYS, batch_size=4,
                          on_batch=lambda r: seen.append((r.batches, r.scanned, r.purged)))

    # 15 old rows, 4 a statement: 4 + 4 + 4 + 3, the short one is the last
    assert report.batches == 4 and len(seen) == 4
    assert statements.count("batch") == 4
    # each in a transaction of its own with the lock, the saved place read,
    # and the place reached saved (cleared after the last)
    each = [sql.LOCK_SQL, sql.READ_CURSOR_SQL, "batch"]
    assert statements == [*each, sql.SAVE_CURSOR_SQL] * 3 + [*each, sql.CLEAR_CURSOR_SQL]
    assert [scanned for _, scanned, _ in seen] == [4, 8, 12, 15]
    assert (report.scanned, report.purged, report.kept, report.complete) == (15, 12, 3, True)
    assert {name: versions(admin, name) for name in ("a", "b", "c")} == {"a": [5], "b": [5], "c": [5]}
    assert admin.execute("SELECT count(*) FROM sync_events_purge_cursor").fetchone()[0] == 0

    again = purge_events(db, DAYS, batch_size=4)
    assert (again.batches, again.scanned, again.purged) == (1, 3, 0)


def test_rows_younger_than_the_retention_are_kept_whatever_their_version(db, admin):
    persist(db, admin, "s", {1: OLD, 2: OLD, 3: YOUNG, 4: YOUNG, 5: 0})

    report = purge_events(db, DAYS)

    assert (report.batches, report.scanned, report.purged) == (1, 2, 2)
    assert versions(admin, "s") == [3, 4, 5]


def test_a_latest_row_is_kept_however_old_a_deletion_included_so_its_history_is_never_empty(db, admin):
    persist(db, admin, "gone", {1: OLD, 2: OLD, 3: OLD}, deleted_last=True)
    persist(db, admin, "quiet", {1: OLD})

    purge_events(db, DAYS)

    assert versions(admin, "gone") == [3] and versions(admin, "quiet") == [1]
    assert [e["event_type"] for e in db.history("gone", limit=10)] == [DELETED]
    latest = db.latest("gone")
    assert latest is not None and latest.deleted and latest.version == 3


def test_the_rows_a_duplicate_or_a_conflict_is_checked_against_are_kept(db, admin):
    persist(db, admin, "s", {1: OLD, 2: OLD, 3: YOUNG, 4: OLD})  # 4 is the latest, old
    purge_events(db, DAYS)
    assert versions(admin, "s") == [3, 4]

    # a redelivery of the old latest row is a duplicate; another write under
    # its version (a failover lost it, the version was issued again) a conflict
    duplicate = db.apply_events([event("s", 4)])
    assert (duplicate.inserted, duplicate.duplicates, duplicate.failures) == (0, 1, {})
    conflict = db.apply_events([event("s", 4, {"forked": True})])
    assert conflict.failures[0].details["reason"] == "version_conflict"
    # the same for a row younger than the retention that is no longer the latest
    assert db.apply_events([event("s", 3, {"forked": True})]).failures[0].details["reason"] == \
        "version_conflict"
    assert versions(admin, "s") == [3, 4]


def test_a_dry_run_counts_what_would_go_and_changes_nothing(db, admin):
    for name in ("a", "b"):
        persist(db, admin, name, {1: OLD, 2: OLD, 3: OLD})
    before = all_rows(admin)

    report = purge_events(db, DAYS, batch_size=2, dry_run=True)

    assert (report.batches, report.scanned, report.purged, report.kept) == (4, 6, 4, 2)
    assert all_rows(admin) == before
    assert admin.execute("SELECT count(*) FROM sync_events_purge_cursor").fetchone()[0] == 0


def test_with_the_retention_unset_nothing_is_purged(db, admin, dsn, use_settings):
    persist(db, admin, "s", {1: OLD, 2: OLD})
    before = all_rows(admin)

    assert purge_events(db, None).batches == 0
    use_settings(Settings(database_url=dsn, api_keys=(API_KEY,), channel=TEST_CHANNEL))
    assert runtime.purge_events().batches == 0
    assert all_rows(admin) == before


def test_the_scheduled_function_purges_with_the_setting(db, admin, dsn, use_settings):
    from chalice.test import Client

    from app import app
    from tests.support.constants import PROJECT_DIR
    persist(db, admin, "s", {1: OLD, 2: OLD})
    use_settings(Settings(database_url=dsn, api_keys=(API_KEY,), channel=TEST_CHANNEL,
                          events_retention_days=DAYS))
    with Client(app, stage_name="local", project_dir=str(PROJECT_DIR)) as client:
        reply = client.lambda_.invoke("purge_sync_events", client.events.generate_cw_event(
            source="aws.events", detail_type="Scheduled Event", detail={},
            resources=["arn:aws:events:us-east-1:123456789012:rule/sessionsync-purge_sync_events"]))
    assert reply.payload["purged"] == 1 and reply.payload["days"] == DAYS
    assert versions(admin, "s") == [2]


def test_a_run_cut_short_by_its_budget_resumes_where_it_stopped(db, admin):
    persist(db, admin, "s", {v: OLD for v in range(1, 11)})
    ticks = iter(range(100))

    # the clock moves one second a call: the budget of 2.5 s allows the first
    # check, and the checks before the second and third batches
    first = purge_events(db, DAYS, batch_size=3, budget_seconds=2.5, clock=lambda: float(next(ticks)))

    assert (first.batches, first.scanned, first.purged, first.complete) == (2, 6, 6, False)
    saved = admin.execute("SELECT version FROM sync_events_purge_cursor").fetchone()
    assert saved == (6,)
    second = purge_events(db, DAYS, batch_size=3)
    assert (second.batches, second.scanned, second.purged, second.complete) == (2, 4, 3, True)
    assert versions(admin, "s") == [10]
    assert admin.execute("SELECT count(*) FROM sync_events_purge_cursor").fetchone()[0] == 0


def test_a_second_purge_while_a_batch_of_another_runs_does_nothing(db, admin, dsn):
    persist(db, admin, "s", {1: OLD, 2: OLD})
    with psycopg.connect(dsn) as other:  # a transaction, open: a batch of another purge
        assert other.execute(sql.LOCK_SQL, (sql.PURGE_LOCK_KEY,)).fetchone()[0]
        report = purge_events(db, DAYS)
    assert report.busy and report.batches == 0
    assert versions(admin, "s") == [1, 2]


def test_two_purges_take_turns_batch_by_batch_each_going_on_from_the_other_s_cursor(db, admin, dsn):
    # kept rows (each its session's latest): a batch that looked at them
    # again would count them again, where a purged row would be gone
    names = [f"k{i:02d}" for i in range(10)]
    for name in names:
        persist(db, admin, name, {1: OLD})
    persist(db, admin, "a", {1: OLD, 2: OLD})
    other = Database.from_dsn(dsn)
    others: list[PurgeReport] = []

    def interleave(report):
        # after each of the first purge's first two batches, the other runs
        # one (its budget, on a clock of its own, allows one)
        if report.batches <= 2:
            ticks = iter([0.0, 0.0, 1.0])
            others.append(purge_events(other, DAYS, batch_size=2, budget_seconds=0.5,
                                       clock=lambda: next(ticks)))

    first = purge_events(db, DAYS, batch_size=2, on_batch=interleave)
    other.close()

    # 12 old rows, 2 a batch: 6 full batches and the empty one that finds
    # the end, shared between the two, no row looked at twice
    assert [o.batches for o in others] == [1, 1]
    assert first.complete and first.batches == 5
    assert first.scanned + sum(o.scanned for o in others) == 12
    assert first.purged + sum(o.purged for o in others) == 1
    assert versions(admin, "a") == [2] and all(versions(admin, name) == [1] for name in names)
    assert admin.execute("SELECT count(*) FROM sync_events_purge_cursor").fetchone()[0] == 0


# --- beside the consumer: two transactions at once ----------------------------

def apply_uncommitted(conn: psycopg.Connection, events: list[ChangeEvent]) -> None:
    """The consumer's statement in a transaction left open (as a consumer
    between its statement and its commit)."""
    conn.execute(APPLY_SQL, apply_parameters(events))


def test_a_purge_beside_an_uncommitted_consumer_keeps_the_row_that_is_latest_in_its_snapshot(
        db, admin, dsn):
    persist(db, admin, "s", {1: OLD, 2: OLD, 3: OLD})
    with psycopg.connect(dsn) as consumer:  # not autocommit: the transaction stays open
        apply_uncommitted(consumer, [event("s", 4)])

        start = time.monotonic()
        during = purge_events(db, DAYS)
        assert time.monotonic() - start < BLOCKED_SECONDS  # it did not wait for the consumer
        assert during.purged == 2 and versions(admin, "s") == [3]  # 3 is still the latest it sees
        consumer.commit()

    assert versions(admin, "s") == [3, 4]
    after = purge_events(db, DAYS)
    assert after.purged == 1 and versions(admin, "s") == [4]  # 4: new, and the latest


def test_a_consumer_writing_a_row_an_uncommitted_purge_deletes_waits_for_it_and_nothing_deadlocks(
        db, admin, dsn):
    persist(db, admin, "s", {1: OLD, 2: OLD, 3: OLD})
    with psycopg.connect(dsn) as purge, ThreadPoolExecutor(1) as pool:
        batch = sql.run_batch(purge, cutoff=_cutoff(admin), after=sql.START, limit=100, dry_run=False)
        assert batch.purged == 2  # deleted, not committed
        # the consumer: a redelivery of a row being deleted, and a new version
        writing = pool.submit(db.apply_events, [event("s", 1), event("s", 4)])
        time.sleep(0.5)
        assert not writing.done()  # it waits for the purge's row, as it should
        purge.commit()
        result = writing.result(timeout=BLOCKED_SECONDS)
    assert not result.failures, result.failures
    # the redelivered row came back (why rows stay for MIN_RETENTION_DAYS)
    assert versions(admin, "s") == [1, 3, 4]
    assert db.latest("s").version == 4


def _cutoff(admin) -> datetime:
    return admin.execute("SELECT now() - make_interval(days => %s)", (DAYS,)).fetchone()[0]


# sessions whose sync_sessions row names a version sync_events lacks: the
# invariant the purge must keep, checked in one snapshot
LATEST_MISSING_SQL = """
SELECT count(*) FROM sync_sessions s
WHERE NOT EXISTS (SELECT 1 FROM sync_events e WHERE e.session_id = s.session_id AND e.version = s.version)
"""


def test_purges_running_while_consumers_persist_never_remove_a_latest_row_nor_deadlock(db, admin, dsn):
    sessions = [f"s{i}" for i in range(40)]
    for name in sessions:
        persist(db, admin, name, {1: OLD, 2: OLD})
    # judged from far ahead, every row is past the retention, the consumers'
    # new ones too: each purge deletes all but what its snapshot sees as latest,
    # while the consumers keep making new rows the latest
    future = datetime.now(UTC) + timedelta(days=10 * DAYS)
    stop = threading.Event()

    def consume(offset: int) -> int:
        consumer = Database.from_dsn(dsn)
        try:
            # versions 3..8 of every session, five sessions a batch, as SQS mixes them
            for version in range(3, 9):
                for start in range(offset, len(sessions), 10):
                    result = consumer.apply_events([event(s, version) for s in sessions[start:start + 5]])
                    assert not result.failures, result.failures
            return version
        finally:
            consumer.close()

    def purge() -> int:
        runs = 0
        while not stop.is_set() or runs == 0:
            assert not purge_events(db, DAYS, batch_size=7, now=future).busy
            runs += 1
        return runs

    def check() -> int:
        checks = 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                assert conn.execute(LATEST_MISSING_SQL).fetchone()[0] == 0
                checks += 1
        return checks

    with ThreadPoolExecutor(4) as pool:
        purging, checking = pool.submit(purge), pool.submit(check)
        consumers = [pool.submit(consume, offset) for offset in (0, 5)]
        try:
            assert [c.result(timeout=120) for c in consumers] == [8, 8]
        finally:
            stop.set()
        assert purging.result(timeout=60) >= 1 and checking.result(timeout=60) >= 1

    assert dict(admin.execute("SELECT session_id, version FROM sync_sessions").fetchall()) == \
        dict.fromkeys(sessions, 8)
    assert admin.execute(LATEST_MISSING_SQL).fetchone()[0] == 0
    purge_events(db, DAYS, now=future)
    for name in sessions:
        assert versions(admin, name) == [8]


# --- the command ---------------------------------------------------------------

def test_sessionsync_retention_reports_on_stdout_and_its_progress_on_a_terminal(db, admin, dsn):
    for name in ("a", "b"):
        persist(db, admin, name, {1: OLD, 2: OLD, 3: OLD})
    env = cli_env(Settings(database_url=dsn, api_keys=(API_KEY,), channel=TEST_CHANNEL),
                  SYNC_EVENTS_RETENTION_DAYS=str(DAYS))

    dry = run_cli_on_terminal("retention", "--dry-run", "--batch-size", "4", env=env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        f"dry run: purging sync_events rows persisted more than {DAYS} days ago, 4 rows per batch",
        "done: 2 batches, scanned 6, would purge 4, kept 2 (sessions' latest rows)"]
    assert "batch 1: scanned 4, would purge 3, kept 1" in dry.stderr
    assert "batch 2: scanned 6, would purge 4, kept 2" in dry.stderr
    quiet = run_cli_on_terminal("retention", "--dry-run", "--batch-size", "4", "--quiet", env=env)
    assert quiet.returncode == 0 and "batch" not in quiet.stderr
    assert versions(admin, "a") == [1, 2, 3]

    done = run_cli("retention", "--batch-size", "4", "--format", "json", env=env)
    assert done.returncode == 0, done.stderr
    # not a terminal: no progress, only JSON log and EMF lines on stderr
    assert all(line.startswith("{") for line in done.stderr.splitlines()), done.stderr
    report = json.loads(done.stdout)  # one document: the metric lines are on stderr
    assert (report["batches"], report["scanned"], report["purged"], report["kept"]) == (2, 6, 4, 2)
    assert report["complete"] is True and report["dry_run"] is False
    assert versions(admin, "a") == [3] and versions(admin, "b") == [3]


def test_sessionsync_retention_without_the_setting_purges_nothing_unless_told_the_days(db, admin, dsn):
    persist(db, admin, "s", {1: OLD, 2: OLD})
    env = cli_env(Settings(database_url=dsn, api_keys=(API_KEY,), channel=TEST_CHANNEL))

    unset = run_cli("retention", env=env)
    assert unset.returncode == 0, unset.stderr
    assert "SYNC_EVENTS_RETENTION_DAYS is not set" in unset.stdout
    assert versions(admin, "s") == [1, 2]

    too_short = run_cli("retention", "--days", "7", env=env)
    assert too_short.returncode == 2 and "--days" in too_short.stderr
    told = run_cli("retention", "--days", str(DAYS), env=env)
    assert told.returncode == 0, told.stderr
    assert versions(admin, "s") == [2]


def test_sessionsync_retention_with_a_bad_setting_is_a_configuration_error_naming_it(dsn):
    env = cli_env(Settings(database_url=dsn, api_keys=(API_KEY,), channel=TEST_CHANNEL),
                  SYNC_EVENTS_RETENTION_DAYS="forever")
    result = run_cli("retention", env=env)
    assert result.returncode == 2
    assert "SYNC_EVENTS_RETENTION_DAYS" in result.stderr


def test_sessionsync_serve_s_pipeline_threads_purge_when_the_setting_is_set(db, admin, dsn, use_settings):
    from sessionsync.local_pipeline import start_pipeline_threads
    from tests.support.servers import wait_for
    persist(db, admin, "s", {1: OLD, 2: OLD})
    # the test Redis: the expiry sweep that runs beside the purge reads it
    use_settings(Settings(redis_url=REDIS_TEST_URL, database_url=dsn, api_keys=(API_KEY,),
                          channel=TEST_CHANNEL, events_retention_days=DAYS))
    stop = threading.Event()
    threads = start_pipeline_threads(stop)  # no queue configured: no worker, no relay
    try:
        assert [t.name for t in threads] == ["sync-events-retention", "expiry-sweep"]
        wait_for(lambda: versions(admin, "s") == [2], timeout=30, what="the serve thread's purge")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
