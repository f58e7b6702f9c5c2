"""The Redis secret's shapes (REDIS_SECRET_ARN): an RBAC user, an AUTH token,
the bare password; what is not one names the setting."""
from __future__ import annotations

import pytest

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.credentials import parse_redis_secret
from chalicelib.config import load_settings
from chalicelib.domain.errors import ConfigurationError


@pytest.mark.parametrize("secret, credentials", [
    ('{"username": "app", "password": "p@ss"}', ("app", "p@ss")),
    ('{"password": "token", "engine": "redis"}', ("token",)),
    ("bare-token", ("bare-token",)),
])
def test_a_redis_secret_gives_redis_py_a_user_and_password_or_a_token(secret, credentials):
    assert parse_redis_secret(secret) == credentials


@pytest.mark.parametrize("secret", ['{"username": "app"}', '["p"]', '{"password": ""}'])
def test_a_redis_secret_without_a_password_names_the_setting(secret):
    with pytest.raises(ConfigurationError) as caught:
        parse_redis_secret(secret)
    assert caught.value.setting == "REDIS_SECRET_ARN" and "p@ss" not in caught.value.message


def test_a_redis_secret_arn_without_a_secrets_client_names_the_setting():
    settings = load_settings({"REDIS_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:1:secret:redis"})
    with pytest.raises(ConfigurationError) as caught:
        connect_redis(settings)
    assert caught.value.setting == "REDIS_SECRET_ARN"
