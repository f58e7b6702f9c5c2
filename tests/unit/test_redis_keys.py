"""The key layout's facts the Lua scripts and the marker migration rely on
without asking keys.py: one hash slot per session, the marker's two forms
named from the script's KEYS (scripts/lib.lua), and a SCAN pattern that
finds the previous release's marker keys and nothing else."""
from __future__ import annotations

from fnmatch import fnmatchcase

import pytest
from redis.crc import key_slot

from chalicelib.adapters.redis.keys import (
    BUCKETS,
    LEGACY_MARKER_KEY_PATTERN,
    bucket_marker_key,
    bucket_of,
    bucket_tag,
    epoch_key,
    hold_key,
    idempotency_key,
    marker_key,
    session_keys,
)
from sessionsync import marker_migration

IDS = ["s-1", "acme/x:m:y", "a" * 200, "x:m:", "é-ü", "{0001}"[1:-1] + "-z"]


@pytest.mark.parametrize("sid", IDS)
def test_every_key_of_a_session_shares_its_bucket_s_hash_slot(sid):
    keys = [*session_keys(sid), marker_key(sid), epoch_key(sid), hold_key(sid),
            idempotency_key(sid, "k")]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert session_keys(sid)[1] == bucket_marker_key(bucket_of(sid)) == bucket_tag(bucket_of(sid)) + ":m"


@pytest.mark.parametrize("sid", IDS)
def test_the_scripts_name_the_marker_s_field_and_key_from_their_keys_as_keys_py_does(sid):
    # lib.lua's marker_names: the id is KEYS[1] after its 12 characters,
    # the key form is KEYS[2] .. ':' .. id
    session, markers = session_keys(sid)[:2]
    assert session[12:] == sid
    assert markers + ":" + session[12:] == marker_key(sid)


def test_the_session_key_prefix_is_twelve_characters_in_every_bucket():
    assert {len(bucket_tag(b) + ":s:") for b in range(BUCKETS)} == {12}
    assert {len(bucket_marker_key(b)) for b in range(BUCKETS)} == {marker_migration._HASH_CHARS}


@pytest.mark.parametrize("sid", IDS)
def test_the_migration_s_pattern_finds_marker_keys_and_no_other_key(sid):
    assert fnmatchcase(marker_key(sid), LEGACY_MARKER_KEY_PATTERN)
    others = [*session_keys(sid), epoch_key(sid), hold_key(sid), idempotency_key(sid, ":m:k")]
    assert not [k for k in others if fnmatchcase(k, LEGACY_MARKER_KEY_PATTERN)]
    # the bucket's marker hash is what the migration moves a key into
    assert marker_key(sid)[:marker_migration._HASH_CHARS] == session_keys(sid)[1]
