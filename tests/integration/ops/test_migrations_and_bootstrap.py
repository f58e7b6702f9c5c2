"""Schema migrations and provisioning against real PostgreSQL and LocalStack."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import psycopg
import pytest

from chalicelib.adapters.postgres import connection
from chalicelib.config import Settings
from chalicelib.pipeline.producer import SqsProducer
from sessionsync import migrations, provisioning
from sessionsync.migrations import Migration, MigrationError
from tests.support.constants import PG_TEST_ADMIN_URL, database_url
from tests.support.ops import run_cli, run_cli_on_terminal
from tests.support.servers import PgBouncer

CLI = "from sessionsync.cli import main; main()"  # the sessionsync console script


def _recorded(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()


def test_migrating_twice_applies_each_migration_once(empty_dsn):
    first = provisioning.migrate(empty_dsn)
    second = provisioning.migrate(empty_dsn)

    assert [m.filename for m in first] == [m.filename for m in migrations.discover()]
    assert [m.filename for m in first[:2]] == ["0001_sync_tables.sql", "0002_state_checks_reject_null.sql"]
    assert second == []
    assert _recorded(empty_dsn) == [(m.version, m.name) for m in first]


def test_three_processes_migrating_at_once_apply_each_migration_exactly_once(empty_dsn):
    env = {**os.environ, "DATABASE_URL": empty_dsn, "SESSIONSYNC_STAGE": "local"}
    procs = [subprocess.Popen([sys.executable, "-c", CLI, "migrate"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [p.communicate(timeout=60) for p in procs]

    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    everything = ", ".join(m.filename for m in migrations.discover())
    assert sorted(out.strip() for out, _ in outputs) == [
        f"applied: {everything}", "up to date", "up to date"]
    assert _recorded(empty_dsn) == [(m.version, m.name) for m in migrations.discover()]


def test_migrate_says_so_on_a_terminal_while_it_runs_and_reports_json_for_scripts(empty_dsn):
    env = {**os.environ, "DATABASE_URL": empty_dsn, "SESSIONSYNC_STAGE": "local"}

    shown = run_cli_on_terminal("migrate", env=env)
    again = run_cli("migrate", "--format", "json", env=env)

    assert shown.returncode == 0, shown.stderr
    assert "applying the pending migrations" in shown.stderr
    assert shown.stdout.startswith("applied: 0001_sync_tables.sql")
    assert again.returncode == 0 and json.loads(again.stdout) == {"applied": []}
    assert "applying" not in again.stderr  # not a terminal: no progress


def test_a_new_migration_is_applied_on_top_and_an_edited_one_is_refused(empty_dsn):
    base = migrations.discover()
    extra = Migration(9001, "test_extra", "CREATE TABLE test_extra (id int)")
    with connection.connect(empty_dsn, statement_timeout_ms=None) as conn:
        migrations.migrate(conn, base)
        assert [m.version for m in migrations.migrate(conn, [*base, extra])] == [9001]
        edited = Migration(9001, "test_extra", "CREATE TABLE test_extra (id bigint)")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            migrations.migrate(conn, [*base, edited])
        with pytest.raises(MigrationError, match="not on disk"):
            migrations.migrate(conn, base)


def test_a_failing_migration_leaves_no_trace_and_is_retried_whole(empty_dsn):
    broken = Migration(1, "broken", "CREATE TABLE half_done (id int); SELECT 1/0;")
    with connection.connect(empty_dsn, statement_timeout_ms=None) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            migrations.migrate(conn, [broken])
        assert conn.execute("SELECT to_regclass('half_done')").fetchone()[0] is None
        assert [s.state for s in migrations.status(conn, [broken])] == ["pending"]
        # the advisory lock was released: another run gets it at once
        assert migrations.migrate(conn, [], lock_timeout=0.5) == []


def _status(env: dict[str, str]) -> tuple[int, dict]:
    result = run_cli("migrate", "--status", "--format", "json", env=env)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_migrate_status_lists_each_migration_and_exits_1_until_every_one_is_applied(empty_dsn):
    env = {**os.environ, "DATABASE_URL": empty_dsn, "SESSIONSYNC_STAGE": "local"}
    on_disk = [m.filename for m in migrations.discover()]

    code, before = _status(env)  # reads only: no table created, nothing applied
    assert code == 1 and before["pending"] == on_disk and before["up_to_date"] is False
    assert [(m["state"]) for m in before["migrations"]] == ["pending"] * len(on_disk)
    assert run_cli("migrate", env=env).returncode == 0
    code, after = _status(env)
    assert code == 0 and after["pending"] == [] and after["up_to_date"] is True
    assert [m["state"] for m in after["migrations"]] == ["applied"] * len(on_disk)
    text = run_cli("migrate", "--status", env=env)
    assert text.returncode == 0 and text.stdout.splitlines()[1].split() == ["0001", "sync_tables", "applied"]
    assert text.stderr.strip() == "up to date"

    # a row newer than this release (a rollback of the code): this release's
    # schema is all there, and the extra row is named
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'later', 'x')")
    code, ahead = _status(env)
    assert code == 0 and ahead["migrations"][-1] == {"version": 9999, "name": "later", "state": "unknown"}
    # an applied file edited since: migrate would refuse it, so not up to date
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    code, changed = _status(env)
    assert code == 1 and changed["migrations"][0]["state"] == "changed"


@pytest.fixture
def pooler():
    bouncer = PgBouncer(pool_size=2, connect_query="SET statement_timeout = 5000").start()
    yield bouncer
    bouncer.stop()


def test_migrate_and_its_status_work_through_a_transaction_pooler_with_db_pooled(empty_dsn, pooler):
    # PgBouncer in transaction mode, as RDS Proxy: three migrate processes
    # (clients) share two server connections.  Startup options are refused
    # there, and a session-level advisory lock would stay on whichever server
    # connection took it.
    dbname = psycopg.conninfo.conninfo_to_dict(empty_dsn)["dbname"]
    env = {**os.environ, "DATABASE_URL": pooler.dsn(dbname), "DB_POOLED": "true",
           "SESSIONSYNC_STAGE": "local"}
    procs = [subprocess.Popen([sys.executable, "-c", CLI, "migrate"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [p.communicate(timeout=60) for p in procs]

    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert sorted(out.strip() for out, _ in outputs)[1:] == ["up to date", "up to date"]
    assert _recorded(empty_dsn) == [(m.version, m.name) for m in migrations.discover()]
    code, report = _status(env)
    assert code == 0 and report["up_to_date"] is True
    with psycopg.connect(empty_dsn) as conn:  # PostgreSQL itself: no lock left behind
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone() == (0,)


def test_migration_file_names_are_checked(tmp_path):
    (tmp_path / "0001_ok.sql").write_text("SELECT 1")
    (tmp_path / "0001_again.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="two migrations have version 1"):
        migrations.discover(tmp_path)
    (tmp_path / "0001_again.sql").unlink()
    (tmp_path / "2-bad.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        migrations.discover(tmp_path)


@pytest.mark.parametrize("column_values, constraint, sqlstate", [
    ("('bad id', 1, 'session_created', '{}', now())", "sync_events_session_id_format", "23514"),
    ("('ok', 0, 'session_updated', '{}', now())", "sync_events_version_positive", "23514"),
    ("('ok', 1, 'session_renamed', '{}', now())", "sync_events_event_type_known", "23514"),
    ("('ok', 2, 'session_updated', NULL, now())", "sync_events_state_matches_type", "23514"),
    ("('ok', 2, 'session_deleted', '{}', now())", "sync_events_state_matches_type", "23514"),
    ("('ok', 2, 'session_updated', '[1]', now())", "sync_events_state_matches_type", "23514"),
    ("('ok', 3, 'session_created', '{}', now())", "sync_events_created_at_version_one", "23514"),
    ("('dup', 1, 'session_created', '{}', now())", "sync_events_session_version_key", "23505"),
])
def test_bad_rows_fail_loudly_with_a_named_constraint(pg_test_dsn, column_values, constraint, sqlstate):
    with psycopg.connect(pg_test_dsn) as conn:
        conn.execute("INSERT INTO sync_events (session_id, version, event_type, state, occurred_at) "
                     "VALUES ('dup', 1, 'session_created', '{}', now()) ON CONFLICT DO NOTHING")
        conn.commit()
        with pytest.raises(psycopg.errors.IntegrityError) as caught:
            conn.execute("INSERT INTO sync_events (session_id, version, event_type, state, occurred_at) "
                         f"VALUES {column_values}")
    assert (caught.value.sqlstate, caught.value.diag.constraint_name) == (sqlstate, constraint)


@pytest.mark.parametrize("values, constraint", [
    ("'bad id', 1, '{}', false, 3600", "sync_sessions_session_id_format"),
    # a tenant's prefix is lower-case letters, digits and '-', then one '/'
    ("'Acme/id', 1, '{}', false, 3600", "sync_sessions_session_id_format"),
    ("'acme/a/b', 1, '{}', false, 3600", "sync_sessions_session_id_format"),
    ("'ok', 0, '{}', false, 3600", "sync_sessions_version_positive"),
    ("'ok', 1, '{}', false, 0", "sync_sessions_ttl_positive"),
    ("'ok', 1, NULL, false, 3600", "sync_sessions_state_matches_deleted"),
    ("'ok', 1, '\"text\"', false, 3600", "sync_sessions_state_matches_deleted"),
    ("'ok', 2, '{}', true, 3600", "sync_sessions_state_matches_deleted"),
])
def test_bad_session_rows_fail_loudly_with_a_named_constraint(pg_test_dsn, values, constraint):
    with psycopg.connect(pg_test_dsn) as conn, pytest.raises(psycopg.errors.CheckViolation) as caught:
        conn.execute("INSERT INTO sync_sessions (session_id, version, state, deleted, ttl_seconds, "
                     f"created_at, updated_at) VALUES ({values}, now(), now())")
    assert (caught.value.sqlstate, caught.value.diag.constraint_name) == ("23514", constraint)


@pytest.mark.localstack
def test_bootstrap_creates_queues_database_and_schema_and_running_it_again_changes_nothing(
        sqs, localstack_settings):
    name = f"sessionsync-boot-{uuid.uuid4().hex[:8]}"
    dsn = database_url(PG_TEST_ADMIN_URL, f"sessionsync_boot_{uuid.uuid4().hex[:8]}")
    settings = Settings(queue_name=name, dlq_name=f"{name}-dead")
    try:
        first = provisioning.bootstrap(settings, sqs, dsn)
        second = provisioning.bootstrap(settings, sqs, dsn)

        assert first.database_created is True
        assert first.migrations_applied == [m.filename for m in migrations.discover()]
        assert (second.database_created, second.migrations_applied) == (False, [])
        assert first.queues == second.queues
        assert first.queues.dlq_url.endswith(f"{name}-dead")
        attrs = sqs.get_queue_attributes(QueueUrl=first.queues.url, AttributeNames=["All"])["Attributes"]
        assert json.loads(attrs["RedrivePolicy"]) == {"deadLetterTargetArn": first.queues.dlq_arn,
                                                      "maxReceiveCount": 5}
        assert int(attrs["VisibilityTimeout"]) >= 6 * 30
        assert attrs["MaximumMessageSize"] == str(1024 * 1024)
        dlq = sqs.get_queue_attributes(QueueUrl=first.queues.dlq_url,
                                       AttributeNames=["MessageRetentionPeriod"])["Attributes"]
        assert int(dlq["MessageRetentionPeriod"]) > int(attrs["MessageRetentionPeriod"])
    finally:
        provisioning.delete_queues(sqs, provisioning.QueuePair(
            sqs.get_queue_url(QueueName=name)["QueueUrl"], "",
            sqs.get_queue_url(QueueName=f"{name}-dead")["QueueUrl"], ""))
        provisioning.drop_database(dsn)


@pytest.mark.localstack
def test_a_change_with_a_state_at_the_size_limit_fits_in_one_sqs_message_and_is_persisted(pipeline):
    # 256 KiB of state whose JSON escapes ("\n" is two bytes) push the event
    # past SQS's old 256 KiB limit: the queue must take 1 MiB messages.
    state = {"blob": "\n" * (128 * 1024 - 20)}
    state_json = json.dumps(state, separators=(",", ":"))
    assert Settings.max_state_bytes - 64 < len(state_json) <= Settings.max_state_bytes
    sid = f"big-{uuid.uuid4().hex[:8]}"
    result = pipeline.store.create(sid, state_json, 600)
    assert len(result.event_json.encode()) > 256 * 1024

    assert SqsProducer(pipeline.sqs, pipeline.queues.url, pipeline.store).publish(result) is True
    pipeline.drain(timeout=60)

    assert pipeline.session_rows([sid]) == {sid: (1, state, False)}
    assert pipeline.dlq_messages() == []
