"""``sessionsync keys`` against LocalStack's Secrets Manager, read by the
authorizer's own key cache: a key printed once, only its hash stored,
revoked and rotated with no deploy."""
from __future__ import annotations

import json

import pytest

from chalicelib.api.auth import SECRET_CACHE_SECONDS, ApiKeys
from chalicelib.config import Settings
from chalicelib.domain.keys import Caller
from tests.support.constants import LOCALSTACK_URL, SECRET_PLAINTEXT_KEY
from tests.support.ops import cli_env, run_cli
from tests.support.secrets import FakeClock

pytestmark = pytest.mark.localstack

LEGACY = SECRET_PLAINTEXT_KEY  # what the keys_secret fixture's secret holds


def _keys(arn: str, *args: str) -> dict:
    env = cli_env(Settings(aws_endpoint_url=LOCALSTACK_URL, aws_region="us-east-1"),
                  SESSIONSYNC_API_KEYS_SECRET_ARN=arn, AWS_ENDPOINT_URL=LOCALSTACK_URL)
    result = run_cli("keys", *args, "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_created_key_is_printed_once_stored_as_its_hash_and_accepted_by_the_authorizer(keys_secret):
    client, arn = keys_secret
    made = _keys(arn, "create", "--tenant", "acme", "--scope", "read")
    key, record = made["key"], made["record"]
    assert key.startswith(f"ss_live_{record['id']}_") and record["tenant"] == "acme"
    stored = client.get_secret_value(SecretId=arn)["SecretString"]
    assert key not in stored and key.rsplit("_", 1)[1] not in stored
    assert LEGACY in stored  # the plaintext keys already there are kept
    listed = _keys(arn, "list")
    assert [k["prefix"] for k in listed["keys"]] == [record["prefix"]] and listed["plaintext_keys"] == 1
    assert key not in json.dumps(listed) and "sha256" not in json.dumps(listed)

    keys = ApiKeys((), secret_arn=arn, secrets_client=client)
    assert keys.identify(f"Bearer {key}") == Caller("acme", record["id"], frozenset({"read"}))


def test_a_revoked_key_stops_within_the_cache_time_and_a_rotated_one_keeps_working_for_its_grace(
        keys_secret):
    client, arn = keys_secret
    first = _keys(arn, "create", "--tenant", "acme", "--scope", "read", "--scope", "write")
    other = _keys(arn, "create", "--tenant", "beta")
    clock = FakeClock()
    keys = ApiKeys((), secret_arn=arn, secrets_client=client, clock=clock)
    assert keys.accepts(f"Bearer {first['key']}") and keys.accepts(f"Bearer {other['key']}")

    rotated = _keys(arn, "rotate", first["record"]["prefix"], "--grace-hours", "1")
    assert rotated["record"]["tenant"] == "acme" and rotated["record"]["scopes"] == ["read", "write"]
    assert rotated["replaced"]["id"] == first["record"]["id"] and rotated["replaced"]["expires"]
    _keys(arn, "revoke", other["record"]["id"])
    assert keys.accepts(f"Bearer {other['key']}"), "cached until SECRET_CACHE_SECONDS"
    clock.now += SECRET_CACHE_SECONDS + 1
    assert not keys.accepts(f"Bearer {other['key']}")
    # during the grace both the old and the new key work: no request lost
    assert keys.identify(f"Bearer {first['key']}").tenant == "acme"
    assert keys.identify(f"Bearer {rotated['key']}").tenant == "acme"
    after_grace = ApiKeys((), secret_arn=arn, secrets_client=client, wall_clock=lambda: 2e9)
    assert not after_grace.accepts(f"Bearer {first['key']}")
    assert after_grace.accepts(f"Bearer {rotated['key']}")

    removed = _keys(arn, "revoke", "--plaintext")
    assert removed["plaintext_keys_removed"] == 1
    assert LEGACY not in client.get_secret_value(SecretId=arn)["SecretString"]


def test_an_unknown_key_id_is_an_error_that_changes_nothing(keys_secret):
    client, arn = keys_secret
    before = client.get_secret_value(SecretId=arn)["SecretString"]
    env = cli_env(Settings(aws_endpoint_url=LOCALSTACK_URL, aws_region="us-east-1"),
                  SESSIONSYNC_API_KEYS_SECRET_ARN=arn, AWS_ENDPOINT_URL=LOCALSTACK_URL)
    result = run_cli("keys", "revoke", "0123456789ab", env=env)
    assert result.returncode == 1 and "no key with id '0123456789ab'" in result.stderr
    assert client.get_secret_value(SecretId=arn)["SecretString"] == before


def test_the_readme_s_scoped_key_command_prints_a_key_its_record_accepts():
    import re

    from chalicelib.domain.keys import parse_keys
    from tests.support.constants import PROJECT_DIR

    readme = (PROJECT_DIR / "README.md").read_text().split("## Walk-through", 1)[1]
    [command] = re.findall(r"^\.venv/bin/sessionsync (keys create .*--print-record)$", readme, flags=re.M)
    result = run_cli(*command.split(), env=cli_env(Settings()))
    assert result.returncode == 0, result.stderr
    key, record = result.stdout.splitlines()
    keys = ApiKeys(parse_keys(f"[{record}]"))
    assert keys.identify(f"Bearer {key}") == Caller("reports", json.loads(record)["id"], frozenset({"read"}))
    assert key not in record
