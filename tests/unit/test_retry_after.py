"""A 503 says when to come back: one second by default, the time left when
the service knows it (the settle time after Redis went back in time)."""
from chalicelib.api.web import error_response
from chalicelib.domain.errors import ServiceUnavailable


def test_a_503_asks_for_a_retry_after_one_second_by_default():
    response = error_response(ServiceUnavailable("Redis is unavailable", dependency="redis"))

    assert (response.status_code, response.headers["Retry-After"]) == (503, "1")


def test_a_503_during_the_settle_time_asks_for_a_retry_after_the_time_left_in_whole_seconds():
    exc = ServiceUnavailable("reconciling", dependency="redis", retry_after_seconds=2.2)

    assert error_response(exc).headers["Retry-After"] == "3"
