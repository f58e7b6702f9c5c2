"""SESSIONSYNC_AUTH chooses the session routes' authorizer at deploy time."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chalicelib.config import AUTH_MODE, auth_mode
from chalicelib.domain.errors import ConfigurationError
from tests.support.constants import PROJECT_DIR

PROBE = ("import json, app; print(json.dumps({p: {m: type(e.authorizer).__name__ "
         "for m, e in v.items()} for p, v in app.app.routes.items()}))")


def route_authorizers(mode: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != AUTH_MODE}
    if mode is not None:
        env[AUTH_MODE] = mode
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=PROJECT_DIR, env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_session_routes_use_the_api_key_authorizer_by_default():
    routes = route_authorizers(None)
    assert routes["/sessions/{session_id}"] == {
        m: "ChaliceAuthorizer" for m in ("GET", "PUT", "DELETE", "PATCH")}
    assert routes["/health"] == {"GET": "NoneType"}


def test_iam_mode_puts_sigv4_in_front_of_every_session_route_but_not_health():
    routes = route_authorizers("iam")
    for path, methods in routes.items():
        expected = "NoneType" if path == "/health" else "IAMAuthorizer"
        assert set(methods.values()) == {expected}, path


def test_an_unknown_auth_mode_names_the_setting():
    with pytest.raises(ConfigurationError) as caught:
        auth_mode({AUTH_MODE: "cognito"})
    assert caught.value.setting == AUTH_MODE


