"""The pure parts of a session's lifetime: ``expires_at`` arithmetic, the
touch and PUT inputs, the optional event field, the settings."""
from __future__ import annotations

import json

import pytest

from chalicelib.api import headers
from chalicelib.config import load_settings
from chalicelib.domain import validation
from chalicelib.domain.errors import ConfigurationError, MalformedMessage, SessionExpired, ValidationError
from chalicelib.domain.events import parse_event
from chalicelib.domain.session import Session, iso_plus_seconds, iso_to_ms
from tests.support.pipeline import event_body

LIMIT = 256 * 1024


def at(version: int) -> validation.IfMatch:
    """The If-Match a client sends for ``version`` (its ETag)."""
    return validation.IfMatch(f'"{version}"', version)


@pytest.mark.parametrize("start, seconds, end", [
    ("2026-11-28T16:33:30.405Z", 3600, "2026-11-28T17:33:30.405Z"),
    ("2026-12-31T23:59:59.999Z", 1, "2027-01-01T00:00:00.999Z"),
    ("2028-02-28T12:00:00.000Z", 86400, "2028-02-29T12:00:00.000Z"),  # a leap year
    ("2100-02-28T12:00:00.000Z", 86400, "2100-03-01T12:00:00.000Z"),  # not one
    ("2026-11-28T16:33:30.000Z", 30 * 24 * 3600, "2026-12-28T16:33:30.000Z"),
])
def test_expires_at_is_the_time_plus_whole_seconds_to_the_millisecond(start, seconds, end):
    assert iso_plus_seconds(start, seconds) == end
    assert iso_to_ms(end) - iso_to_ms(start) == seconds * 1000


def test_a_session_s_lifetime_ends_at_its_last_write_plus_its_ttl():
    session = Session("s", 3, "{}", "2026-11-28T16:00:00.000Z", "2026-11-28T16:33:30.405Z", 60)
    end = iso_to_ms("2026-11-28T16:34:30.405Z") / 1000

    assert session.expires_at == "2026-11-28T16:34:30.405Z"
    assert json.loads(session.to_json())["expires_at"] == session.expires_at
    assert not session.expired_at(end - 0.001) and session.expired_at(end)


def test_session_expired_is_a_404_session_not_found_with_a_code_of_its_own():
    error = SessionExpired("s", expires_at="2026-11-28T16:34:30.405Z")
    assert (error.status, error.code, error.deleted) == (404, "SessionExpired", False)
    assert error.to_dict()["details"] == {"session_id": "s", "deleted": False,
                                          "expires_at": "2026-11-28T16:34:30.405Z"}


def test_a_put_may_carry_a_new_ttl_validated_as_on_create():
    put = validation.update_request("a", b'{"state":{},"ttl_seconds":120.0}', at(1), LIMIT)
    assert put.ttl_seconds == 120 and type(put.ttl_seconds) is int
    assert validation.update_request("a", b'{"state":{}}', at(1), LIMIT).ttl_seconds is None
    for bad in (b"0", b"2592001", b'"60"', b"true", b"1.5"):
        with pytest.raises(ValidationError) as caught:
            validation.update_request("a", b'{"state":{},"ttl_seconds":' + bad + b"}", at(1), LIMIT)
        assert caught.value.details["field"] == "ttl_seconds"


@pytest.mark.parametrize("raw, header, ttl, version", [
    (None, None, None, None), (b"", None, None, None), (b"  ", '"2"', None, 2),
    (b"{}", "*", None, None), (b'{"ttl_seconds":60}', None, 60, None),
    (b'{"ttl_seconds":null}', '"7"', None, 7),
])
def test_a_touch_takes_an_optional_ttl_and_an_optional_if_match(raw, header, ttl, version):
    touch = validation.touch_request("cart-1", raw, headers.if_match(header))
    assert (touch.session_id, touch.ttl_seconds) == ("cart-1", ttl)
    assert (touch.if_match.version if touch.if_match else None) == version


@pytest.mark.parametrize("raw, header", [
    (b'{"ttl_seconds":0}', None), (b'{"state":{}}', None), (b"[]", None), (b"{x", None),
    (None, 'W/"1"'), (None, "one"), (b"{" + b" " * 20_000 + b"}", None),
])
def test_a_touch_with_bad_input_is_refused(raw, header):
    with pytest.raises(ValidationError):
        validation.touch_request("cart-1", raw, headers.if_match(header))


def test_an_event_may_carry_expires_at_and_one_without_it_still_parses():
    with_it = {**json.loads(event_body("s", 2)), "expires_at": "2026-11-28T17:33:31.000Z"}
    assert parse_event(json.dumps(with_it)).expires_at == "2026-11-28T17:33:31.000Z"
    assert parse_event(event_body("s", 2)).expires_at is None
    expired = parse_event(json.dumps({**json.loads(event_body("s", 3)), "event_type": "session_expired",
                                      "state": None}))
    assert expired.expired and expired.state_json is None and not expired.deleted
    with pytest.raises(MalformedMessage) as caught:
        parse_event(json.dumps({**with_it, "expires_at": 3600}))
    assert caught.value.details["reason"] == "wrong_type"


def test_slide_on_read_is_off_by_default_and_the_sweep_grace_is_bounded():
    assert load_settings({}).slide_on_read is False
    assert load_settings({"SESSION_SLIDE_ON_READ": "true"}).slide_on_read is True
    assert load_settings({}).expiry_grace == 60.0
    assert load_settings({"SESSION_EXPIRY_GRACE_SECONDS": "0"}).expiry_grace == 0.0
    for env in ({"SESSION_SLIDE_ON_READ": "sometimes"}, {"SESSION_EXPIRY_GRACE_SECONDS": "-1"}):
        with pytest.raises(ConfigurationError) as caught:
            load_settings(env)
        assert caught.value.setting == next(iter(env))


class _Laps:
    """The sweep's store and PostgreSQL, as far as its walk goes: every
    candidate is skipped (``alive``), as sessions kept alive by reads are."""

    def __init__(self, ids):
        self.ids = sorted(ids)
        self.position = ""
        self.seen: list[str] = []

    clock = staticmethod(lambda: 1_800_000_000.0)

    def expiry_candidates(self, cutoff, *, after="", limit=100):
        return [Session(i, 1, "{}", "2026-11-28T16:00:00.000Z", "2026-11-28T16:00:00.000Z", 1)
                for i in self.ids if i > after][:limit]

    def sweep_position(self):
        return self.position

    def set_sweep_position(self, after):
        self.position = after

    def settle(self, session_id, seconds, *, unrecorded_settled=False):
        return 0.0, False

    def expire(self, session_id, persisted, *, marker_absent_ok=False):
        self.seen.append(session_id)
        return "alive", None


def test_the_sweep_goes_on_where_its_last_run_stopped_and_round_to_the_first_id():
    from chalicelib.pipeline.expiry import ExpirySweep
    laps = _Laps([f"s{n:02d}" for n in range(7)])
    sweep = ExpirySweep(laps, laps, settle_seconds=0, grace_seconds=0, batch=2)

    cut = [sweep.run(budget_seconds=0) for _ in range(3)]  # one batch a run
    assert laps.seen == ["s00", "s01", "s02", "s03", "s04", "s05"]
    assert not any(r.complete for r in cut) and laps.position == "s05"

    laps.seen.clear()
    whole = sweep.run(budget_seconds=60)  # from s05 on, then round: each id once
    assert laps.seen == ["s06", "s00", "s01", "s02", "s03", "s04", "s05"]
    assert whole.complete and whole.candidates == 7 and laps.position == ""

    laps.seen.clear()
    laps.position = "s03"
    counted = sweep.run(budget_seconds=60, dry_run=True)  # counts all, moves nothing
    assert counted.candidates == 7 and laps.seen == [] and laps.position == "s03"
