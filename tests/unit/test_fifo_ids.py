"""SESSION_QUEUE_FIFO: the ids a FIFO message carries, and the settings
that must agree with it.  Pure: no queue is touched (the LocalStack side is
tests/integration/pipeline/test_fifo_queue.py)."""
from __future__ import annotations

import re

import pytest

from chalicelib.adapters.aws import FIFO_ID_LIMIT, deduplication_id, fifo_fields, session_of
from chalicelib.config import load_settings, trigger_queue_name
from chalicelib.domain.errors import ConfigurationError
from sessionsync.provisioning import dlq_name_for

# what SQS accepts in MessageGroupId and MessageDeduplicationId
SQS_FIFO_ID = re.compile(r"[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}")


def test_a_short_event_id_is_its_own_deduplication_id_and_its_session_is_the_group():
    assert fifo_fields("cart-42:7") == {"MessageGroupId": "cart-42",
                                        "MessageDeduplicationId": "cart-42:7"}


def test_a_session_id_with_colons_keeps_them_in_its_group():
    assert session_of("tenant:a:user:1:12") == "tenant:a:user:1"


def test_an_event_id_longer_than_sqs_allows_is_hashed_to_the_same_id_every_time():
    session = "s" * 128  # the longest session id validation accepts
    event_id = f"{session}:123456789"
    assert len(event_id) > FIFO_ID_LIMIT
    first = deduplication_id(event_id)
    assert first == deduplication_id(event_id)
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    assert SQS_FIFO_ID.fullmatch(first)
    # another version of the same session gets another id
    assert deduplication_id(f"{session}:123456790") != first
    # the group is the session itself: 128 characters fit
    assert fifo_fields(event_id)["MessageGroupId"] == session


def test_an_event_id_of_exactly_128_characters_is_kept_as_it_is():
    event_id = "a" * 126 + ":1"
    assert deduplication_id(event_id) == event_id


@pytest.mark.parametrize("setting", ["SESSION_QUEUE_NAME", "SESSION_DLQ_NAME",
                                     "SESSION_QUEUE_URL", "SESSION_DLQ_URL"])
def test_fifo_on_refuses_a_queue_name_without_the_fifo_suffix_naming_the_setting(setting):
    value = "http://localhost:4566/000000000000/events" if setting.endswith("URL") else "events"
    with pytest.raises(ConfigurationError, match=r"\.fifo") as caught:
        load_settings({"SESSION_QUEUE_FIFO": "true", setting: value})
    assert caught.value.setting == setting


def test_fifo_off_refuses_a_fifo_queue_name_naming_the_setting():
    with pytest.raises(ConfigurationError, match="SESSION_QUEUE_FIFO=true") as caught:
        load_settings({"SESSION_QUEUE_NAME": "events.fifo"})
    assert caught.value.setting == "SESSION_QUEUE_NAME"


def test_a_malformed_fifo_switch_names_the_setting():
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"SESSION_QUEUE_FIFO": "sometimes"})
    assert caught.value.setting == "SESSION_QUEUE_FIFO"


def test_fifo_settings_load_into_the_frozen_settings_and_name_the_default_queue():
    settings = load_settings({"SESSION_QUEUE_FIFO": "true", "SESSION_QUEUE_NAME": "events.fifo",
                              "SESSION_DLQ_NAME": "events-dlq.fifo"})
    assert settings.queue_fifo is True
    assert load_settings({}).queue_fifo is False
    assert trigger_queue_name({"SESSION_QUEUE_FIFO": "true"}) == "sessionsync-events.fifo"
    assert trigger_queue_name({}) == "sessionsync-events"


def test_a_fifo_queue_s_dlq_name_keeps_the_suffix_last():
    assert dlq_name_for("events.fifo") == "events-dlq.fifo"
    assert dlq_name_for("events") == "events-dlq"
