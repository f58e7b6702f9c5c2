"""The API key authorizer against LocalStack's Secrets Manager: the keys
secret disappears, or the endpoint stops answering, after the first read."""
from __future__ import annotations

import dataclasses

import pytest

from chalicelib.adapters import aws
from chalicelib.api.auth import REFRESH_BACKOFF_SECONDS, SECRET_CACHE_SECONDS, ApiKeys
from tests.support.constants import SECRET_PLAINTEXT_KEY
from tests.support.secrets import CountingClient, FakeClock
from tests.support.servers import free_port

KEY = SECRET_PLAINTEXT_KEY  # what the keys_secret fixture's secret holds


@pytest.mark.localstack
def test_a_deleted_keys_secret_keeps_the_last_good_keys_and_is_asked_again_after_a_pause(keys_secret):
    client, arn = keys_secret
    counting = CountingClient(client)
    clock = FakeClock()
    keys = ApiKeys((), secret_arn=arn, secrets_client=counting, clock=clock)
    assert keys.accepts(f"Bearer {KEY}")

    client.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    clock.now += SECRET_CACHE_SECONDS + 1
    for _ in range(20):
        assert keys.accepts(f"Bearer {KEY}")
    assert (counting.calls, keys.failures) == (2, 1)

    clock.now += REFRESH_BACKOFF_SECONDS
    assert keys.accepts(f"Bearer {KEY}")
    assert (counting.calls, keys.failures) == (3, 2)


@pytest.mark.localstack
def test_an_unreachable_secrets_manager_keeps_the_last_good_keys(keys_secret, localstack_settings):
    client, arn = keys_secret
    counting = CountingClient(client)
    clock = FakeClock()
    keys = ApiKeys((), secret_arn=arn, secrets_client=counting, clock=clock)
    assert keys.accepts(f"Bearer {KEY}")

    nowhere = dataclasses.replace(localstack_settings, aws_endpoint_url=f"http://127.0.0.1:{free_port()}")
    counting.client = aws.client("secretsmanager", nowhere, connect_timeout=0.5, attempts=1)
    clock.now += SECRET_CACHE_SECONDS + 1
    assert keys.accepts(f"Bearer {KEY}")
    assert not keys.accepts("Bearer some-other-key-0123456789")
    assert (counting.calls, keys.failures) == (2, 1)
