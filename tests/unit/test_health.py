"""What a health report says about a failure: the dependency and a fixed
phrase chosen from the error's class or code, never the error's own text."""
from __future__ import annotations

import json

import psycopg
import pytest
import redis
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from chalicelib.adapters.postgres.connection import fetch_secret_dsn
from chalicelib.api import health
from chalicelib.config import DB_SECRET_ARN, SESSION_QUEUE_URL
from chalicelib.domain.errors import ConfigurationError, ServiceUnavailable

ACCOUNT = "123456789012"
ARN = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:sessionsync/prod/db-AbCdEf"


def aws_error(code: str, operation: str, status: int = 400) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{ARN} in account {ACCOUNT} said no"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


def raised(outer: Exception, cause: BaseException) -> Exception:
    """``outer`` as ``raise outer from cause`` leaves it."""
    try:
        raise outer from cause
    except Exception as exc:
        return exc


@pytest.mark.parametrize(("error", "check", "phrase"), [
    (aws_error("AccessDenied", "GetQueueAttributes", 403), "sqs", "SQS access denied"),
    (aws_error("AccessDeniedException", "GetSecretValue", 400), "postgresql",
     "Secrets Manager access denied"),
    (aws_error("AWS.SimpleQueueService.NonExistentQueue", "GetQueueUrl"), "sqs", "SQS queue does not exist"),
    (aws_error("InvalidClientTokenId", "GetQueueAttributes", 403), "sqs", "SQS refused the credentials"),
    (aws_error("SomethingNew", "GetQueueAttributes", 403), "sqs", "SQS access denied"),
    (aws_error("SomethingNew", "GetQueueAttributes", 503), "sqs", "SQS unavailable"),
    (aws_error("SomethingNew", "GetQueueAttributes", 400), "sqs", "SQS refused the request"),
    (EndpointConnectionError(endpoint_url=f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/q"), "sqs",
     "SQS unreachable"),
    (ConnectTimeoutError(endpoint_url="https://sqs.us-east-1.amazonaws.com"), "sqs", "SQS timed out"),
    (ReadTimeoutError(endpoint_url="https://sqs.us-east-1.amazonaws.com"), "sqs", "SQS timed out"),
    (NoCredentialsError(), "sqs", "SQS no AWS credentials"),
    (redis.ConnectionError("Error 111 connecting to cache-7.internal:6379"), "redis", "Redis unreachable"),
    (redis.TimeoutError("Timeout reading from cache-7.internal:6379"), "redis", "Redis timed out"),
    (redis.AuthenticationError("WRONGPASS invalid username-password pair"), "redis",
     "Redis refused the credentials"),
    (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), "redis",
     "Redis read-only (a replica)"),
    (redis.exceptions.NoPermissionError("NOPERM user app has no permissions"), "redis",
     "Redis permission denied (ACL)"),
    (psycopg.OperationalError('connection failed: connection to server at "10.0.0.7", port 5432 failed: '
                              'FATAL:  password authentication failed for user "orders_admin"'),
     "postgresql", "PostgreSQL refused the credentials"),
    (psycopg.OperationalError('connection failed: connection to server at "10.0.0.7", port 5432 failed: '
                              "Connection refused"), "postgresql", "PostgreSQL unreachable"),
    (psycopg.errors.ConnectionTimeout("connection timeout expired"), "postgresql", "PostgreSQL timed out"),
    (psycopg.ProgrammingError('invalid URI query parameter: "orders_admin"'), "postgresql",
     "PostgreSQL connection settings are malformed"),
])
def test_an_error_is_described_by_its_class_or_code_in_fixed_words(error, check, phrase):
    wrapped = raised(ServiceUnavailable(f"trouble with {ARN}", dependency=check), error)
    assert health.describe(wrapped, check) == phrase
    assert health.describe(error, check) == phrase


def test_an_error_sessionsync_does_not_know_says_only_which_dependency_failed():
    secret = f"{ARN} orders_admin:hunter2@db-7"
    assert health.describe(KeyError(secret), "redis") == "Redis failed"
    assert health.describe(ServiceUnavailable(secret, dependency="sqs"), "queue") == "SQS unavailable"
    report = health.check({"redis": lambda: {}[secret], "queue": lambda: {}[secret]})
    assert report.to_dict()["checks"] == {
        "redis": {"status": "down", "latency_ms": report.check("redis").to_dict()["latency_ms"],
                  "error": "Redis failed"},
        "queue": {"status": "down", "latency_ms": report.check("queue").to_dict()["latency_ms"],
                  "error": "SQS failed"}}


def test_a_configuration_error_names_its_setting_and_nothing_else():
    error = ConfigurationError("DATABASE_URL", "the password contains an unescaped @, e.g. "
                                               "postgresql://orders_admin:***%40*@db-7:5432/orders")
    assert health.describe(error, "postgresql") == "configuration error: DATABASE_URL is malformed"
    unknown = ConfigurationError("postgresql://orders_admin@db-7", "not a setting name")
    assert health.describe(unknown, "postgresql") == "configuration error"


def test_a_configuration_error_caused_by_aws_says_what_aws_answered_and_which_setting():
    error = raised(ConfigurationError(SESSION_QUEUE_URL, f"queue {ARN!r}"),
                   aws_error("AccessDenied", "GetQueueUrl", 403))
    assert health.describe(error, "sqs") == f"SQS access denied (check {SESSION_QUEUE_URL})"


class DeniedSecrets:
    def get_secret_value(self, SecretId):  # boto3's argument name
        raise aws_error("AccessDeniedException", "GetSecretValue")


class UnreachableSecrets:
    def get_secret_value(self, SecretId):
        raise EndpointConnectionError(endpoint_url="https://secretsmanager.us-east-1.amazonaws.com")


@pytest.mark.parametrize(("client", "phrase"), [
    (DeniedSecrets(), f"Secrets Manager access denied (check {DB_SECRET_ARN})"),
    (UnreachableSecrets(), "Secrets Manager unreachable"),
])
def test_the_database_secret_s_trouble_is_reported_under_secrets_manager(client, phrase):
    def probe():
        fetch_secret_dsn(client, ARN)

    report = health.check({"postgresql": probe})
    assert report.check("postgresql").error == phrase
    assert ACCOUNT not in json.dumps(report.to_dict())


def test_a_probe_that_misses_the_deadline_is_timed_out_under_its_dependency_s_name():
    import threading
    release = threading.Event()
    report = health.check({"queue": lambda: release.wait(5)}, deadline=0.05)
    release.set()
    assert report.check("queue").error == "SQS timed out (no answer within 0.1s)"


def test_settings_that_cannot_be_loaded_are_a_down_report_not_an_error():
    def probes():
        raise ConfigurationError("REDIS_URL", "scheme must be redis://, got 'http' (http://cache-7:6379)")

    report = health.check_configured(probes)
    assert report.to_dict() == {"status": "down", "checks": {"redis": {
        "status": "down", "latency_ms": None, "error": "configuration error: REDIS_URL is malformed"}}}


def _down():
    raise ServiceUnavailable("refused", dependency="redis")


@pytest.mark.parametrize(("probes", "status", "http"), [
    ({"redis": lambda: {}, "postgresql": lambda: {}}, "ok", 200),
    ({"redis": _down, "postgresql": lambda: {}, "queue": lambda: {}}, "degraded", 200),
    ({"redis": _down}, "down", 503),  # no PostgreSQL: nothing can serve a read
    ({"redis": _down, "postgresql": _down}, "down", 503),
    ({"redis": _down, "postgresql": lambda: {}, "queue": _down}, "down", 503),
    ({"redis": lambda: {}, "postgresql": _down}, "down", 503),
])
def test_redis_down_with_postgresql_and_the_rest_up_is_degraded_and_still_200(probes, status, http):
    report = health.check(probes)
    assert (report.to_dict()["status"], report.http_status) == (status, http)


def test_a_broken_redis_setting_is_down_not_degraded():
    def broken():
        raise ConfigurationError("REDIS_URL", "malformed")

    report = health.check({"redis": broken, "postgresql": lambda: {}})
    assert (report.status, report.http_status) == ("down", 503)
