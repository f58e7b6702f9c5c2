"""Input validation: pure functions, no I/O.  Every rejection is a
ValidationError (400), PayloadTooLarge (413) or PreconditionRequired (428),
never another exception (which the API would answer as a 500)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chalicelib.api import headers
from chalicelib.config import Settings
from chalicelib.domain import validation
from chalicelib.domain.errors import PayloadTooLarge, PreconditionRequired, ValidationError
from chalicelib.domain.validation import MAX_DEPTH, SESSION_ID_PATTERN

LIMIT = Settings.max_state_bytes


def at(version: int) -> validation.IfMatch:
    """The If-Match a client sends for ``version`` (its ETag)."""
    return validation.IfMatch(f'"{version}"', version)


def nested(depth: int, leaf: object = 1) -> object:
    doc = leaf
    for _ in range(depth):
        doc = {"k": doc}
    return doc


# -- session ids -------------------------------------------------------------

@pytest.mark.parametrize("sid", ["a", "A-z_0.9:x", "x" * 128, "cart:42", "..", "-"])
def test_a_session_id_of_the_allowed_characters_is_accepted(sid):
    assert validation.session_id(sid) == sid


@pytest.mark.parametrize("sid", ["", "x" * 129, "a/b", "a b", "ü", "a\x00", "a%", "{x}", "a\nb"])
def test_a_session_id_outside_the_pattern_is_rejected(sid):
    with pytest.raises(ValidationError) as caught:
        validation.session_id(sid)
    assert caught.value.details == {"field": "session_id"}


def test_a_percent_encoded_path_id_is_decoded_before_the_check():
    assert validation.session_id("cart%3A42") == "cart:42"
    for encoded in ("a%2Fb", "a%00", "a%20b", "%C3%BC", "%FF"):
        with pytest.raises(ValidationError):
            validation.session_id(encoded)


@given(st.from_regex(SESSION_ID_PATTERN, fullmatch=True))
def test_every_id_the_pattern_allows_is_accepted(sid):
    assert validation.session_id(sid) == sid


# -- bodies --------------------------------------------------------------------

@pytest.mark.parametrize("raw, message", [
    (b"", "empty"),
    (None, "empty"),
    (b'{"state":', "malformed JSON"),
    (b"{'state': {}}", "malformed JSON"),
    (b'{"state":{}} trailing', "malformed JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"state"', "must be a JSON object"),
    (b"null", "must be a JSON object"),
    (b'{"state":{"x":NaN}}', "NaN is not valid JSON"),
    (b'{"state":{"x":Infinity}}', "Infinity is not valid JSON"),
    (b'{"state":{"x":-Infinity}}', "-Infinity is not valid JSON"),
    (b'{"state":{"x":' + b"9" * 5000 + b"}}", "too many digits"),
    (b'{"state":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper"),
])
def test_a_body_that_is_not_a_json_object_is_a_validation_error(raw, message):
    with pytest.raises(ValidationError) as caught:
        validation.parse_body(raw, LIMIT)
    assert type(caught.value) is ValidationError
    assert message in caught.value.message


def test_a_body_far_over_the_limit_is_refused_before_parsing():
    with pytest.raises(PayloadTooLarge):
        validation.parse_body(b" " * (1024 * 6 + 4097), 1024)


# -- state documents -----------------------------------------------------------

@pytest.mark.parametrize("state", [[], "x", 1, 1.5, None, True])
def test_a_state_that_is_not_an_object_is_rejected(state):
    with pytest.raises(ValidationError, match="state must be a JSON object"):
        validation.check_state(state, LIMIT)


@pytest.mark.parametrize("state", [
    {"a": "x\x00y"},
    {"a\x00": 1},
    {"a": ["ok", {"b": "\x00"}]},
    {"a": {"b": {"\x00": None}}},
])
def test_a_nul_character_anywhere_in_the_state_is_rejected(state):
    with pytest.raises(ValidationError, match="u0000"):
        validation.check_state(state, LIMIT)


def test_a_state_nested_to_the_depth_limit_is_accepted_and_one_deeper_is_not():
    validation.check_state(nested(MAX_DEPTH - 1), LIMIT)
    with pytest.raises(ValidationError, match="nested deeper"):
        validation.check_state(nested(MAX_DEPTH), LIMIT)
    with pytest.raises(ValidationError, match="nested deeper"):
        validation.check_state({"k": [[[[[[[[nested(MAX_DEPTH)]]]]]]]]}, LIMIT)


def test_a_number_that_overflows_to_infinity_is_rejected():
    # 1e999 is valid JSON; Python reads it as inf and would write "Infinity"
    body = validation.parse_body(b'{"state":{"x":1e999}}', LIMIT)
    with pytest.raises(ValidationError, match="out of range"):
        validation.check_state(body["state"], LIMIT)


@pytest.mark.parametrize("raw", [rb'{"state":{"x":"\ud800"}}', rb'{"state":{"\udfff":1}}',
                                 rb'{"state":{"x":["a\udc00b"]}}'])
def test_an_unpaired_surrogate_escape_is_rejected(raw):
    body = validation.parse_body(raw, LIMIT)
    with pytest.raises(ValidationError, match="surrogate"):
        validation.check_state(body["state"], LIMIT)


def test_a_surrogate_pair_is_one_character_and_accepted():
    body = validation.parse_body(rb'{"state":{"smile":"\ud83d\ude00"}}', LIMIT)
    assert validation.check_state(body["state"], LIMIT) == '{"smile":"\U0001f600"}'


def test_the_state_limit_counts_utf8_bytes_of_the_compact_encoding():
    overhead = len('{"s":""}')
    at_limit = {"s": "é" * ((1000 - overhead) // 2)}  # 2 bytes each
    assert len(validation.check_state(at_limit, 1000).encode()) == 1000
    with pytest.raises(PayloadTooLarge) as caught:
        validation.check_state({"s": "é" * ((1000 - overhead) // 2) + "x"}, 1000)
    assert caught.value.details["size"] == 1001 and caught.value.details["limit"] == 1000


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=30)


@given(st.dictionaries(st.text(), json_values, max_size=5))
def test_check_state_accepts_and_round_trips_or_rejects_with_a_validation_error(state):
    try:
        encoded = validation.check_state(state, LIMIT)
    except ValidationError as exc:  # NUL characters and surrogates only
        assert "u0000" in exc.message or "surrogate" in exc.message
    else:
        assert json.loads(encoded) == state


# -- versions and preconditions ------------------------------------------------

@pytest.mark.parametrize("value", [True, False, 1.5, 0.0, "1", None, [1], 0, -1, 2 ** 63,
                                   float(2 ** 53 + 2)])
def test_a_version_must_be_a_positive_64_bit_integer(value):
    with pytest.raises(ValidationError):
        validation.version(value, "expected_version")


@pytest.mark.parametrize(("value", "expected"), [(1.0, 1), (3e2, 300), (float(2 ** 53), 2 ** 53)])
def test_a_whole_number_written_as_a_float_is_the_version_it_spells(value, expected):
    # JSON Schema's "integer" is any whole number: 1.0 is one (a schema-valid
    # request), and a float spells an integer exactly only up to 2**53
    assert validation.version(value, "expected_version") == expected
    assert type(validation.version(value, "expected_version")) is int


def test_a_whole_float_ttl_and_expected_version_are_accepted_in_requests():
    request = validation.create_request(b'{"state":{},"ttl_seconds":3600.0}', LIMIT)
    assert request.ttl_seconds == 3600 and type(request.ttl_seconds) is int
    update = validation.update_request("a", b'{"state":{},"expected_version":4.0}', at(4), LIMIT)
    assert update.expected_version == 4


def test_the_largest_64_bit_version_is_accepted():
    assert validation.version(2 ** 63 - 1, "v") == 2 ** 63 - 1


@pytest.mark.parametrize("value", [True, "60", 0, 30 * 24 * 3600 + 1, 1.5, 0.0, float(2 ** 60)])
def test_ttl_seconds_must_be_an_integer_within_bounds(value):
    with pytest.raises(ValidationError):
        validation.ttl_seconds(value)


# -- whole requests ------------------------------------------------------------

def test_a_create_request_without_an_id_gets_a_generated_one():
    request = validation.create_request(b'{"state":{"a":1}}', LIMIT)
    assert validation.session_id(request.session_id) == request.session_id
    assert request.state_json == '{"a":1}' and request.ttl_seconds is None


@pytest.mark.parametrize("raw, message", [
    (b'{"state":{},"extra":1}', "unknown field(s): extra"),
    (b'{"session_id":"a"}', "state is required"),
    (b'{"session_id":5,"state":{}}', "session_id must be a string"),
    (b'{"session_id":"a/b","state":{}}', "session id must match"),
    (b'{"state":{},"ttl_seconds":"60"}', "ttl_seconds must be an integer"),
])
def test_a_bad_create_request_says_what_to_fix(raw, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validation.create_request(raw, LIMIT)


def test_an_update_without_a_precondition_is_refused_with_428():
    with pytest.raises(PreconditionRequired) as caught:
        validation.update_request("a", b'{"state":{}}', None, LIMIT)
    assert caught.value.status == 428


def test_an_update_takes_its_version_from_the_body_or_if_match_and_they_must_agree():
    assert validation.update_request("a", b'{"state":{},"expected_version":4}', None, LIMIT) \
        .expected_version == 4
    assert validation.update_request("a", b'{"state":{}}', at(5), LIMIT).expected_version == 5
    assert validation.update_request("a", b'{"state":{},"expected_version":6}', at(6), LIMIT) \
        .expected_version == 6
    with pytest.raises(ValidationError, match="disagree"):
        validation.update_request("a", b'{"state":{},"expected_version":6}', at(7), LIMIT)


@pytest.mark.parametrize("raw", ["0", "501", "abc", "-1", "\u00b2", "9" * 30, ""])
def test_a_page_limit_outside_1_to_500_is_rejected(raw):
    with pytest.raises(ValidationError):
        validation.page_limit(raw)


def test_page_limit_and_before_version_parse_plain_integers():
    assert validation.page_limit(None) == 50 and validation.page_limit("500") == 500
    assert validation.version_param(None, "before_version") is None
    assert validation.version_param("7", "before_version") == 7
    for raw in ("0", "x", "\u00b2", "9" * 5000):
        with pytest.raises(ValidationError):
            validation.version_param(raw, "before_version")


def test_a_body_session_id_is_taken_as_written_not_percent_decoded():
    with pytest.raises(ValidationError, match="session id must match"):
        validation.create_request(b'{"session_id":"cart%3A42","state":{}}', LIMIT)
    assert validation.create_request(b'{"session_id":"cart:42","state":{}}', LIMIT).session_id == "cart:42"


def test_a_put_with_if_none_match_star_is_a_create_of_its_path_id():
    put = validation.put_request("cart-1", b'{"state":{"a":1}}', if_match=None,
                                 if_none_match=headers.if_none_match("*"), max_state_bytes=LIMIT)
    assert put == validation.CreateRequest("cart-1", '{"a":1}', None)


@pytest.mark.parametrize(("if_match", "if_none_match", "raw", "message"), [
    (None, '"1"', b'{"state":{}}', "takes only"),
    ('"1"', "*", b'{"state":{}}', "not both"),
    (None, "*", b'{"state":{},"expected_version":1}', "creates one"),
    ("*", None, b'{"state":{},"expected_version":1}', "leave expected_version out"),
])
def test_a_put_with_contradicting_preconditions_says_what_to_fix(if_match, if_none_match, raw, message):
    with pytest.raises(ValidationError, match=message):
        validation.put_request("a", raw, if_match=headers.if_match(if_match),
                               if_none_match=headers.if_none_match(if_none_match), max_state_bytes=LIMIT)

