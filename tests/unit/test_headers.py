"""The HTTP header grammar of the session routes (chalicelib/api/headers.py):
If-Match, If-None-Match and Cache-Control's max-stale, parsed into the
domain's values; a malformed conditional header is a 400, a malformed
max-stale is ignored."""
from __future__ import annotations

import pytest

from chalicelib.api import headers
from chalicelib.api.request import Request
from chalicelib.domain import validation
from chalicelib.domain.errors import UnsupportedMediaType, ValidationError
from chalicelib.domain.idempotency import Idempotency, fingerprint


@pytest.mark.parametrize("header, expected", [(None, None), ('"3"', 3), ("3", 3), (' "12" ', 12),
                                              ('\t"7" \t', 7)])
def test_if_match_takes_a_version_or_its_etag(header, expected):
    parsed = headers.if_match(header)
    assert (parsed and parsed.version) == expected


def test_if_match_star_is_any_version():
    assert headers.if_match(" * ") == validation.IfMatch("*", None)


def test_a_weak_if_match_is_refused_with_a_message_that_says_why():
    with pytest.raises(ValidationError, match=r'strong ETags only: send "3", not W/"3"'):
        headers.if_match('W/"3"')


@pytest.mark.parametrize("header", ['W/"3"', "**", '"*"', '"abc"', '"0"', '"-1"', '"1", "2"', "\u00b2",
                                    "\u0663", "9" * 20, "9" * 5000, "", "\u00a03", '"3"\x85', "\x1c3"])
def test_a_malformed_if_match_is_a_validation_error(header):
    with pytest.raises(ValidationError) as caught:
        headers.if_match(header)
    assert type(caught.value) is ValidationError


@pytest.mark.parametrize("header", ['"1', '1"', '""1""', "01", '"0"', "1" * 19, '"1", "2"'])
def test_an_if_match_outside_the_documented_pattern_is_refused(header):
    with pytest.raises(ValidationError):
        headers.if_match(header)


@pytest.mark.parametrize(("header", "expected"), [('"3"', 3), ("3", 3), (' "12" ', 12)])
def test_an_if_match_in_either_documented_form_gives_its_version(header, expected):
    assert headers.if_match(header) == validation.IfMatch(header.strip(), expected)


@pytest.mark.parametrize(("header", "version", "matches"), [
    ("*", 1, True), ('"3"', 3, True), ('W/"3"', 3, True), ('"1", W/"3"', 3, True),
    ('"30"', 3, False), ('"abc"', 3, False), ('W/"4"', 3, False),
])
def test_if_none_match_compares_entity_tags_weakly(header, version, matches):
    parsed = headers.if_none_match(header)
    assert parsed is not None and parsed.matches(version) is matches


@pytest.mark.parametrize("header", ["", "3", '"3', "W/3", '"3";"4"', '"3",', "**", '"a b"'])
def test_a_malformed_if_none_match_is_a_validation_error(header):
    with pytest.raises(ValidationError, match="If-None-Match"):
        headers.if_none_match(header)


@pytest.mark.parametrize(("header", "expected"), [
    (None, None),
    ("no-cache", None),
    ("max-stale", validation.MaxStale(None)),
    ("MAX-STALE", validation.MaxStale(None)),
    ("max-stale=30", validation.MaxStale(30)),
    ('max-stale="30"', validation.MaxStale(30)),
    ("no-cache, max-stale=0", validation.MaxStale(0)),
    (' foo="a,b" ,, max-stale = 5', None),  # spaces around "=": not a directive
    (' foo="a,b" ,, max-stale=5 ', validation.MaxStale(5)),
    ("max-stale=99999999999999999999", validation.MaxStale(2 ** 31)),
    ("max-stale=5, max-stale", validation.MaxStale(5)),  # the first counts
    # a malformed max-stale is ignored, never a 400
    ("max-stale=abc", None),
    ("max-stale=-1", None),
    ("max-stale=1.5", None),
    ('max-stale="5', None),
    ('x="open, max-stale', None),
])
def test_cache_control_max_stale_is_parsed_and_a_malformed_one_is_ignored(header, expected):
    assert headers.max_stale(header) == expected


# --- the request reader (chalicelib/api/request.py) -------------------------------

class Headers(dict):
    """Chalice's case-insensitive headers, as far as the reader uses them."""

    def get(self, name, default=None):
        return super().get(name.lower(), default)


class ChaliceRequest:
    """What the reader takes from Chalice's ``app.current_request``."""

    def __init__(self, method: str, body: bytes, **sent: str) -> None:
        self.method, self.raw_body, self.context = method, body, {}
        self.headers = Headers({name.replace("_", "-"): value for name, value in sent.items()})


def reader(method: str, body: bytes = b"", **sent: str) -> Request:
    return Request(ChaliceRequest(method, body, **sent))


def test_a_keyed_write_s_fingerprint_covers_the_conditions_the_route_honours_as_sent():
    body = b'{"state":{"a":1}}'
    put = reader("PUT", body, idempotency_key='"k-1"', if_match=' "3"\t', if_none_match='W/"9"')
    keyed = put.idempotency("/sessions/s", put.if_match)
    # the names and the trimmed text are those recorded with writes before
    # this reader existed: a retry across a deploy finds its record
    assert keyed == Idempotency("k-1", fingerprint("PUT", "/sessions/s", body, if_match='"3"'))
    both = put.idempotency("/sessions/s", put.if_match, put.if_none_match)
    assert both is not None and both.fingerprint == fingerprint(
        "PUT", "/sessions/s", body, if_match=' "3"\t', if_none_match='W/"9"')
    assert reader("PUT", body, if_match='"3"').idempotency("/sessions/s") is None


def test_a_header_is_parsed_only_when_a_route_asks_for_it():
    request = reader("PATCH", b"{}", if_none_match="not an etag", cache_control='max-stale="',
                     content_type="application/merge-patch+json", if_match='"2"')
    assert request.merge_patch() == b"{}" and request.if_match == validation.IfMatch('"2"', 2)
    assert request.max_stale is None  # a malformed max-stale is ignored, never a 400
    with pytest.raises(ValidationError, match="If-None-Match"):
        _ = request.if_none_match
    with pytest.raises(UnsupportedMediaType):
        reader("PATCH", b"{}", content_type="application/json").merge_patch()
