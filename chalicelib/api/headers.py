"""HTTP header grammar: the request headers sessionsync honours, parsed into
the domain's values.

Conditional requests (If-Match, If-None-Match; RFC 9110 section 13),
``Cache-Control: max-stale`` (RFC 9111), the merge patch media type
(RFC 7396) and ``Idempotency-Key`` (a Structured Field string, RFC 8941).
docs/openapi.yaml states the same patterns; tests/functional/test_openapi.py
holds the two together.  Pure: a malformed header raises ValidationError
(400) or UnsupportedMediaType (415).
"""
from __future__ import annotations

import re

from chalicelib.domain.errors import UnsupportedMediaType, ValidationError
from chalicelib.domain.validation import IfMatch, IfNoneMatch, MaxStale, version

IF_MATCH = "If-Match"
IF_NONE_MATCH = "If-None-Match"
CACHE_CONTROL = "Cache-Control"
CONTENT_TYPE = "Content-Type"
IDEMPOTENCY_KEY = "Idempotency-Key"
#: the response header that marks a replayed outcome
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"
#: the media type of a merge patch (RFC 7396 section 4)
MERGE_PATCH = "application/merge-patch+json"

# --- If-Match, If-None-Match ---------------------------------------------------

# docs/openapi.yaml's If-Match pattern, with the quotes balanced: "3" or 3
_IF_MATCH = re.compile(r'(?P<q>"?)(?P<version>[1-9][0-9]{0,17})(?P=q)')
# RFC 9110's entity-tag (an optional W/ and an opaque string in quotes; its
# obs-text left out: visible ASCII) and a list of them: docs/openapi.yaml's
# If-None-Match pattern
_ENTITY_TAG = re.compile(r'(?:W/)?"(?P<opaque>[\x21\x23-\x7e]*)"')
_ENTITY_TAGS = re.compile(rf"{_ENTITY_TAG.pattern}(?:[ \t]*,[ \t]*{_ENTITY_TAG.pattern})*"
                          .replace("(?P<opaque>", "("))


def if_match(header: str | None) -> IfMatch | None:
    """An If-Match header: ``*``, or the version as the ETag of a GET
    (``"3"``) or bare (``3``).  A weak tag is refused: If-Match compares
    strongly (RFC 9110 section 13.1.1), and a weak tag never matches."""
    if header is None:
        return None
    # spaces and tabs only, as docs/openapi.yaml's pattern says: str.strip()
    # also takes \x85, \xa0 and \x1c-\x1f, which a client's regex may not
    value = header.strip(" \t")
    if value == "*":
        return IfMatch(value, None)
    if value.startswith("W/"):
        raise ValidationError(f'If-Match takes strong ETags only: send {value[2:]}, not {value} '
                              "(a weak tag never matches, RFC 9110)", field=IF_MATCH)
    match = _IF_MATCH.fullmatch(value)
    if match is None:
        raise ValidationError('If-Match must be a session version: the ETag of a GET ("3"), 3 or *',
                              field=IF_MATCH)
    return IfMatch(value, version(int(match["version"]), IF_MATCH))


def if_none_match(header: str | None) -> IfNoneMatch | None:
    """An If-None-Match header: ``*`` or a list of entity tags (any opaque
    tag is taken; only a session's ETag can match)."""
    if header is None:
        return None
    value = header.strip(" \t")
    if value == "*":
        return IfNoneMatch(value, frozenset())
    if not _ENTITY_TAGS.fullmatch(value):
        raise ValidationError('If-None-Match must be * or a list of ETags ("3", W/"3")',
                              field=IF_NONE_MATCH)
    return IfNoneMatch(value, frozenset(tag["opaque"] for tag in _ENTITY_TAG.finditer(value)))


# --- Content-Type: the merge patch media type ----------------------------------

# "application/merge-patch+json", optionally "; charset=utf-8" (any case,
# the value quoted or not): the body is decoded as UTF-8, so no other charset
_MERGE_PATCH_TYPE = re.compile(
    r'[ \t]*application/merge-patch\+json[ \t]*'
    r'(?:;[ \t]*charset[ \t]*=[ \t]*(?:utf-8|"utf-8")[ \t]*)?', re.IGNORECASE)


def require_merge_patch(header: str | None) -> None:
    """Refuse (415) a body not declared as ``application/merge-patch+json``."""
    if header is None or not _MERGE_PATCH_TYPE.fullmatch(header):
        raise UnsupportedMediaType(
            f"PATCH takes Content-Type: {MERGE_PATCH} (RFC 7396), not "
            f"{(header or 'none')[:100]}", accepted=[MERGE_PATCH])


# --- Cache-Control: max-stale (RFC 9111 section 5.2.1.2) ------------------------

# RFC 9110's token, and a directive: a token with an optional token or
# quoted-string argument (RFC 9111 section 5.2)
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CACHE_DIRECTIVE = re.compile(rf'(?P<name>{_TOKEN})(?:=(?P<value>{_TOKEN}|"(?:[^"\\]|\\.)*"))?')
# one element of the comma-separated list: commas inside quotes do not count
_LIST_ELEMENT = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*")*')
# RFC 9111 section 1.2.2: a delta-seconds past what a cache can represent
# counts as 2**31
MAX_DELTA_SECONDS = 2 ** 31


def _cache_directives(header: str) -> list[tuple[str, str | None]]:
    """(lower-case name, argument without its quotes or None) of each
    directive of a Cache-Control header that parses; the others (and the
    empty elements a list may hold, RFC 9110 section 5.6.1) are left out.
    A quote left open spoils the whole header: none then."""
    directives: list[tuple[str, str | None]] = []
    position = 0
    while position <= len(header):
        element = _LIST_ELEMENT.match(header, position)
        assert element is not None  # it matches the empty string too
        match = _CACHE_DIRECTIVE.fullmatch(element.group().strip(" \t"))
        if match is not None:
            value = match["value"]
            if value is not None and value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            directives.append((match["name"].lower(), value))
        if element.end() < len(header) and header[element.end()] != ",":
            return []  # an open quote
        position = element.end() + 1  # past the comma (or the end)
    return directives


def max_stale(header: str | None) -> MaxStale | None:
    """The ``max-stale`` directive of a Cache-Control request header, or
    None when there is none.

    ``max-stale`` alone accepts any age, ``max-stale=N`` (or ``="N"``, as
    RFC 9111 section 5.2 asks recipients to accept) N whole seconds at
    most.  Never raises: a header that does not parse, or a ``max-stale``
    whose argument is not delta-seconds, is ignored as RFC 9111 ignores
    directives it cannot use (the request is served as without it: a 400
    would fail requests that a proxy on the way decorated, and the opt-in
    only matters while Redis is down).  Of several ``max-stale``, the first
    counts (RFC 9111 section 4.2.1).
    """
    if header is None:
        return None
    for name, value in _cache_directives(header):
        if name != "max-stale":
            continue
        if value is None:
            return MaxStale(None)
        if not re.fullmatch(r"[0-9]+", value):
            return None
        return MaxStale(min(int(value), MAX_DELTA_SECONDS))
    return None


# --- Idempotency-Key --------------------------------------------------------------

MAX_IDEMPOTENCY_KEY_LENGTH = 255
# The header is a Structured Field string (RFC 8941 section 3.3.3): in
# quotes, printable ASCII, with \" and \\ escaped.  A bare value of visible
# ASCII without quotes, backslashes, commas or semicolons is taken too (what
# many clients send: an unquoted UUID) and names the same key as its quoted
# form.  docs/openapi.yaml's pattern is this one.
_QUOTED = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_BARE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]+")
_UNESCAPE = re.compile(r'\\(["\\])')


def idempotency_key(header: str | None) -> str | None:
    """The key of an ``Idempotency-Key`` header (None: no header)."""
    if header is None:
        return None
    value = header.strip(" \t")
    quoted = _QUOTED.fullmatch(value)
    if quoted is not None:
        key = _UNESCAPE.sub(r"\1", quoted[1])
    elif _BARE.fullmatch(value):
        key = value
    else:
        raise ValidationError(f'{IDEMPOTENCY_KEY} must be a string in quotes ("8e03978e-40d5") of '
                              'printable ASCII, \\" and \\\\ escaped, or a bare token of visible ASCII',
                              field=IDEMPOTENCY_KEY)
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ValidationError(f"{IDEMPOTENCY_KEY} must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} "
                              "characters long", field=IDEMPOTENCY_KEY)
    return key
