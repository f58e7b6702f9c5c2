"""Every error is an RFC 9457 problem that keeps, as extension members, the
shape clients read before (``code``, and ``error`` with code, message and
details), so that a client reading ``error.code`` keeps working."""
import json

from chalicelib.api.web import error_response
from chalicelib.domain.errors import PreconditionFailed, SessionSyncError


def test_an_error_response_is_a_problem_that_keeps_code_and_error():
    exc = PreconditionFailed("cart", precondition='If-Match: "1"', expected_version=1, actual_version=2)

    response = error_response(exc)

    assert response.headers["Content-Type"] == "application/problem+json"
    assert json.loads(response.body) == {
        "type": "about:blank", "title": "Precondition Failed", "status": 412,
        "detail": exc.message, "code": "PreconditionFailed", "error": exc.to_dict()}


def test_an_internal_error_is_a_500_problem():
    body = json.loads(error_response(SessionSyncError("an internal error occurred")).body)
    assert (body["status"], body["title"], body["code"]) == (500, "Internal Server Error", "InternalError")
