"""The deploy's migration step (``app.run_migrations``: DeployStep) against
a real PostgreSQL, answering CloudFormation on a ResponseURL served here."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import psycopg
import pytest

from chalicelib.adapters import cfn_response
from chalicelib.adapters.postgres import migrations
from chalicelib.adapters.postgres.migrations import DeployStep


class Responses:
    """A stand-in for the pre-signed S3 URL: records each PUT body."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers["Content-Length"])
                outer.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/response?X-Amz-Signature=abc"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def responses():
    server = Responses()
    yield server
    server.close()


def event(responses: Responses, request: str, checksum: str | None = None) -> dict:
    return {"RequestType": request, "ResponseURL": responses.url, "StackId": "arn:aws:cloudformation:x",
            "RequestId": "r-1", "LogicalResourceId": "SchemaMigrations",
            "ResourceType": "Custom::SchemaMigrations",
            "ResourceProperties": {"ServiceToken": "arn:aws:lambda:x",
                                   **({"MigrationsChecksum": checksum} if checksum else {})}}


def recorded(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def test_a_create_applies_every_migration_and_answers_success_with_the_version(empty_dsn, responses):
    step = DeployStep(lambda: empty_dsn, cfn_response.respond)
    release = migrations.release_checksum()
    report = step.handle(event(responses, "Create", release))
    everything = [m.version for m in migrations.discover()]
    assert recorded(empty_dsn) == everything
    (answer,) = responses.bodies
    assert answer["Status"] == "SUCCESS" and answer["PhysicalResourceId"] == migrations.PHYSICAL_ID
    assert answer["Data"]["Version"] == str(everything[-1])
    assert answer["Data"]["Applied"].split(",") == [m.filename for m in migrations.discover()]
    assert report["pending"] == []
    # the same release again: nothing to apply, still a success
    step.handle(event(responses, "Update", release))
    assert responses.bodies[-1]["Status"] == "SUCCESS" and responses.bodies[-1]["Data"]["Applied"] == ""


def test_a_rollback_replaying_another_release_s_checksum_applies_nothing(empty_dsn, responses):
    step = DeployStep(lambda: empty_dsn, cfn_response.respond)
    step.handle(event(responses, "Update", "0" * 64))
    assert responses.bodies[-1]["Status"] == "SUCCESS"
    assert "rollback" in responses.bodies[-1]["Data"]["Note"]
    with psycopg.connect(empty_dsn) as conn:  # not even the bookkeeping table
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)


def test_a_database_ahead_of_this_release_is_reported_not_refused(empty_dsn, responses):
    step = DeployStep(lambda: empty_dsn, cfn_response.respond)
    step.handle({"action": "migrate"})
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'later', 'x')")
    report = step.handle(event(responses, "Update", migrations.release_checksum()))
    assert responses.bodies[-1]["Status"] == "SUCCESS"
    assert "ahead" in report["note"] and report["version"] == 9999
    status = {m["version"]: m["state"] for m in step.handle({"action": "status"})["migrations"]}
    assert status[9999] == migrations.UNKNOWN and status[1] == migrations.APPLIED


def test_a_failure_reaches_cloudformation_as_failed_with_its_reason(responses):
    step = DeployStep(lambda: "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", cfn_response.respond)
    with pytest.raises(psycopg.OperationalError):
        step.handle(event(responses, "Create", migrations.release_checksum()))
    (answer,) = responses.bodies
    assert answer["Status"] == "FAILED" and answer["Reason"].startswith("OperationalError")


def test_a_delete_keeps_the_schema_and_succeeds_without_the_database(responses):
    step = DeployStep(lambda: pytest.fail("a delete must not connect"), cfn_response.respond)
    step.handle(event(responses, "Delete"))
    assert responses.bodies[-1]["Status"] == "SUCCESS"


def test_status_lists_pending_migrations_without_creating_anything(empty_dsn):
    report = DeployStep(lambda: empty_dsn, cfn_response.respond).handle({"action": "status"})
    assert report["version"] == 0 and report["pending"] == [m.filename for m in migrations.discover()]
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
