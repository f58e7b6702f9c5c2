"""ElastiCache IAM authentication (REDIS_AUTH=iam): the token is exactly the
presigned ``connect`` request botocore's SigV4 query signer makes, it is
made again once it is IAM_REFRESH_SECONDS old and not before, and the
settings it needs (TLS, no password, a user, a cache name) name themselves
when wrong."""
from __future__ import annotations

import datetime
import subprocess
import sys
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import botocore.auth
import botocore.session
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.credentials import (
    IAM_REFRESH_SECONDS,
    IAM_TOKEN_SECONDS,
    IamAuthToken,
    RedisCredentialsUnavailable,
)
from chalicelib.config import load_settings
from chalicelib.domain.errors import ConfigurationError
from tests.support.secrets import FakeClock

USER = "sessionsync-app"
CACHE = "sessionsync-cache"
REGION = "eu-west-1"
SIGNED_AT = datetime.datetime(2026, 11, 29, 12, 0, 0)
KEYS = ("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token/for+the=role")
IAM_ENV = {"REDIS_AUTH": "iam", "REDIS_URL": f"rediss://{USER}@cache.example:6379/0",
           "REDIS_IAM_CACHE_NAME": CACHE}


def session_with_keys() -> botocore.session.Session:
    # explicit keys: the default chain could ask the instance metadata service
    session = botocore.session.Session()
    session.set_credentials(*KEYS)
    return session


def signed_at(moment: datetime.datetime):
    return mock.patch.object(botocore.auth, "get_current_datetime", lambda *a, **k: moment)


def expected_token(moment: datetime.datetime) -> str:
    """Built apart from the provider: the request, SigV4 query auth, no scheme."""
    request = AWSRequest(method="GET", url=f"https://{CACHE}/",
                         params={"Action": "connect", "User": USER})
    with signed_at(moment):
        botocore.auth.SigV4QueryAuth(Credentials(*KEYS), "elasticache", REGION,
                                     expires=900).add_auth(request)
    url = request.prepare().url
    assert url.startswith("https://")
    return url[len("https://"):]


def test_the_token_is_the_presigned_connect_request_botocore_signs_without_its_scheme():
    provider = IamAuthToken(USER, CACHE, REGION, session=session_with_keys(), clock=FakeClock())
    with signed_at(SIGNED_AT):
        user, token = provider.get_credentials()
    assert user == USER
    assert token == expected_token(SIGNED_AT)
    assert not token.startswith("https://") and token.startswith(f"{CACHE}/?")
    query = parse_qs(urlsplit(f"https://{token}").query)
    assert query["Action"] == ["connect"] and query["User"] == [USER]
    assert query["X-Amz-Expires"] == [str(IAM_TOKEN_SECONDS)] == ["900"]
    assert query["X-Amz-Date"] == ["20261129T120000Z"]
    assert query["X-Amz-Credential"] == [f"{KEYS[0]}/20261129/{REGION}/elasticache/aws4_request"]
    assert query["X-Amz-Security-Token"] == [KEYS[2]]


def test_a_token_is_reused_until_it_is_the_refresh_age_old_then_made_again():
    clock = FakeClock()
    provider = IamAuthToken(USER, CACHE, REGION, session=session_with_keys(), clock=clock)
    with signed_at(SIGNED_AT):
        first = provider.get_credentials()
    later = SIGNED_AT + datetime.timedelta(seconds=IAM_REFRESH_SECONDS)
    with signed_at(later):
        clock.now += IAM_REFRESH_SECONDS - 0.001
        assert provider.get_credentials() == first  # not yet
        clock.now += 0.001
        refreshed = provider.get_credentials()
    assert refreshed == (USER, expected_token(later)) and refreshed != first
    assert IAM_REFRESH_SECONDS < IAM_TOKEN_SECONDS  # refreshed before it expires


def test_without_aws_credentials_the_connection_fails_naming_the_setting():
    provider = IamAuthToken(USER, CACHE, REGION, session=mock.Mock(**{
        "get_credentials.return_value": None,
        "get_component.return_value": botocore.session.Session().get_component("event_emitter")}),
        clock=FakeClock())
    with pytest.raises(RedisCredentialsUnavailable) as caught:
        provider.get_credentials()
    assert "REDIS_AUTH=iam: NoCredentialsError" in str(caught.value)


def test_redis_auth_iam_gives_connect_redis_the_iam_provider_for_the_url_user_and_cache():
    settings = load_settings(IAM_ENV)
    assert (settings.redis_auth, settings.redis_iam_cache_name) == ("iam", CACHE)
    client = connect_redis(settings)  # connects lazily: no I/O
    try:
        provider = client.connection_pool.connection_kwargs["credential_provider"]
        assert isinstance(provider, IamAuthToken)
        # the user is the provider's: redis-py refuses a connection given both
        assert client.connection_pool.make_connection().username is None
        assert (provider._user, provider._cache_name, provider._region) == (USER, CACHE, "us-east-1")
    finally:
        client.close()


def test_the_password_mode_is_the_default_and_makes_no_token():
    settings = load_settings({"REDIS_URL": "rediss://u:p@cache.example:6379/0"})
    assert settings.redis_auth == "password"
    client = connect_redis(settings)
    try:
        assert "credential_provider" not in client.connection_pool.connection_kwargs
    finally:
        client.close()


@pytest.mark.parametrize("change, setting", [
    ({"REDIS_AUTH": "kerberos"}, "REDIS_AUTH"),
    ({"REDIS_URL": f"redis://{USER}@cache.example:6379/0"}, "REDIS_URL"),  # no TLS
    ({"REDIS_URL": "unix:///tmp/redis.sock"}, "REDIS_URL"),
    ({"REDIS_URL": f"rediss://{USER}:p4ss@cache.example:6379/0"}, "REDIS_URL"),
    ({"REDIS_URL": "rediss://cache.example:6379/0"}, "REDIS_URL"),  # no user id
    ({"REDIS_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:1:secret:redis"}, "REDIS_SECRET_ARN"),
    ({"REDIS_IAM_CACHE_NAME": ""}, "REDIS_IAM_CACHE_NAME"),
])
def test_a_setting_iam_auth_cannot_work_with_is_named(change, setting):
    with pytest.raises(ConfigurationError) as caught:
        load_settings({**IAM_ENV, **change})
    assert caught.value.setting == setting
    assert "p4ss" not in caught.value.message


def test_the_redis_client_module_does_not_import_botocore():
    # cold start: only REDIS_AUTH=iam pays for botocore
    code = ("import sys, chalicelib.adapters.redis.client, chalicelib.config; "
            "print('botocore' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         check=True).stdout.strip()
    assert out == "False"
