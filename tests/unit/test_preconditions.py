"""A conditional header that fails is a 412 PreconditionFailed (RFC 9110),
the body's expected_version a 409 ConcurrencyError; the 412 is a kind of
409 so that whoever retries a lost compare-and-set retries it too."""
import pytest

from chalicelib.api import web
from chalicelib.domain.errors import (
    ConcurrencyError,
    KeptChanging,
    PreconditionFailed,
    SessionExists,
    SessionNotFound,
)
from chalicelib.domain.validation import IfMatch
from sessionsync.retry import retry_on_conflict


def test_a_lost_if_match_becomes_a_412_that_names_the_header_and_the_current_version():
    with pytest.raises(PreconditionFailed) as caught, web.if_match(IfMatch('"3"', 3), "cart"):
        raise ConcurrencyError("cart", expected_version=3, actual_version=4)

    assert caught.value.status == 412 and caught.value.code == "PreconditionFailed"
    assert caught.value.details == {"session_id": "cart", "precondition": 'If-Match: "3"',
                                    "expected_version": 3, "actual_version": 4}


def test_without_a_header_a_lost_compare_and_set_stays_a_409():
    with pytest.raises(ConcurrencyError) as caught, web.if_match(None, "cart"):
        raise ConcurrencyError("cart", expected_version=3, actual_version=4)

    assert type(caught.value) is ConcurrencyError and caught.value.status == 409


def test_if_match_star_fails_on_no_session_and_a_version_keeps_its_404():
    with pytest.raises(PreconditionFailed) as star, web.if_match(IfMatch("*", None), "cart"):
        raise SessionNotFound("cart", deleted=True)
    with pytest.raises(SessionNotFound), web.if_match(IfMatch("3", 3), "cart"):
        raise SessionNotFound("cart")

    assert star.value.actual_version is None and "was deleted" in star.value.message


def test_if_none_match_star_fails_on_an_existing_session():
    with pytest.raises(PreconditionFailed) as caught, \
            web.precondition("If-None-Match: *", "cart", absent_fails=False):
        raise SessionExists("cart", version=2)

    assert caught.value.actual_version == 2 and caught.value.status == 412


def test_the_retry_helper_retries_a_412_as_a_409():
    outcomes = [PreconditionFailed("cart", precondition='If-Match: "1"', expected_version=1,
                                   actual_version=2), "written"]

    def write(session, state):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retry_on_conflict(read=lambda: 1, change=lambda s: s, write=write,
                             sleep=lambda _: None) == "written"


def test_a_patch_that_kept_losing_stays_a_409_even_under_if_match_star():
    # If-Match: * held (the session is live): no precondition failed
    with pytest.raises(KeptChanging) as caught, web.if_match(IfMatch("*", None), "cart"):
        raise KeptChanging("cart", attempts=16, expected_version=7, actual_version=8)

    assert caught.value.status == 409 and caught.value.code == "ConcurrencyError"
    assert caught.value.details == {"session_id": "cart", "expected_version": 7, "actual_version": 8}
