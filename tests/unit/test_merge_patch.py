"""JSON Merge Patch (RFC 7396): the pure algorithm, and the checks a PATCH
request and its merged state go through before anything is written."""
from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.api import headers
from chalicelib.domain import merge_patch, validation
from chalicelib.domain.errors import PayloadTooLarge, UnsupportedMediaType, ValidationError
from chalicelib.domain.validation import MAX_DEPTH

# RFC 7396 Appendix A, every row: original, patch, result (as JSON text)
APPENDIX_A = [
    ('{"a":"b"}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"b"}', '{"b":"c"}', '{"a":"b","b":"c"}'),
    ('{"a":"b"}', '{"a":null}', '{}'),
    ('{"a":"b","b":"c"}', '{"a":null}', '{"b":"c"}'),
    ('{"a":["b"]}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"c"}', '{"a":["b"]}', '{"a":["b"]}'),
    ('{"a":{"b":"c"}}', '{"a":{"b":"d","c":null}}', '{"a":{"b":"d"}}'),
    ('{"a":[{"b":"c"}]}', '{"a":[1]}', '{"a":[1]}'),
    ('["a","b"]', '["c","d"]', '["c","d"]'),
    ('{"a":"b"}', '["c"]', '["c"]'),
    ('{"a":"foo"}', 'null', 'null'),
    ('{"a":"foo"}', '"bar"', '"bar"'),
    ('{"e":null}', '{"a":1}', '{"e":null,"a":1}'),
    ('[1,2]', '{"a":"b","c":null}', '{"a":"b"}'),
    ('{}', '{"a":{"bb":{"ccc":null}}}', '{"a":{"bb":{}}}'),
]


@pytest.mark.parametrize("original, patch, result", APPENDIX_A)
def test_every_example_of_the_rfc_appendix_gives_its_result(original, patch, result):
    assert merge_patch.apply(json.loads(original), json.loads(patch)) == json.loads(result)


def test_the_rfc_section_3_example_merges_removes_and_replaces():
    target = {"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
              "tags": ["example", "sample"], "content": "This will be unchanged"}
    patch = {"title": "Hello!", "phoneNumber": "+01-123-456-7890",
             "author": {"familyName": None}, "tags": ["example"]}
    assert merge_patch.apply(target, patch) == {
        "title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
        "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"}


def test_the_target_keeps_its_member_order_and_new_members_follow():
    merged = merge_patch.apply({"z": 1, "a": 2, "m": 3}, {"a": 20, "b": 4, "m": None})
    assert json.dumps(merged) == '{"z": 1, "a": 20, "b": 4}'


def test_neither_argument_is_modified():
    target = {"a": {"b": [1, 2], "c": 1}, "d": None}
    patch = {"a": {"b": [3], "c": None}, "e": {"f": None}}
    before = copy.deepcopy((target, patch))
    merge_patch.apply(target, patch)
    assert (target, patch) == before


def test_nulls_inside_an_array_are_values_not_removals():
    assert merge_patch.apply({"a": 1}, {"a": [None, {"b": None}]}) == {"a": [None, {"b": None}]}


def test_numbers_keep_their_exact_value_and_type():
    # what Redis's cjson would have lost (14 significant digits, 3.0 as 3):
    # the merge runs in Python for this (docs/decisions/merge-patch.md)
    merged = merge_patch.apply({"big": 12345678901234567890, "f": 3.0}, {"g": 0.1})
    assert json.dumps(merged) == '{"big": 12345678901234567890, "f": 3.0, "g": 0.1}'


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda children: (st.lists(children, max_size=3)
                      | st.dictionaries(st.text(max_size=2), children, max_size=3)),
    max_leaves=12)


@given(JSON_VALUES, JSON_VALUES)
def test_applying_a_patch_twice_changes_nothing_more(target, patch):
    once = merge_patch.apply(target, patch)
    assert merge_patch.apply(once, patch) == once


@given(st.dictionaries(st.text(max_size=2), JSON_VALUES, max_size=4),
       st.dictionaries(st.text(max_size=2), JSON_VALUES, max_size=4))
def test_a_patch_of_non_null_members_leaves_the_others_as_they_were(target, patch):
    merged = merge_patch.apply(target, patch)
    for name, value in target.items():
        if name not in patch:
            assert merged[name] == value
    for name, value in patch.items():
        assert (name in merged) == (value is not None)


# -- the PATCH request ----------------------------------------------------------

LIMIT = 1000
MEDIA = "application/merge-patch+json"


def request(raw: str | bytes, content_type: str | None = MEDIA, if_match: str | None = None):
    data = raw.encode() if isinstance(raw, str) else raw
    headers.require_merge_patch(content_type)
    return validation.patch_request("s1", data, if_match=headers.if_match(if_match), max_state_bytes=LIMIT)


@pytest.mark.parametrize("content_type", [
    MEDIA, "Application/Merge-Patch+JSON", "application/merge-patch+json; charset=utf-8",
    'application/merge-patch+json;charset="UTF-8"'])
def test_the_merge_patch_media_type_is_accepted_with_a_utf8_charset_or_none(content_type):
    assert request('{"state":{"a":1}}', content_type).state_patch == {"a": 1}


@pytest.mark.parametrize("content_type", [
    None, "application/json", "application/json-patch+json", "*/*", "text/plain",
    "application/merge-patch+json; charset=latin-1", "application/merge-patch+json, text/plain",
    "application/merge-patch+jsonx"])
def test_any_other_content_type_is_a_415_naming_the_accepted_one(content_type):
    with pytest.raises(UnsupportedMediaType) as caught:
        request('{"state":{}}', content_type)
    assert MEDIA in caught.value.message and caught.value.details["accepted"] == [MEDIA]


def test_a_patch_without_if_match_applies_to_the_current_version_and_one_with_it_to_that_one():
    assert request('{"state":{}}').if_match is None
    assert request('{"state":{}}', if_match='"3"').if_match.version == 3
    assert request('{"state":{}}', if_match="*").if_match.version is None


@pytest.mark.parametrize("raw, field", [
    ('{"version":3}', ["version"]), ('{"session_id":"s1","state":{}}', ["session_id"]),
    ('{"created_at":"x","updated_at":"y"}', ["created_at", "updated_at"]),
    ('{"expires_at":"x","owner_id":"o"}', ["expires_at", "owner_id"])])
def test_a_member_the_server_sets_is_refused_by_name(raw, field):
    with pytest.raises(ValidationError) as caught:
        request(raw)
    assert caught.value.details == {"fields": field} and "cannot be changed" in caught.value.message


@pytest.mark.parametrize("raw, says", [
    ('{"colour":"red"}', "unknown field"), ('{"state":null}', "cannot be removed"),
    ('{"state":[1]}', "must be a JSON object"), ('{"state":"x"}', "must be a JSON object"),
    ('["state"]', "JSON object"), ('null', "JSON object"), ('{"state":', "malformed JSON"),
    ('{"state":{"a":"\\u0000"}}', "\\u0000"), ('{"state":{"a":"\\ud800"}}', "surrogate"),
    ('{"state":{"a":1e999}}', "out of range"), (b'{"state":{"a":"\xff"}}', "UTF-8"), ("", "empty")])
def test_a_malformed_patch_is_a_400_that_says_why(raw, says):
    with pytest.raises(ValidationError) as caught:
        request(raw)
    assert type(caught.value) is ValidationError and says in caught.value.message


def test_a_patch_nested_deeper_than_the_limit_is_refused():
    deep: object = 1
    for _ in range(MAX_DEPTH):
        deep = {"k": deep}
    with pytest.raises(ValidationError, match="nested deeper"):
        request(json.dumps({"state": deep}))


def test_a_patch_over_the_state_limit_is_a_413():
    with pytest.raises(PayloadTooLarge):
        request(json.dumps({"state": {"a": "x" * LIMIT}}))


def test_a_patch_of_no_member_is_a_patch_that_changes_nothing():
    assert request("{}").state_patch is None
    assert validation.merged_state({"a": 1}, None, LIMIT) == '{"a":1}'


def test_the_merged_state_is_held_to_the_state_limit():
    current = {"a": "x" * (LIMIT // 2)}
    with pytest.raises(PayloadTooLarge):
        validation.merged_state(current, {"b": "y" * (LIMIT // 2)}, LIMIT)
    assert validation.merged_state(current, {"a": None, "b": "y"}, LIMIT) == '{"b":"y"}'


def test_the_merged_state_is_compact_json_in_the_stored_form():
    assert validation.merged_state({"é": 1}, {"n": "\ufffe"}, LIMIT) == '{"é":1,"n":"\\ufffe"}'


def test_a_patch_may_set_ttl_seconds_but_never_remove_it():
    assert request('{"ttl_seconds":600}').ttl_seconds == 600
    assert request('{"state":{}}').ttl_seconds is None
    with pytest.raises(ValidationError) as caught:
        request('{"ttl_seconds":null}')
    assert "cannot be removed" in caught.value.message
    with pytest.raises(ValidationError):
        request('{"ttl_seconds":0}')
