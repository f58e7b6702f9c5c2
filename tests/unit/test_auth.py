"""API key authentication.  Secrets Manager is moto's in-process mock."""
from __future__ import annotations

import hmac
import json

import boto3
import pytest
from moto import mock_aws

from chalicelib import auth
from chalicelib.auth import SECRET_CACHE_SECONDS, ApiKeys
from chalicelib.errors import ConfigurationError

KEYS = ("first-key-0123456789abcdef", "second-key-0123456789abcdef", "third-key-0123456789abcdef")


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER  abc ", "abc"),
    (None, None), ("", None), ("Bearer", None), ("Bearer   ", None), ("Basic abc", None), ("abc", None),
])
def test_the_bearer_token_is_taken_from_the_authorization_header(header, token):
    assert auth.bearer_token(header) == token


@pytest.mark.parametrize("key", KEYS)
def test_every_configured_key_is_accepted(key):
    assert ApiKeys(KEYS).accepts(f"Bearer {key}")


@pytest.mark.parametrize("header", [None, "", "Bearer", f"Bearer {KEYS[0]}x", f"Bearer {KEYS[0][:-1]}",
                                    f"Basic {KEYS[0]}", KEYS[0], "Bearer " + KEYS[0].upper()])
def test_anything_else_is_refused(header):
    assert not ApiKeys(KEYS).accepts(header)


def test_every_key_is_compared_in_constant_time_even_after_a_match(monkeypatch):
    # Observe the comparisons themselves: each key goes through
    # hmac.compare_digest, and a match on the first key does not stop the loop
    # (the time taken says nothing about which key matched).
    compared = []
    compare_digest = hmac.compare_digest

    def spy(a, b):
        compared.append(b)
        return compare_digest(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.key_matches(KEYS[0], KEYS)
    assert compared == [k.encode() for k in KEYS]
    compared.clear()
    assert not auth.key_matches("nope", KEYS)
    assert compared == [k.encode() for k in KEYS]


def test_no_keys_at_all_is_a_configuration_error_naming_the_settings():
    with pytest.raises(ConfigurationError) as caught:
        ApiKeys(())
    assert caught.value.setting == "SESSIONSYNC_API_KEYS"
    assert "SESSIONSYNC_API_KEYS_SECRET_ARN" in caught.value.message


@pytest.mark.parametrize("secret, keys", [
    (json.dumps({"api_keys": list(KEYS[:2])}), KEYS[:2]),
    (json.dumps({"api_keys": f"{KEYS[0]}, {KEYS[1]}"}), KEYS[:2]),
    (f"{KEYS[0]},{KEYS[2]}", (KEYS[0], KEYS[2])),
    (json.dumps([KEYS[1]]), (KEYS[1],)),
])
def test_a_secret_holds_keys_as_json_or_comma_separated(secret, keys):
    assert auth.parse_secret(secret) == keys


@pytest.mark.parametrize("secret", ['{"api_keys": []}', '{"other": 1}', "", " , "])
def test_a_secret_without_keys_is_a_configuration_error(secret):
    with pytest.raises(ConfigurationError) as caught:
        auth.parse_secret(secret)
    assert caught.value.setting == "SESSIONSYNC_API_KEYS_SECRET_ARN"


@pytest.fixture
def secretsmanager():
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-east-1",
                           aws_access_key_id="test", aws_secret_access_key="test")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_from_secrets_manager_are_accepted_and_cached_until_rotation(secretsmanager):
    arn = secretsmanager.create_secret(
        Name="sessionsync/test/api-keys", SecretString=json.dumps({"api_keys": [KEYS[0]]}))["ARN"]
    clock = FakeClock()
    keys = ApiKeys((), secret_arn=arn, secrets_client=secretsmanager, clock=clock)
    assert keys.accepts(f"Bearer {KEYS[0]}")
    assert not keys.accepts(f"Bearer {KEYS[1]}")

    secretsmanager.put_secret_value(SecretId=arn, SecretString=json.dumps({"api_keys": [KEYS[1]]}))
    assert keys.accepts(f"Bearer {KEYS[0]}"), "cached for SECRET_CACHE_SECONDS"
    clock.now += SECRET_CACHE_SECONDS + 1
    assert keys.accepts(f"Bearer {KEYS[1]}")
    assert not keys.accepts(f"Bearer {KEYS[0]}"), "a rotated-out key stops working"


def test_static_keys_and_secret_keys_are_both_accepted(secretsmanager):
    arn = secretsmanager.create_secret(Name="k", SecretString=KEYS[1])["ARN"]
    keys = ApiKeys((KEYS[0],), secret_arn=arn, secrets_client=secretsmanager)
    assert keys.accepts(f"Bearer {KEYS[0]}") and keys.accepts(f"Bearer {KEYS[1]}")


def test_the_authorizer_denies_instead_of_raising_when_the_secret_cannot_be_read(secretsmanager):
    missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:missing-AbCdEf"
    keys = ApiKeys((), secret_arn=missing, secrets_client=secretsmanager)
    assert auth.accepts(lambda: keys, f"Bearer {KEYS[0]}") is False


def test_the_authorizer_denies_when_no_keys_are_configured():
    def no_keys():
        return ApiKeys(())

    assert auth.accepts(no_keys, f"Bearer {KEYS[0]}") is False
