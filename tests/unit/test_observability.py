"""Logs are JSON lines that carry the request id; metrics are EMF lines.

The formats alone, without I/O; the same on the real app, Redis and
PostgreSQL is in tests/integration/api/test_observability.py.
"""
from __future__ import annotations

import io
import logging
import os
from types import SimpleNamespace

import pytest

from app import persist_changes
from chalicelib.observability import logs, metrics


def test_an_sqs_invocation_logs_lambda_s_request_id_on_every_line(log_lines, use_settings, app_settings):
    class Consumer:
        def handle(self, event):
            logging.getLogger("sessionsync.consumer").info("batch processed", extra={"received": 1})
            return {"batchItemFailures": []}

    use_settings(app_settings, consumer=Consumer())
    event = {"Records": [{"messageId": "m-1", "receiptHandle": "r", "body": "{}", "attributes": {},
                          "messageAttributes": {}, "eventSource": "aws:sqs",
                          "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:q",
                          "awsRegion": "us-east-1", "md5OfBody": ""}]}
    context = SimpleNamespace(aws_request_id="lambda-sqs-55", function_name="persist_changes",
                              get_remaining_time_in_millis=lambda: 30_000)

    assert persist_changes(event, context) == {"batchItemFailures": []}
    line = next(line for line in log_lines() if line["message"] == "batch processed")
    assert line["request_id"] == "lambda-sqs-55" and line["received"] == 1


def test_log_level_comes_from_log_level_and_a_bad_value_falls_back_to_info(monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "warning")
    assert logs.configure(stream=io.StringIO()).level == logging.WARNING
    monkeypatch.setenv("LOG_LEVEL", "chatty")
    assert logs.configure(stream=io.StringIO()).level == logging.INFO
    monkeypatch.delenv("LOG_LEVEL")
    logs.configure()


def test_an_exception_is_logged_as_json_with_its_traceback(log_lines):
    with logs.request_context("req-1"):
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("sessionsync.test").exception("it failed")
    line = log_lines()[-1]
    assert line["exception_type"] == "ValueError" and "boom" in line["exception"]
    assert line["request_id"] == "req-1" and line["level"] == "ERROR"


def test_emf_lines_parse_and_declare_their_metrics_units_and_dimensions(emf_lines):
    with logs.request_context("req-emf"):
        metrics.emit({"ConsumerBatchSize": 10, "PersistedEvents": 9, "DlqSends": 1})
    doc = emf_lines()[-1]
    directive = doc["_aws"]["CloudWatchMetrics"][0]
    assert isinstance(doc["_aws"]["Timestamp"], int)
    assert directive["Namespace"] == os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "sessionsync")
    assert directive["Dimensions"] == [["service"]]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        "ConsumerBatchSize": "Count", "PersistedEvents": "Count", "DlqSends": "Count"}
    assert (doc["ConsumerBatchSize"], doc["PersistedEvents"], doc["DlqSends"]) == (10, 9, 1)
    assert doc["request_id"] == "req-emf" and doc["service"]


def test_a_metric_outside_the_catalogue_or_not_a_number_is_refused(emf_lines):
    with pytest.raises(KeyError):
        metrics.emit({"Writes": 1})
    with pytest.raises(ValueError):
        metrics.emit({"WriteLatency": float("nan")})
    assert emf_lines() == []


def test_each_call_of_a_per_invocation_handler_gets_its_own_request_id(log_lines):
    log = logging.getLogger("sessionsync.consumer")
    handler = logs.per_invocation(lambda event: log.info("batch processed", extra=event))
    handler({"received": 1})
    handler({"received": 2})
    first, second = [line for line in log_lines() if line["message"] == "batch processed"]
    assert first["request_id"] and second["request_id"] and first["request_id"] != second["request_id"]


@pytest.mark.parametrize("headers, expected", [
    ({"x-request-id": "abc-1", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
     ("abc-1", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")),
    ({"x-request-id": " abc-1\t"}, ("abc-1", None)),
    ({"x-request-id": "a b"}, (None, None)),
    ({"x-request-id": "x" * 129}, (None, None)),
    ({"x-request-id": "caf\u00e9"}, (None, None)),
    ({"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"}, (None, None)),
    ({"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, (None, None)),
    ({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}, (None, None)),
    ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"}, (None, None)),
    ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"}, (None, None)),
    ({"traceparent": "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"},
     (None, "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra")),
    (None, (None, None)),
], ids=["both", "trimmed", "space", "too-long", "non-ascii", "upper-hex", "version-ff", "zero-trace",
        "zero-parent", "v00-with-more", "later-version-with-more", "none"])
def test_a_caller_s_ids_are_taken_when_well_formed_and_ignored_otherwise(headers, expected):
    assert logs.caller_ids(headers) == expected
