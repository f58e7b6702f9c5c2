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

    from chalicelib.pipeline.outbox import Lanes

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
    lanes = Lanes(sender, 4)
    try:
        # handed over in several wake-ups, as the relay reads them
        batches = [lanes.put(events[i:i + 13]) for i in range(0, len(events), 13)]
        assert all(batch.done.wait(10) for batch in batches)
    finally:
        lanes.close(10)
    assert sum(batch.sent for batch in batches) == 140
    assert all(len(ids) <= 10 for _, ids in sender.calls)
    for session in range(7):
        calls = [(thread, [i for i in ids if i.startswith(f"s{session}:")]) for thread, ids in sender.calls]
        calls = [(thread, ids) for thread, ids in calls if ids]
        assert len({thread for thread, _ in calls}) == 1  # one lane: never two sends at once
        versions = [int(i.rsplit(":", 1)[1]) for _, ids in calls for i in ids]
        assert versions == list(range(1, 21))  # in the order they committed


def test_a_relay_lane_stops_at_the_first_chunk_sqs_refused_until_it_is_reset():
    from chalicelib.pipeline.outbox import Lanes

    class RefusesTheFirst:
        def __init__(self):
            self.chunks = 0

        def send_many(self, chunk):
            self.chunks += 1
            return [] if self.chunks == 1 else [eid for eid, _ in chunk]

    sender = RefusesTheFirst()
    lanes = Lanes(sender, 1)
    try:
        # one session, 30 changes, one lane: the later ones must wait behind the first
        assert lanes.send([(f"s:{v}", "{}") for v in range(1, 31)]) == 0
        assert sender.chunks == 1 and lanes.any_failed()
        # handed over after the refusal: left in the outbox too, never sent ahead of it
        assert lanes.send([("s:31", "{}")]) == 0 and sender.chunks == 1
        lanes.reset()  # a sweep takes everything pending from here, in order
        assert lanes.send([(f"s:{v}", "{}") for v in range(1, 32)]) == 31
    finally:
        lanes.close(10)


def test_a_relay_lane_holds_only_its_own_sessions_while_its_send_hangs():
    import threading

    from chalicelib.pipeline.outbox import Lanes, lane_of

    release = threading.Event()

    class HangsForOne:
        def send_many(self, chunk):
            if any(eid.startswith("slow:") for eid, _ in chunk):
                release.wait(30)
            return [eid for eid, _ in chunk]

    fast = next(f"fast{n}" for n in range(100) if lane_of(f"fast{n}:1", 4) != lane_of("slow:1", 4))
    lanes = Lanes(HangsForOne(), 4)
    try:
        slow_batch = lanes.put([("slow:1", "{}")])
        assert lanes.send([(f"{fast}:1", "{}")]) == 1  # returns while the slow lane hangs
        assert not slow_batch.done.is_set()
        release.set()
        assert slow_batch.done.wait(10) and slow_batch.sent == 1
    finally:
        release.set()
        lanes.close(10)


def test_a_sweep_stopped_by_its_budget_with_a_backlog_left_is_followed_by_the_next_at_once():
    from chalicelib.pipeline.outbox import OutboxRelay, RelayRun, _Loop

    now = [0.0]

    class Backlog:
        """An outbox of 40 old entries; reading a page takes 3 s (time
        moves only there, so a sweep's budget of 5 s ends after two pages)."""

        def __init__(self):
            self.pending = [(f"s{n}:1", "{}") for n in range(40)]

        def outbox_pending(self, older_than_s, limit=500, start_bucket=0):
            now[0] += 3.0
            return list(self.pending[:limit])

        def outbox_oldest_ms(self):
            return None

    class Acking:
        def __init__(self, outbox):
            self.outbox = outbox

        def send_many(self, events):
            ids = [eid for eid, _ in events]
            self.outbox.pending = [p for p in self.outbox.pending if p[0] not in ids]
            return ids

    class Silent:
        def raw(self, timeout):
            return None

        def close(self):
            pass

    outbox = Backlog()
    relay = OutboxRelay(outbox, Acking(outbox), page=5, clock=lambda: now[0], sweep_seconds=1.0,
                        senders=2, listen=Silent)
    run = RelayRun()
    loop = _Loop(relay, run, 0.0)
    try:
        for step in range(1, 5):
            loop.step(1.0)  # no time passes between steps: only a sweep due at once runs
            assert run.sweeps == step, f"step {step}: the backlog waited a sweep interval"
        assert run.sent == 40 and outbox.pending == []
        # the last drain stopped at its budget on a full page: it could not
        # tell the outbox was empty, so one more sweep follows, finds nothing...
        loop.step(1.0)
        assert run.sweeps == 5 and run.found == 40
        loop.step(1.0)
        assert run.sweeps == 5  # ...and the next one waits its interval
    finally:
        loop.close()


def test_relay_lanes_that_hold_their_limit_are_full_until_sqs_takes_some():
    import threading

    from chalicelib.pipeline.outbox import Lanes

    release = threading.Event()

    class Hangs:
        def send_many(self, chunk):
            release.wait(30)
            return [eid for eid, _ in chunk]

    lanes = Lanes(Hangs(), 1, limit=3)
    try:
        batch = lanes.put([(f"s:{v}", "{}") for v in range(1, 4)])
        assert lanes.full(0.0)  # the relay reads no more wake-ups: Redis buffers them
        release.set()
        assert batch.done.wait(10) and batch.sent == 3
        assert not lanes.full(0.0)
    finally:
        release.set()
        lanes.close(10)
