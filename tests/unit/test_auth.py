"""API key authentication.  Secrets Manager is moto's in-process mock."""
from __future__ import annotations

import hmac
import itertools
import json

import boto3
import pytest
from moto import mock_aws

from chalicelib.api import auth
from chalicelib.api.auth import (
    REFRESH_BACKOFF_MAX_SECONDS,
    REFRESH_BACKOFF_SECONDS,
    SECRET_CACHE_SECONDS,
    ApiKeys,
)
from chalicelib.domain.errors import ConfigurationError
from tests.support.secrets import FakeClock

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
    assert auth.parse_secret(secret).legacy == keys


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


# --- Secrets Manager trouble after (or before) a good read --------------------

SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:sessionsync/api-keys-AbCdEf"


class FlakySecrets:
    """A secrets client that answers ``secret`` or, while ``down``, raises
    what boto3 raises for an unreachable endpoint; counts the calls."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.down = False
        self.calls: list[float] = []
        self.clock: FakeClock | None = None

    def get_secret_value(self, SecretId: str) -> dict:
        from botocore.exceptions import EndpointConnectionError
        self.calls.append(self.clock.now if self.clock else 0.0)
        if self.down:
            raise EndpointConnectionError(endpoint_url="https://secretsmanager.us-east-1.amazonaws.com")
        return {"ARN": SecretId, "SecretString": self.secret}


@pytest.fixture
def flaky():
    clock = FakeClock()
    secrets = FlakySecrets(json.dumps({"api_keys": [KEYS[0]]}))
    secrets.clock = clock
    keys = ApiKeys((), secret_arn=SECRET_ARN, secrets_client=secrets, clock=clock)
    return keys, secrets, clock



def test_a_failed_refresh_keeps_serving_the_last_good_keys(flaky):
    keys, secrets, clock = flaky
    assert keys.accepts(f"Bearer {KEYS[0]}")

    secrets.down = True
    clock.now += SECRET_CACHE_SECONDS + 1
    assert keys.accepts(f"Bearer {KEYS[0]}"), "a Secrets Manager blip must not lock callers out"
    assert not keys.accepts(f"Bearer {KEYS[1]}")
    assert auth.accepts(lambda: keys, f"Bearer {KEYS[0]}") is True
    assert len(secrets.calls) == 2 and keys.failures == 1


def test_a_failing_secrets_manager_is_asked_again_after_a_doubling_pause_with_a_cap(flaky):
    keys, secrets, clock = flaky
    keys.keys()
    secrets.down = True
    clock.now += SECRET_CACHE_SECONDS + 1

    # a stream of requests, one every 0.25 s for ten minutes of fake time
    for _ in range(4 * 600):
        assert keys.accepts(f"Bearer {KEYS[0]}")
        clock.now += 0.25

    failed = secrets.calls[1:]
    pauses = [round(later - earlier, 2) for earlier, later in itertools.pairwise(failed)]
    expected, pause = [], REFRESH_BACKOFF_SECONDS
    while len(expected) < len(pauses):
        expected.append(pause)
        pause = min(pause * 2, REFRESH_BACKOFF_MAX_SECONDS)
    assert pauses == expected
    assert pauses[-1] == REFRESH_BACKOFF_MAX_SECONDS
    assert len(secrets.calls) < 20, "not one call per request"


def test_each_failed_refresh_is_logged_and_counted_without_the_secret_s_arn(flaky, emf_lines, log_lines):
    keys, secrets, clock = flaky
    keys.keys()
    secrets.down = True
    clock.now += SECRET_CACHE_SECONDS + 1
    keys.keys()
    clock.now += REFRESH_BACKOFF_SECONDS
    keys.keys()

    counted = [line for line in emf_lines() if "ApiKeyRefreshFailures" in line]
    assert [line["ApiKeyRefreshFailures"] for line in counted] == [1, 1]
    assert counted[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [
        {"Name": "ApiKeyRefreshFailures", "Unit": "Count"}]
    warnings = [line for line in log_lines() if line.get("logger") == "sessionsync.auth"
                and line["message"].startswith("cannot read")]
    assert len(warnings) == 2
    assert warnings[0]["level"] == "WARNING" and "keeping the last good keys" in warnings[0]["message"]
    assert warnings[0]["error"] == "EndpointConnectionError"
    assert [w["failures"] for w in warnings] == [1, 2]
    assert "123456789012" not in json.dumps(warnings)


def test_a_good_read_after_an_outage_takes_the_new_keys_and_resets_the_pause(flaky):
    keys, secrets, clock = flaky
    keys.keys()
    secrets.down = True
    for _ in range(5):  # five failures: the pause has grown
        clock.now += SECRET_CACHE_SECONDS + 1
        keys.keys()
    assert keys.failures == 5

    secrets.down = False
    secrets.secret = json.dumps({"api_keys": [KEYS[1]]})
    clock.now += REFRESH_BACKOFF_MAX_SECONDS
    assert keys.accepts(f"Bearer {KEYS[1]}") and not keys.accepts(f"Bearer {KEYS[0]}")
    assert keys.failures == 0
    calls = len(secrets.calls)
    clock.now += SECRET_CACHE_SECONDS - 1
    keys.keys()
    assert len(secrets.calls) == calls, "cached again for SECRET_CACHE_SECONDS"


def test_a_cold_start_while_secrets_manager_is_down_denies_and_retries_with_the_backoff(flaky, emf_lines):
    keys, secrets, clock = flaky
    secrets.down = True

    for _ in range(10):
        assert auth.accepts(lambda: keys, f"Bearer {KEYS[0]}") is False
    assert len(secrets.calls) == 1, "denied without asking Secrets Manager on every request"
    clock.now += REFRESH_BACKOFF_SECONDS
    assert not keys.accepts(f"Bearer {KEYS[0]}")
    assert len(secrets.calls) == 2

    secrets.down = False
    clock.now += 2 * REFRESH_BACKOFF_SECONDS
    assert keys.accepts(f"Bearer {KEYS[0]}")
    assert sum(line.get("ApiKeyRefreshFailures", 0) for line in emf_lines()) == 2


def test_a_secret_rotated_to_garbage_keeps_the_last_good_keys(flaky):
    keys, secrets, clock = flaky
    keys.keys()
    secrets.secret = json.dumps({"api_keys": []})
    clock.now += SECRET_CACHE_SECONDS + 1
    assert keys.accepts(f"Bearer {KEYS[0]}")
    assert keys.failures == 1
