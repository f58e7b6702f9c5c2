"""Pipeline pieces without servers: event parsing, SQLSTATE classification,
DLQ attributes, the Lambda record shape, secret DSNs; the worker and the
consumer against moto's in-process SQS."""
from __future__ import annotations

import json
import re

import psycopg
import pytest
from psycopg import conninfo

from chalicelib import config, constants
from chalicelib.adapters.postgres.connection import dsn_from_secret, resolve_dsn
from chalicelib.adapters.postgres.database import ApplyResult
from chalicelib.adapters.postgres.sqlstate import classify
from chalicelib.adapters.redis import scripts
from chalicelib.domain.errors import (
    ConfigurationError,
    MalformedMessage,
    PermanentPersistenceError,
    RetryablePersistenceError,
)
from chalicelib.domain.events import EVENT_FIELDS, EVENT_SCHEMA_VERSION, EVENT_TYPES, parse_event
from chalicelib.pipeline.consumer import BatchIncomplete, Consumer
from chalicelib.pipeline.dead_letters import DeadLetter, DeadLetterQueue, dead_letter_attributes
from sessionsync.worker import Worker, lambda_record
from tests.support.pipeline import event_body

# --- events ---------------------------------------------------------------------


def test_a_change_event_parses_into_its_fields_with_the_state_re_encoded_compactly():
    event = parse_event(event_body("s-1", 2, {"b": [1, 2], "é": "ü"}))

    assert (event.event_id, event.session_id, event.version, event.event_type) == (
        "s-1:2", "s-1", 2, "session_updated")
    assert event.state_json == '{"b":[1,2],"é":"ü"}'
    assert not event.deleted
    deleted = parse_event(event_body("s-1", 3, event_type="session_deleted"))
    assert deleted.deleted and deleted.state_json is None


def test_the_store_s_scripts_write_the_event_the_domain_defines():
    """The Lua builds the event JSON by hand: its fields, in order, its schema
    version and its type names must be the domain's."""
    prelude = scripts.WRITE_PRELUDE
    start = prelude.index("local function event(")
    builder = prelude[start:prelude.index("\nend\n", start)]

    assert re.findall(r'"(\w+)":', builder) == list(EVENT_FIELDS)
    assert f"local EVENT_SCHEMA_VERSION = {EVENT_SCHEMA_VERSION}\n" in prelude
    texts = {name: text for name, text in vars(scripts).items() if name.endswith("_SCRIPT")}
    # a write carries the header (scripts.shake may leave some of the rest out)
    writes = [name for name, text in texts.items() if scripts.HEADER in text]
    assert len(texts) >= 9 and len(writes) == 6
    for name, text in texts.items():
        # named once, where the write prelude takes them from Python; never
        # as a literal in a script (and a read has no event to name)
        assert re.findall(r"'(session_\w+)'", text) == (list(EVENT_TYPES) if name in writes else []), name


@pytest.mark.parametrize("body, reason", [
    ("{not json", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    ("[1, 2]", "not_an_object"),
    ('{"schema_version": 2}', "unsupported_schema"),
    ('{"schema_version": true}', "unsupported_schema"),
    (json.dumps({**json.loads(event_body("s", 1)), "version": "1"}), "wrong_type"),
    (json.dumps({**json.loads(event_body("s", 1)), "version": True}), "wrong_type"),
    (json.dumps({k: v for k, v in json.loads(event_body("s", 1)).items() if k != "occurred_at"}),
     "missing_field"),
    (json.dumps({k: v for k, v in json.loads(event_body("s", 1)).items() if k != "state"}),
     "missing_field"),
    (json.dumps({**json.loads(event_body("s", 1)), "state": [1]}), "wrong_type"),
    (json.dumps({**json.loads(event_body("s", 1)), "event_id": "other:1"}), "inconsistent_event_id"),
    (event_body("s", 1).replace('"v":1', '"v":"\\ud800"'), "invalid_json"),
    ("[" * 100_000, "invalid_json"),
])
def test_a_malformed_message_is_rejected_with_its_reason(body, reason):
    with pytest.raises(MalformedMessage) as caught:
        parse_event(body)
    assert caught.value.details["reason"] == reason
    assert isinstance(caught.value, PermanentPersistenceError)


# --- SQLSTATE classification -----------------------------------------------------------

@pytest.mark.parametrize("sqlstate", ["40001", "40P01", "57014", "57P01", "57P02", "57P03",
                                      "08006", "08001", "53300", "55P03", "42P01"])
def test_transient_and_unknown_sqlstates_are_retryable(sqlstate):
    error = classify(psycopg.errors.lookup(sqlstate)("boom"))
    assert isinstance(error, RetryablePersistenceError) and error.retryable
    assert error.sqlstate == sqlstate


@pytest.mark.parametrize("sqlstate", ["23505", "23514", "23502", "22P05", "22P02", "22007", "54000"])
def test_constraint_and_data_errors_are_permanent(sqlstate):
    exc = psycopg.errors.lookup(sqlstate)("bad row")
    error = classify(exc)
    assert isinstance(error, PermanentPersistenceError) and not error.retryable
    assert (error.sqlstate, error.__cause__) == (sqlstate, exc)
    assert error.details["error_class"] == type(exc).__name__


def test_an_error_without_sqlstate_is_a_lost_connection_and_retryable():
    error = classify(psycopg.OperationalError("connection refused"))
    assert isinstance(error, RetryablePersistenceError) and error.sqlstate is None
    assert error.message == "connection refused"


# --- DSN from a secret ---------------------------------------------------------------

def test_a_secret_becomes_a_url_whose_awkward_password_survives_the_round_trip(tmp_path):
    bundle = tmp_path / "ca bundle.pem"
    bundle.write_text("")
    dsn = dsn_from_secret({"username": "app user", "password": "p@ss/w:rd%?#&=", "host": "db.local",
                           "port": 6432, "dbname": "sessions"}, str(bundle))
    parsed = conninfo.conninfo_to_dict(dsn)
    assert parsed == {"user": "app user", "password": "p@ss/w:rd%?#&=", "host": "db.local",
                      "port": "6432", "dbname": "sessions",
                      "sslmode": "verify-full", "sslrootcert": str(bundle)}
    assert "p@ss" not in dsn  # percent-encoded


def test_a_database_from_a_secret_is_reached_over_tls_that_checks_the_rds_certificate(tmp_path):
    bundle = tmp_path / "rds-ca-bundle.pem"
    bundle.write_text("")
    settings = config.load_settings({"DB_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:1:secret:db",
                                     "DB_SSL_ROOT_CERT": str(bundle)})

    class Secrets:
        def get_secret_value(self, SecretId):
            return {"SecretString": '{"username": "u", "password": "p", "host": "db.rds.amazonaws.com"}'}

    parsed = conninfo.conninfo_to_dict(resolve_dsn(settings, Secrets))
    assert (parsed["sslmode"], parsed["sslrootcert"]) == ("verify-full", str(bundle))
    assert config.load_settings({}).db_ssl_root_cert == config.Settings.db_ssl_root_cert
    assert config.Settings.db_ssl_root_cert.endswith("chalicelib/adapters/postgres/rds-ca-bundle.pem")


def test_a_secret_s_own_sslmode_wins_and_database_url_is_used_as_given():
    dsn = dsn_from_secret({"username": "u", "password": "p", "host": "127.0.0.1", "sslmode": "disable"},
                          "/nonexistent/bundle.pem")
    assert conninfo.conninfo_to_dict(dsn)["sslmode"] == "disable" and "sslrootcert" not in dsn
    local = "postgresql://postgres@127.0.0.1:5432/sessionsync"
    assert resolve_dsn(config.Settings(database_url=local, db_secret_arn="arn:x"), dict) == local


def test_a_missing_ca_bundle_names_its_setting_instead_of_failing_every_connect(tmp_path):
    with pytest.raises(ConfigurationError) as caught:
        dsn_from_secret({"username": "u", "password": "p", "host": "db"}, str(tmp_path / "absent.pem"))
    assert caught.value.setting == "DB_SSL_ROOT_CERT" and "absent.pem" in caught.value.message


def test_a_secret_without_a_host_names_the_setting():
    with pytest.raises(ConfigurationError) as caught:
        dsn_from_secret({"username": "u", "password": "p"})
    assert caught.value.setting == "DB_SECRET_ARN" and "host" in caught.value.message


def test_the_trigger_queue_name_and_the_pg_environment_come_from_the_environment():
    assert config.trigger_queue_name({}) == constants.DEFAULT_QUEUE_NAME
    assert config.trigger_queue_name({"SESSION_QUEUE_NAME": " q-prod "}) == "q-prod"
    assert config.load_settings({"PGHOST": "db"}).has_database
    assert not config.load_settings({}).has_database
    assert constants.QUEUE_VISIBILITY_TIMEOUT >= 6 * constants.CONSUMER_TIMEOUT_SECONDS


# --- DLQ attributes and the Lambda record shape ---------------------------------------------------

def _record(body="x", message_id="m-1", receive_count="3"):
    return {"messageId": message_id, "body": body, "eventSourceARN": "arn:aws:sqs:us-east-1:1:q",
            "attributes": {"ApproximateReceiveCount": receive_count},
            "messageAttributes": {"event_id": {"stringValue": "s:1", "dataType": "String"}}}


def test_dead_letter_attributes_say_why_and_fit_the_sqs_limits():
    error = PermanentPersistenceError("bad\x00 row " + "x" * 5000, sqlstate="23514",
                                      constraint="sync_events_version_positive")
    attrs = dead_letter_attributes(DeadLetter(_record(), error), now=0)

    values = {k: v["StringValue"] for k, v in attrs.items()}
    assert values["error_class"] == "PermanentPersistenceError"
    assert values["error_code"] == values["sqlstate"] == "23514"
    assert values["constraint"] == "sync_events_version_positive"
    assert values["original_message_id"] == "m-1" and values["receive_count"] == "3"
    assert values["event_id"] == "s:1" and values["source_queue"] == "arn:aws:sqs:us-east-1:1:q"
    assert values["failed_at"] == "1970-01-01T00:00:00Z"
    assert len(values["error_message"]) == 1000 and "\x00" not in values["error_message"]
    assert len(attrs) <= 10 and all(v for v in values.values())
    assert attrs["receive_count"]["DataType"] == "Number"


def test_a_malformed_message_has_its_reason_as_error_code_and_no_empty_attributes():
    attrs = dead_letter_attributes(DeadLetter(
        {"messageId": "m"}, MalformedMessage("no", reason="invalid_json")), now=0)
    assert attrs["error_code"]["StringValue"] == "invalid_json"
    assert "sqlstate" not in attrs and "constraint" not in attrs and "receive_count" not in attrs


def test_a_received_message_becomes_a_lambda_sqs_record():
    message = {"MessageId": "id-1", "ReceiptHandle": "rh", "Body": "{}", "MD5OfBody": "md5",
               "Attributes": {"ApproximateReceiveCount": "2", "SentTimestamp": "1"},
               "MD5OfMessageAttributes": "md5a",
               "MessageAttributes": {"event_id": {"DataType": "String", "StringValue": "s:1"},
                                     "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"}}}

    record = lambda_record(message, queue_arn="arn:aws:sqs:us-east-1:1:q", region="us-east-1")

    assert record == {
        "messageId": "id-1", "receiptHandle": "rh", "body": "{}", "md5OfBody": "md5",
        "md5OfMessageAttributes": "md5a",
        "attributes": {"ApproximateReceiveCount": "2", "SentTimestamp": "1"},
        "messageAttributes": {
            "event_id": {"stringValue": "s:1", "stringListValues": [], "binaryListValues": [],
                         "dataType": "String"},
            "blob": {"binaryValue": "AAE=", "stringListValues": [], "binaryListValues": [],
                     "dataType": "Binary"}},
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:1:q", "awsRegion": "us-east-1"}


# --- worker and consumer on moto's SQS ---------------------------------------------------------------



def _depth(sqs, url):
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_the_worker_deletes_only_the_records_the_handler_did_not_report(moto_sqs):
    sqs = moto_sqs.client
    for i in range(4):
        sqs.send_message(QueueUrl=moto_sqs.queue, MessageBody=f"m{i}",
                         MessageAttributes={"event_id": {"DataType": "String", "StringValue": f"s:{i}"}})
    seen = []

    def handler(event):
        seen.append(event)
        failed = [r["messageId"] for r in event["Records"] if r["body"] in ("m1", "m3")]
        return {"batchItemFailures": [{"itemIdentifier": m} for m in failed]}

    worker = Worker(sqs, moto_sqs.queue, handler, batch_size=10, wait_seconds=0, retry_delay=0)
    result = worker.poll_once()

    assert (result.received, result.deleted, result.retried) == (4, 2, 2)
    record = seen[0]["Records"][0]
    assert record["eventSource"] == "aws:sqs" and record["eventSourceARN"].endswith(":main")
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"]["event_id"]["stringValue"].startswith("s:")
    assert _depth(sqs, moto_sqs.queue) == (0, 2)  # the failed two wait for their visibility timeout


def test_the_worker_honours_the_batch_size_and_keeps_everything_when_the_handler_raises(moto_sqs):
    sqs = moto_sqs.client
    for i in range(5):
        sqs.send_message(QueueUrl=moto_sqs.queue, MessageBody=f"m{i}")
    sizes = []

    def crashing(event):
        sizes.append(len(event["Records"]))
        raise RuntimeError("bug")

    result = Worker(sqs, moto_sqs.queue, crashing, batch_size=3, wait_seconds=0).poll_once()

    assert sizes == [3] and (result.received, result.deleted, result.retried) == (3, 0, 3)
    assert sum(_depth(sqs, moto_sqs.queue)) == 5


def test_a_failed_record_comes_back_after_the_backoff_not_the_whole_visibility_timeout(moto_sqs):
    sqs = moto_sqs.client
    sqs.send_message(QueueUrl=moto_sqs.queue, MessageBody="m")
    calls = []

    def failing(event):
        calls.append(event["Records"][0]["attributes"]["ApproximateReceiveCount"])
        return {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}

    worker = Worker(sqs, moto_sqs.queue, failing, wait_seconds=0, visibility_timeout=600,
                    retry_delay=0.4)  # receive 1 -> int(0.4) = 0 s: visible again at once
    worker.poll_once()
    assert worker.poll_once().received == 1
    assert calls == ["1", "2"]


class _FakeDatabase:
    def __init__(self, failures=None):
        self.batches = []
        self.failures = failures or {}

    def apply_events(self, events):
        self.batches.append([e.event_id for e in events])
        return ApplyResult(inserted=len(events) - len(self.failures), failures=self.failures)


def test_the_consumer_reports_retryable_failures_and_dead_letters_permanent_ones(moto_sqs):
    retryable = RetryablePersistenceError("deadlock", sqlstate="40P01")
    permanent = PermanentPersistenceError("check", sqlstate="23514", constraint="c")
    db = _FakeDatabase({0: retryable, 2: permanent})
    source = _Source()
    consumer = Consumer(db, DeadLetterQueue(moto_sqs.client, moto_sqs.dlq), source)
    records = [_record(event_body("s", v), f"m{v}", "1") for v in (1, 2, 3)]
    records.insert(1, _record("garbage", "bad", "1"))

    with pytest.raises(BatchIncomplete) as raised:
        consumer.handle({"Records": records})

    assert db.batches == [["s:1", "s:2", "s:3"]]  # one call: the malformed one never reaches it
    assert raised.value.report.response() == {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    # whatever the mapping does with a raising handler, the handled records are gone
    assert source.deleted == ["bad", "m2", "m3"]
    dead = moto_sqs.client.receive_message(QueueUrl=moto_sqs.dlq, MaxNumberOfMessages=10,
                                           MessageAttributeNames=["All"])["Messages"]
    assert sorted(m["MessageAttributes"]["original_message_id"]["StringValue"] for m in dead) == [
        "bad", "m3"]


def test_the_consumer_keeps_poison_on_the_main_queue_when_the_dlq_refuses_it(moto_sqs):
    source = _Source()
    consumer = Consumer(_FakeDatabase(), DeadLetterQueue(moto_sqs.client, moto_sqs.queue + "-missing"),
                        source)

    with pytest.raises(BatchIncomplete) as raised:
        consumer.handle({"Records": [_record("garbage", "bad"), _record(event_body("s", 1), "ok")]})

    assert raised.value.report.retry == ["bad"]
    assert source.deleted == ["ok"]


def test_a_batch_with_nothing_to_retry_returns_and_deletes_nothing_itself():
    source = _Source()
    consumer = Consumer(_FakeDatabase(), DeadLetterQueue(None, ""), source)

    reply = consumer.handle({"Records": [_record(event_body("s", 1), "ok")]})

    assert reply == {"batchItemFailures": []}
    assert source.deleted == []  # the mapping deletes a batch whose handler returned


def test_an_empty_event_is_an_empty_success():
    assert Consumer(_FakeDatabase(), DeadLetterQueue(None, ""), _Source()).handle({}) == {
        "batchItemFailures": []}


class _Source:
    def __init__(self):
        self.deleted = []

    def delete(self, records):
        self.deleted.extend(r["messageId"] for r in records)
        return 0




def test_the_relay_sends_one_session_s_changes_in_one_lane_in_the_order_they_committed():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from chalicelib.pipeline.outbox import send_in_lanes

    class Recording:
        def __init__(self):
            self.calls = []
            self.lock = threading.Lock()

        def send_many(self, chunk):
            with self.lock:
                self.calls.append((threading.current_thread().name, [eid for eid, _ in chunk]))
            return [eid for eid, _ in chunk]

    events = [(f"s{n % 7}:{n // 7 + 1}", "{}") for n in range(140)]  # 7 sessions, 20 versions each
    sender = Recording()
    with ThreadPoolExecutor(4) as pool:
        assert send_in_lanes(sender, events, pool, 4) == 140
    assert all(len(ids) <= 10 for _, ids in sender.calls)
    for session in range(7):
        calls = [(thread, [i for i in ids if i.startswith(f"s{session}:")]) for thread, ids in sender.calls]
        calls = [(thread, ids) for thread, ids in calls if ids]
        assert len({thread for thread, _ in calls}) == 1  # one lane: never two sends at once
        versions = [int(i.rsplit(":", 1)[1]) for _, ids in calls for i in ids]
        assert versions == list(range(1, 21))  # in the order they committed


def test_a_relay_lane_stops_at_the_first_chunk_sqs_refused():
    from concurrent.futures import ThreadPoolExecutor

    from chalicelib.pipeline.outbox import send_in_lanes

    class RefusesTheFirst:
        def __init__(self):
            self.chunks = 0

        def send_many(self, chunk):
            self.chunks += 1
            return [] if self.chunks == 1 else [eid for eid, _ in chunk]

    sender = RefusesTheFirst()
    with ThreadPoolExecutor(1) as pool:
        # one session, 30 changes, one lane: the later ones must wait behind the first
        assert send_in_lanes(sender, [(f"s:{v}", "{}") for v in range(1, 31)], pool, 1) == 0
    assert sender.chunks == 1
