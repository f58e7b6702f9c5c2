"""The HTTP contract of docs/openapi.yaml, against a live `sessionsync serve`
with its pipeline (worker and relay), on a Redis, a PostgreSQL database and
queues of this module's own:

* schemathesis with every check and every phase (examples, coverage,
  fuzzing, stateful), with the settings of schemathesis.toml (fixed seed,
  the hooks for the two rules a schema cannot state): no failure, no server
  error;
* a client generated from the file with openapi-python-client drives the
  README's walk-through.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from chalicelib.domain.keys import KeySet
from tests.support.constants import API_KEY, LOCALSTACK_URL, PG_TEST_ADMIN_URL, PROJECT_DIR, database_url
from tests.support.keys import make_key
from tests.support.pipeline import wait_until
from tests.support.servers import RedisServer, serve_process

pytestmark = [pytest.mark.localstack, pytest.mark.slow]

SPEC = PROJECT_DIR / "docs" / "openapi.yaml"
BIN = Path(sys.executable).parent
PHASES = ("Examples", "Coverage", "Fuzzing", "Stateful")


#: a read-only key of the default tenant, beside the full API_KEY
READER, _READER_RECORD = make_key("default", ("read",))


@pytest.fixture(scope="module")
def contract_server(tmp_path_factory, sqs):
    """`sessionsync serve` with the pipeline on a fresh Redis, database and
    queue pair of its own (what schemathesis writes stays here)."""
    from sessionsync import provisioning

    workdir = tmp_path_factory.mktemp("contract")
    redis_server = RedisServer(workdir / "redis").start()
    dsn = database_url(PG_TEST_ADMIN_URL, f"sessionsync_contract_{uuid.uuid4().hex[:10]}")
    name = f"sessionsync-contract-{uuid.uuid4().hex[:10]}"
    queues = None
    try:
        provisioning.ensure_database(dsn)
        provisioning.migrate(dsn)
        queues = provisioning.ensure_queues(sqs, name, provisioning.dlq_name_for(name))
        env = {**os.environ, "REDIS_URL": redis_server.url, "DATABASE_URL": dsn,
               "SESSION_QUEUE_URL": queues.url, "SESSION_DLQ_URL": queues.dlq_url,
               "AWS_ENDPOINT_URL": LOCALSTACK_URL,
               "SESSIONSYNC_API_KEYS": KeySet((_READER_RECORD,), (API_KEY,)).to_json(),
               "OUTBOX_RELAY_AGE_SECONDS": "1", "LOG_LEVEL": "WARNING"}
        with serve_process(env, workdir) as (port, log):
            yield SimpleNamespace(url=f"http://127.0.0.1:{port}", log=log, redis_url=redis_server.url,
                                  dsn=dsn)
    finally:
        if queues is not None:
            provisioning.delete_queues(sqs, queues)
        provisioning.drop_database(dsn)
        redis_server.stop()


def test_schemathesis_with_every_check_and_phase_finds_no_failure_and_no_server_error(
        contract_server, tmp_path):
    summary = _schemathesis(contract_server, API_KEY, tmp_path)
    for phase in PHASES:  # every phase ran and passed
        assert f"✅ {phase}" in summary, summary
    assert "Failures:" not in summary and "Errors:" not in summary, summary
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts and counts[1] == counts[2] and int(counts[1]) > 300, summary
    assert "Filtered:" in summary, summary  # the hooks saw the rules they explain, and only those


def _schemathesis(server: SimpleNamespace, key: str, workdir: Path, *extra: str,
                  phases: tuple[str, ...] = PHASES) -> str:
    """schemathesis.toml's command with every check, in ``phases``, as ``key``: its summary."""
    executable = BIN / "st"
    assert executable.exists(), f"{executable} missing: pip install -r requirements-dev.txt"
    # the command of schemathesis.toml, run outside the repository so that
    # schemathesis's crash cache and hypothesis's files land in workdir
    command = [str(executable), "--config-file", str(PROJECT_DIR / "schemathesis.toml"), "run",
               str(SPEC), "--url", server.url, "--header", f"Authorization: Bearer {key}",
               "--checks", "all", "--phases", ",".join(p.lower() for p in phases),
               "--request-timeout", "10", "--no-color", *extra]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}  # the hooks: tests.support.schemathesis_hooks
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True,
                            timeout=400)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:] + server.log.read_text()[-2000:]
    return output.split("SUMMARY")[-1]


def test_schemathesis_with_a_read_only_key_finds_no_write_that_succeeds(contract_server, tmp_path):
    # every write is answered 403 MissingScope (documented on every
    # operation): the run passes every check, and the recording of every
    # exchange shows no write answered otherwise
    recording = tmp_path / "exchanges.har"
    # no stateful phase: its links follow writes that succeed, and none does
    summary = _schemathesis(contract_server, READER.token, tmp_path, "--report", "har",
                            "--report-har-path", str(recording), "--max-examples", "15",
                            phases=("Examples", "Coverage", "Fuzzing"))
    assert "Failures:" not in summary and "Errors:" not in summary, summary
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts and counts[1] == counts[2] and int(counts[1]) > 100, summary
    entries = json.loads(recording.read_text())["log"]["entries"]
    exchanges = [(e["request"]["method"], e["request"]["url"], e["response"]["status"]) for e in entries]
    writes = [(m, u, s) for m, u, s in exchanges if m in ("POST", "PUT", "PATCH", "DELETE")]
    assert len(writes) > 50, exchanges[:20]
    # a write is refused (403), or refused before the scope is known (401
    # without a usable key header, 404/405/415 for what no route takes)
    assert [(m, u, s) for m, u, s in writes if s < 400 or s >= 500] == [], writes
    missing = [e["request"]["method"] for e in entries
               if "MissingScope" in (e["response"].get("content") or {}).get("text", "")]
    assert "POST" in missing and "PUT" in missing and "DELETE" in missing, missing
    # a GET of a session is the key's to make: never refused for its scope
    assert [e["request"]["url"] for e in entries if e["request"]["method"] == "GET"
            and re.search(r"/sessions/[^/?]+(\?|$)", e["request"]["url"])
            and "MissingScope" in (e["response"].get("content") or {}).get("text", "")] == []


# --- a client generated from docs/openapi.yaml ---------------------------------

# not "sessionsync_client": that is clients/python's package, imported by other tests of the run
GENERATOR_CONFIG = "project_name_override: generated_client\npackage_name_override: generated_client\n" \
                   "post_hooks: []\n"


@pytest.fixture(scope="module")
def generated_client(tmp_path_factory):
    """The package openapi-python-client generates from docs/openapi.yaml,
    imported from a temporary directory (and forgotten afterwards)."""
    executable = BIN / "openapi-python-client"
    assert executable.exists(), f"{executable} missing: pip install -r requirements-dev.txt"
    workdir = tmp_path_factory.mktemp("generated")
    config = workdir / "config.yaml"
    config.write_text(GENERATOR_CONFIG)
    result = subprocess.run([str(executable), "generate", "--path", str(SPEC), "--meta", "none",
                             "--config", str(config), "--output-path", str(workdir / "generated_client")],
                            cwd=workdir, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Warning" not in output, output  # nothing of the file was left out
    sys.path.insert(0, str(workdir))
    try:
        yield importlib.import_module("generated_client")
    finally:
        sys.path.remove(str(workdir))
        for name in [m for m in sys.modules if m.split(".")[0] == "generated_client"]:
            del sys.modules[name]


def test_a_generated_client_drives_the_walk_through(contract_server, generated_client):
    api = SimpleNamespace(**{name: importlib.import_module(f"generated_client.api.sessions.{name}")
                             for name in ("create_session", "get_session", "update_session",
                                          "patch_session", "delete_session", "list_session_events",
                                          "touch_session")})
    models = importlib.import_module("generated_client.models")
    client = generated_client.AuthenticatedClient(base_url=contract_server.url, token=API_KEY,
                                                  raise_on_unexpected_status=True, timeout=10)
    sid = f"cart-{uuid.uuid4().hex[:8]}"

    created = api.create_session.sync_detailed(client=client, body=models.CreateSession(
        session_id=sid, state=models.State.from_dict({"items": []})))
    assert created.status_code == 201 and created.headers["ETag"] == '"1"'
    assert isinstance(created.parsed, models.Session) and created.parsed.version == 1

    read = api.get_session.sync_detailed(sid, client=client)
    assert read.status_code == 200 and read.parsed.state.to_dict() == {"items": []}
    etag = read.headers["ETag"]
    unchanged = api.get_session.sync_detailed(sid, client=client, if_none_match=etag)
    assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["ETag"] == etag

    book = models.UpdateSession(state=models.State.from_dict({"items": ["book"]}))
    updated = api.update_session.sync_detailed(sid, client=client, body=book, if_match=etag)
    assert updated.status_code == 200 and updated.parsed.version == 2
    assert updated.headers["ETag"] == '"2"'

    # the same request again: another writer got there first
    conflict = api.update_session.sync_detailed(sid, client=client, body=book, if_match=etag)
    assert conflict.status_code == 412 and isinstance(conflict.parsed, models.PreconditionFailedError)
    details = conflict.parsed.error.details
    assert (details.expected_version, details.actual_version) == (1, 2)
    # named in the body instead, the lost race is a 409
    in_body = api.update_session.sync_detailed(sid, client=client, body=models.UpdateSession(
        state=models.State.from_dict({"items": ["book"]}), expected_version=1))
    assert in_body.status_code == 409 and isinstance(in_body.parsed, models.ConcurrencyErrorBody)

    # a merge patch: no version needed, the server merges
    patched = api.patch_session.sync_detailed(sid, client=client, body=models.SessionPatch(
        state=models.State.from_dict({"coupon": "SPRING"})))
    assert patched.status_code == 200 and patched.parsed.version == 3
    assert patched.parsed.state.to_dict() == {"items": ["book"], "coupon": "SPRING"}
    stale = api.patch_session.sync_detailed(sid, client=client, if_match='"2"', body=models.SessionPatch(
        state=models.State.from_dict({"coupon": None})))
    assert stale.status_code == 412 and stale.parsed.error.details.actual_version == 3

    # create-if-absent: a PUT with If-None-Match: *
    other = f"{sid}-put"
    absent = api.update_session.sync_detailed(other, client=client, body=book, if_none_match="*")
    assert absent.status_code == 201 and absent.headers["Location"] == f"/sessions/{other}"
    present = api.update_session.sync_detailed(other, client=client, body=book, if_none_match="*")
    assert present.status_code == 412 and present.parsed.error.details.actual_version == 1

    # the documented refusals of the precondition rule parse too
    unconditional = api.update_session.sync_detailed(sid, client=client, body=book)
    assert unconditional.status_code == 428
    assert isinstance(unconditional.parsed, models.PreconditionRequiredError)
    disagreeing = api.update_session.sync_detailed(sid, client=client, if_match='"2"',
                                                   body=models.UpdateSession(
                                                       state=models.State.from_dict({}), expected_version=1))
    assert disagreeing.status_code == 400
    assert disagreeing.parsed.error.details.to_dict() == {"expected_version": 1, "if_match": 2}

    def history() -> list[tuple[int, str]]:
        page = api.list_session_events.sync_detailed(sid, client=client)
        assert page.status_code == 200 and isinstance(page.parsed, models.EventPage)
        return [(e.version, e.event_type.value) for e in page.parsed.events]

    # the pipeline persists a change within seconds; the margin is for a busy machine
    assert wait_until(lambda: history() == [(3, "session_updated"), (2, "session_updated"),
                                            (1, "session_created")],
                      timeout=30, what="versions 3, 2 and 1 in the history")

    # a touch extends the lifetime, the state unchanged
    touched = api.touch_session.sync_detailed(sid, client=client,
                                              body=models.TouchSession(ttl_seconds=7200))
    assert touched.status_code == 200 and touched.headers["ETag"] == '"4"'
    assert (touched.parsed.version, touched.parsed.ttl_seconds) == (4, 7200)
    assert touched.parsed.state.to_dict() == {"items": ["book"], "coupon": "SPRING"}
    assert touched.parsed.expires_at > touched.parsed.updated_at

    deleted = api.delete_session.sync_detailed(sid, client=client)
    assert deleted.status_code == 204
    gone = api.get_session.sync_detailed(sid, client=client)
    assert gone.status_code == 404 and isinstance(gone.parsed, models.SessionNotFoundError)
    assert gone.parsed.error.details.deleted is True
    # the history of a deleted session stays readable
    wait_until(lambda: history()[:2] == [(5, "session_deleted"), (4, "session_touched")], timeout=30,
               what="the deletion in the history")
