"""The write protocol's one decoder (codec.session_from_event), on events
shaped as the scripts write them, as older scripts wrote them, and on a
shape it does not expect (decoded as a document instead)."""
from __future__ import annotations

import json

import pytest

from chalicelib.adapters.redis.codec import session_from_event
from chalicelib.domain.session import Session

STATE = '{"a":[1,{"b":"c,\\"d\\""}],"é":"ü"}'  # commas and quotes in the state only


def _event(**members: object) -> str:
    head = {"schema_version": 1, "event_id": "s-1:7", "event_type": "session_updated",
            "session_id": "s-1", "version": 7, "created_at": "2026-11-28T16:33:30.405Z",
            "occurred_at": "2026-11-28T16:34:30.405Z", "expires_at": "2026-11-28T17:34:30.405Z",
            "ttl_seconds": 3600}
    head.update(members)
    head = {k: v for k, v in head.items() if v is not None}
    return json.dumps(head, separators=(",", ":"), ensure_ascii=False)[:-1] + ',"state":' + STATE + "}"


def test_an_event_decodes_into_the_session_after_its_change_with_the_state_as_written():
    session = session_from_event(_event(owner_id="u-1:x"))

    assert session == Session("s-1", 7, STATE, "2026-11-28T16:33:30.405Z",
                              "2026-11-28T16:34:30.405Z", 3600, owner_id="u-1:x")
    assert session.state_json is not None and not session.replayed


@pytest.mark.parametrize("members", [
    {"expires_at": None},                       # written before expires_at existed
    {"expires_at": None, "owner_id": "u-2"},
    {"owner_id": "u-2"},
])
def test_events_recorded_by_older_scripts_decode_alike(members):
    session = session_from_event(_event(**members))

    assert (session.version, session.ttl_seconds, session.owner_id) == (7, 3600, members.get("owner_id"))


def test_a_deletion_and_an_expiry_are_flagged_and_a_replay_is_marked():
    deleted = session_from_event(_event(event_type="session_deleted"), replayed=True)
    expired = session_from_event(_event(event_type="session_expired"))

    assert deleted.deleted and not deleted.expired and deleted.replayed
    assert expired.expired and not expired.deleted


def test_a_head_in_another_order_is_decoded_as_a_document():
    event = ('{"session_id":"s-1","schema_version":1,"version":3,"event_type":"session_touched",'
             '"ttl_seconds":60,"created_at":"c","occurred_at":"o","event_id":"s-1:3","state":{}}')

    assert session_from_event(event) == Session("s-1", 3, "{}", "c", "o", 60)
