"""GET /health and ``sessionsync health``: CloudWatch-style status of Redis,
PostgreSQL, the queue and the DLQ; 200/exit 0 when all answer, 503/exit 1
within about a second naming the one that does not.

Outages use servers of the test's own (throwaway Redis, throwaway
PostgreSQL), stopped or paused; the shared ones are never touched.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

import pytest

from chalicelib import runtime
from chalicelib.api.health import DEADLINE_SECONDS
from chalicelib.config import Settings
from tests.support.app import app_client
from tests.support.constants import API_KEY, LOCALSTACK_URL, PG_TEST_ADMIN_URL, REDIS_TEST_URL, TEST_CHANNEL
from tests.support.ops import cli_env, run_cli
from tests.support.servers import free_port

# The report comes within health.DEADLINE_SECONDS plus overhead; the bounds
# below are several times that, for a busy machine: they catch a hang, and
# the "no answer within" errors show that the deadline is what cut a probe.
BUDGET_SECONDS = 5 * DEADLINE_SECONDS
# the CLI also starts an interpreter and imports boto3
CLI_BUDGET_SECONDS = 15 * DEADLINE_SECONDS


@pytest.fixture
def stack_settings(pg_test_dsn, queue_pair, localstack_settings) -> Settings:
    """Every dependency configured and up: test Redis, test database, a queue pair."""
    return Settings(redis_url=REDIS_TEST_URL, database_url=pg_test_dsn, queue_url=queue_pair.url,
                    dlq_url=queue_pair.dlq_url, aws_endpoint_url=LOCALSTACK_URL,
                    aws_region="us-east-1", api_keys=(API_KEY,), channel=TEST_CHANNEL)


ALL = ("redis", "postgresql", "queue", "dlq")
# how long a dependency that is up may take to be reported "ok" on a busy machine
UP_WITHIN_SECONDS = 30


def get_health(use_settings, settings: Settings, *, up: tuple[str, ...] = ()):
    """(response, seconds) of GET /health through the app with ``settings``.

    ``up`` names the dependencies that are up: the request is repeated, in
    the same warm process, until each of them is reported "ok".  One that is
    up may still miss the deadline on a busy machine (LocalStack answering
    slowly, an SDK client built on first use): these tests check which
    dependency is reported down, and that no request hangs.
    """
    use_settings(settings)
    give_up = time.monotonic() + UP_WITHIN_SECONDS
    with app_client() as http:
        while True:
            start = time.monotonic()
            response = http.get("/health")
            seconds = time.monotonic() - start
            checks = response.json_body["checks"]
            if all(checks[name]["status"] == "ok" for name in up) or time.monotonic() > give_up:
                return response, seconds


def test_health_is_200_with_every_dependency_up_and_a_latency_for_each(use_settings, stack_settings):
    response, seconds = get_health(use_settings, stack_settings, up=ALL)

    assert response.status_code == 200, response.body
    body = response.json_body
    assert body["status"] == "ok" and "warnings" not in body
    assert set(body["checks"]) == {"redis", "postgresql", "queue", "dlq"}
    for name, check in body["checks"].items():
        assert check["status"] == "ok", (name, check)
        assert check["latency_ms"] >= 0
    assert body["checks"]["queue"] | {"waiting": 0, "in_flight": 0, "delayed": 0} == body["checks"]["queue"]
    assert body["checks"]["dlq"]["depth"] == 0
    assert seconds < BUDGET_SECONDS


def cli_health_with_everything_up(settings: Settings, *args: str):
    """``sessionsync health ARGS`` until it exits 0 (bounded).  Each run is a
    new process that builds its clients within the deadline: on a busy
    machine one run may see LocalStack miss it, and the next one not."""
    give_up = time.monotonic() + UP_WITHIN_SECONDS
    result = run_cli("health", *args, env=cli_env(settings))
    while result.returncode != 0 and time.monotonic() < give_up:
        result = run_cli("health", *args, env=cli_env(settings))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_sessionsync_health_exits_0_with_every_dependency_up(stack_settings):
    result = cli_health_with_everything_up(stack_settings, "--format", "json")

    report = json.loads(result.stdout)
    assert report["status"] == "ok"
    assert {name: check["status"] for name, check in report["checks"].items()} == {
        "redis": "ok", "postgresql": "ok", "queue": "ok", "dlq": "ok"}

    table = cli_health_with_everything_up(stack_settings)
    assert table.stdout.splitlines()[0].split() == ["DEPENDENCY", "STATUS", "LATENCY_MS", "DETAILS"]
    assert table.stdout.rstrip().endswith("overall: ok")
    # the older spelling of text: the same table, and a note on stderr
    older = cli_health_with_everything_up(stack_settings, "--format", "table")
    assert older.stdout.splitlines()[0] == table.stdout.splitlines()[0]
    assert "--format table is deprecated" in older.stderr


def test_a_stopped_redis_with_postgresql_up_is_degraded_200_and_exit_1_naming_redis(
        use_settings, stack_settings, throwaway_redis):
    settings = dataclasses.replace(stack_settings, redis_url=throwaway_redis.url)
    throwaway_redis.stop()

    response, seconds = get_health(use_settings, settings, up=("postgresql", "queue", "dlq"))
    # reads with Cache-Control: max-stale are still served (from PostgreSQL)
    assert response.status_code == 200, response.body
    body = response.json_body
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["status"] == "down"
    assert body["checks"]["redis"]["error"] == "Redis unreachable"
    assert all(body["checks"][name]["status"] == "ok" for name in ("postgresql", "queue", "dlq"))
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"

    # a new process builds its clients within the deadline: on a busy machine
    # the operator's --timeout keeps PostgreSQL and SQS from missing it (what
    # is judged here is which dependency is down, not the speed, above)
    result = run_cli("health", "--timeout", str(5 * DEADLINE_SECONDS), env=cli_env(settings))
    assert result.returncode == 1  # for an operator, Redis is down
    redis_row = next(line for line in result.stdout.splitlines() if line.startswith("redis"))
    assert redis_row.split()[1] == "down"
    assert result.stdout.rstrip().endswith("overall: degraded")
    assert result.seconds < CLI_BUDGET_SECONDS, f"took {result.seconds:.2f}s"


def test_a_stopped_redis_without_postgresql_is_down_503(use_settings, throwaway_redis):
    throwaway_redis.stop()
    settings = Settings(redis_url=throwaway_redis.url, api_keys=(API_KEY,), channel=TEST_CHANNEL)

    response, seconds = get_health(use_settings, settings)
    assert response.status_code == 503, response.body
    assert response.json_body["status"] == "down"
    assert response.json_body["checks"]["redis"]["status"] == "down"
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"


def test_a_stopped_redis_and_a_stopped_postgresql_are_down_503(
        use_settings, stack_settings, throwaway_redis):
    throwaway_redis.stop()
    settings = dataclasses.replace(stack_settings, redis_url=throwaway_redis.url,
                                   database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none")

    response, seconds = get_health(use_settings, settings, up=("queue", "dlq"))
    assert response.status_code == 503, response.body
    body = response.json_body
    assert body["status"] == "down"
    assert body["checks"]["redis"]["status"] == body["checks"]["postgresql"]["status"] == "down"
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"


def test_a_hung_redis_with_postgresql_up_is_degraded_within_the_deadline(
        use_settings, stack_settings, throwaway_redis):
    settings = dataclasses.replace(stack_settings, redis_url=throwaway_redis.url)
    throwaway_redis.pause()  # keeps its port, answers nothing

    response, seconds = get_health(use_settings, settings, up=("postgresql", "queue", "dlq"))
    assert response.status_code == 200, response.body
    assert response.json_body["status"] == "degraded"
    assert response.json_body["checks"]["redis"]["status"] == "down"
    # cut by the client's one-second timeout or by the deadline, whichever came first
    error = response.json_body["checks"]["redis"]["error"]
    assert error.startswith("Redis timed out") or error == f"no answer within {DEADLINE_SECONDS:.1f}s"
    assert response.json_body["checks"]["postgresql"]["status"] == "ok"
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"


def test_a_stopped_postgresql_gives_503_and_exit_1_naming_postgresql(
        use_settings, stack_settings, throwaway_postgres):
    settings = dataclasses.replace(stack_settings, database_url=throwaway_postgres.dsn())
    response, _ = get_health(use_settings, settings, up=ALL)
    assert response.status_code == 200, response.body  # up first: the outage is what changes

    throwaway_postgres.stop()
    response, seconds = get_health(use_settings, settings, up=("redis",))
    assert response.status_code == 503
    checks = response.json_body["checks"]
    assert checks["postgresql"]["status"] == "down"
    assert checks["postgresql"]["error"] == "PostgreSQL unreachable"
    assert checks["redis"]["status"] == "ok"
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"

    result = run_cli("health", "--format", "json", env=cli_env(settings))
    assert result.returncode == 1
    assert json.loads(result.stdout)["checks"]["postgresql"]["status"] == "down"
    assert result.seconds < CLI_BUDGET_SECONDS, f"took {result.seconds:.2f}s"


def test_an_unreachable_sqs_gives_503_naming_the_queues(use_settings, stack_settings):
    settings = dataclasses.replace(stack_settings, aws_endpoint_url=f"http://127.0.0.1:{free_port()}")

    response, seconds = get_health(use_settings, settings, up=("redis", "postgresql"))
    assert response.status_code == 503
    checks = response.json_body["checks"]
    assert checks["queue"]["status"] == checks["dlq"]["status"] == "down"
    # connection refused, or (a cold client built on a loaded machine, and
    # botocore's retry) the deadline came first: both say SQS, in fixed words
    for name in ("queue", "dlq"):
        assert checks[name]["error"] in ("SQS unreachable", "SQS timed out (no answer within 1.0s)"), checks
    assert checks["redis"]["status"] == checks["postgresql"]["status"] == "ok"
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"


def test_a_non_empty_dlq_is_a_warning_and_health_stays_200(use_settings, stack_settings, sqs, queue_pair):
    sqs.send_message(QueueUrl=queue_pair.dlq_url, MessageBody="{}")

    def dlq_depth_shows():
        response, _ = get_health(use_settings, stack_settings, up=ALL)
        return response if response.json_body["checks"]["dlq"].get("depth") else None

    response = dlq_depth_shows()
    assert response is not None, "SQS reports the DLQ depth at once on LocalStack"
    assert response.status_code == 200
    body = response.json_body
    assert body["status"] == "ok"
    assert body["checks"]["dlq"]["status"] == "ok" and body["checks"]["dlq"]["depth"] == 1
    assert "dlq list" in body["checks"]["dlq"]["warning"]
    assert body["warnings"] == [f"dlq: {body['checks']['dlq']['warning']}"]


def test_only_configured_dependencies_are_probed(use_settings):
    response, _ = get_health(use_settings, Settings(redis_url=REDIS_TEST_URL, api_keys=(API_KEY,),
                                                    channel=TEST_CHANNEL), up=("redis",))
    assert response.status_code == 200
    assert set(response.json_body["checks"]) == {"redis"}


def test_health_never_shows_connection_strings_or_passwords(use_settings, throwaway_redis):
    password = "s3cret-Pa55word"
    throwaway_redis.stop()
    settings = Settings(
        redis_url=f"redis://app:{password}@127.0.0.1:{throwaway_redis.port}/0",
        database_url=f"postgresql://app:{password}@127.0.0.1:{free_port()}/app",
        queue_url="http://127.0.0.1:4566/000000000000/missing-queue",
        aws_endpoint_url=f"http://127.0.0.1:{free_port()}", api_keys=(API_KEY,))

    response, _ = get_health(use_settings, settings)
    assert response.status_code == 503
    text = response.body.decode() if isinstance(response.body, bytes) else str(response.body)
    assert password not in text
    assert "://" not in text
    assert "127.0.0.1" not in text


def test_sessionsync_health_exits_2_on_a_configuration_error(stack_settings):
    env = cli_env(stack_settings)
    env["REDIS_URL"] = "http://127.0.0.1:6379"
    result = run_cli("health", env=env)
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr


def test_a_hung_postgresql_gives_503_within_the_deadline(use_settings, stack_settings, throwaway_postgres):
    settings = dataclasses.replace(stack_settings, database_url=throwaway_postgres.dsn())
    postmaster = int((throwaway_postgres.datadir / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        response, seconds = get_health(use_settings, settings, up=("redis",))
    finally:
        os.kill(postmaster, signal.SIGCONT)  # the fixture's stop needs it awake

    assert response.status_code == 503
    checks = response.json_body["checks"]
    assert checks["postgresql"] == {"status": "down", "latency_ms": None,
                                    "error": "PostgreSQL timed out (no answer within 1.0s)"}
    assert checks["redis"]["status"] == "ok"
    assert seconds < BUDGET_SECONDS, f"took {seconds:.2f}s"


# --- what /health says about a failure: which dependency, why, nothing secret -------

ACCOUNT = "123456789012"


def body_text(response) -> str:
    return response.body.decode() if isinstance(response.body, bytes) else str(response.body)


def test_a_malformed_database_url_is_named_without_its_user_host_database_or_password(tmp_path):
    """The settings are the stage's, as deployed: they cannot even be loaded."""
    password = "p@ss/w:rd%?#"
    url = f"postgresql://orders_admin:{password}@db-7.internal.example.com:5432/orders_prod"
    (tmp_path / ".chalice").mkdir()
    (tmp_path / ".chalice" / "config.json").write_text(json.dumps({
        "version": "2.0", "app_name": "sessionsync",
        "stages": {"leaky": {"environment_variables": {
            "REDIS_URL": REDIS_TEST_URL, "DATABASE_URL": url, "SESSIONSYNC_API_KEYS": API_KEY}}}}))
    runtime.reset()  # settings read from the stage's environment, not installed
    try:
        with app_client("leaky", tmp_path) as http:
            response = http.get("/health")
    finally:
        runtime.reset()

    assert response.status_code == 503, response.body
    assert response.json_body == {"status": "down", "checks": {"postgresql": {
        "status": "down", "latency_ms": None, "error": "configuration error: DATABASE_URL is malformed"}}}
    text = body_text(response)
    for secret in ("orders_admin", "db-7", "example.com", "orders_prod", "5432", "p@ss", "w:rd",
                   "%40", "%2F", "**"):
        assert secret not in text, secret


class DeniedSqs:
    """An SQS client whose role lacks sqs:GetQueueAttributes and
    sqs:GetQueueUrl: AWS answers 403 with the caller's and the queue's ARNs."""

    @staticmethod
    def _denied(operation: str, action: str, queue: str) -> Exception:
        from botocore.exceptions import ClientError
        message = (f"User: arn:aws:sts::{ACCOUNT}:assumed-role/sessionsync-api-role/fn is not "
                   f"authorized to perform: sqs:{action} on resource: "
                   f"arn:aws:sqs:us-east-1:{ACCOUNT}:{queue} because no identity-based policy allows it")
        return ClientError({"Error": {"Code": "AccessDenied", "Message": message, "Type": "Sender"},
                            "ResponseMetadata": {"HTTPStatusCode": 403}}, operation)

    def get_queue_attributes(self, QueueUrl, AttributeNames):
        raise self._denied("GetQueueAttributes", "getqueueattributes", QueueUrl.rsplit("/", 1)[1])

    def get_queue_url(self, QueueName):
        raise self._denied("GetQueueUrl", "getqueueurl", QueueName)


def test_an_access_denied_from_sqs_is_access_denied_not_a_missing_queue_and_shows_no_account(
        use_settings, patient_health):
    settings = Settings(redis_url=REDIS_TEST_URL, api_keys=(API_KEY,),
                        queue_url=f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/orders-events",
                        dlq_name="orders-events-dlq")
    use_settings(settings, sqs=DeniedSqs())
    with app_client() as http:
        response = http.get("/health")

    assert response.status_code == 503
    checks = response.json_body["checks"]
    assert checks["redis"]["status"] == "ok"
    assert (checks["queue"]["status"], checks["queue"]["error"]) == ("down", "SQS access denied")
    # the DLQ is configured by name: the lookup was refused
    assert (checks["dlq"]["status"], checks["dlq"]["error"]) == (
        "down", "SQS access denied (check SESSION_DLQ_URL)")
    text = body_text(response)
    for secret in (ACCOUNT, "arn:", "sessionsync-api-role", "orders-events", "amazonaws.com"):
        assert secret not in text, secret
    assert "not found" not in text and "does not exist" not in text


@pytest.fixture
def patient_health(monkeypatch):
    """A deadline no loaded machine misses: these tests are about the words."""
    from chalicelib.api import health
    monkeypatch.setattr(health, "DEADLINE_SECONDS", 10.0)


def test_a_missing_queue_is_named_as_missing_without_its_url_or_account(use_settings, sqs, patient_health):
    settings = Settings(redis_url=REDIS_TEST_URL, api_keys=(API_KEY,), aws_endpoint_url=LOCALSTACK_URL,
                        aws_region="us-east-1",
                        queue_url=f"{LOCALSTACK_URL}/000000000000/sessionsync-test-gone-queue",
                        dlq_name="sessionsync-test-gone-dlq")
    response, _ = get_health(use_settings, settings)

    assert response.status_code == 503
    checks = response.json_body["checks"]
    assert checks["queue"]["error"] == "SQS queue does not exist (check SESSION_QUEUE_URL)"
    assert checks["dlq"]["error"] == "SQS queue does not exist (check SESSION_DLQ_URL)"
    text = body_text(response)
    for secret in ("000000000000", "gone-queue", "gone-dlq", "127.0.0.1", "4566"):
        assert secret not in text, secret


def test_a_missing_database_is_named_as_missing_without_its_name_host_or_user(use_settings, patient_health):
    absent = "sessionsync_absent_db_7f3a"
    settings = Settings(redis_url=REDIS_TEST_URL, api_keys=(API_KEY,),
                        database_url=PG_TEST_ADMIN_URL.rsplit("/", 1)[0] + "/" + absent)
    response, _ = get_health(use_settings, settings)

    assert response.status_code == 503
    assert response.json_body["checks"]["postgresql"] == {
        "status": "down", "latency_ms": response.json_body["checks"]["postgresql"]["latency_ms"],
        "error": "PostgreSQL database does not exist"}
    text = body_text(response)
    for secret in (absent, "127.0.0.1", "postgres@", "5432"):
        assert secret not in text, secret
