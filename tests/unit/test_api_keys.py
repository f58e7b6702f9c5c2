"""API keys as data: the records, and who the authorizer says a token is."""
from __future__ import annotations

import hmac
import json

import pytest

from chalicelib.api import auth
from chalicelib.api.auth import ApiKeys
from chalicelib.config import load_settings
from chalicelib.domain import keys as key_domain
from chalicelib.domain.errors import ConfigurationError, ValidationError
from chalicelib.domain.keys import FULL_ACCESS, SCOPES, Caller, KeySet, new_key, parse_keys
from tests.support.keys import make_key

LEGACY = "plaintext-key-0123456789abcdef"
NOW = 1_800_000_000.0


def test_a_new_key_is_recognisable_and_its_record_holds_only_its_hash():
    key, record = new_key("acme", ["read"], NOW)
    assert key.startswith(f"ss_live_{record.id}_") and record.prefix == f"ss_live_{record.id}"
    assert key_domain.key_id(key) == record.id
    stored = KeySet((record,)).to_json()
    assert key not in stored and key.split("_")[-1] not in stored
    assert json.loads(stored)["keys"][0] == {
        "id": record.id, "prefix": record.prefix, "sha256": key_domain.digest(key), "tenant": "acme",
        "scopes": ["read"], "created": "2027-01-15T08:00:00Z", "expires": None}
    assert parse_keys(stored).records == (record,)


def test_two_new_keys_share_nothing():
    first, second = new_key("acme", SCOPES, NOW), new_key("acme", SCOPES, NOW)
    assert first[0] != second[0] and first[1].id != second[1].id


@pytest.mark.parametrize("record, field", [
    ({"id": "XYZ", "sha256": "0" * 64, "tenant": "a", "scopes": ["read"],
      "created": "2026-01-01T00:00:00Z"}, "id"),
    ({"id": "0" * 12, "sha256": "abc", "tenant": "a", "scopes": ["read"], "created": "2026-01-01T00:00:00Z"},
     "sha256"),
    ({"id": "0" * 12, "sha256": "0" * 64, "tenant": "A/b", "scopes": ["read"],
      "created": "2026-01-01T00:00:00Z"}, "tenant"),
    ({"id": "0" * 12, "sha256": "0" * 64, "tenant": "a", "scopes": ["root"],
      "created": "2026-01-01T00:00:00Z"}, "scopes"),
    ({"id": "0" * 12, "sha256": "0" * 64, "tenant": "a", "scopes": [], "created": "2026-01-01T00:00:00Z"},
     "scopes"),
    ({"id": "0" * 12, "sha256": "0" * 64, "tenant": "a", "scopes": ["read"], "created": "soon"}, "created"),
    ({"id": "0" * 12, "sha256": "0" * 64, "tenant": "a", "scopes": ["read"],
      "created": "2026-01-01T00:00:00Z", "expires": 5}, "expires"),
])
def test_a_malformed_record_is_refused_naming_its_field(record, field):
    with pytest.raises(ValidationError) as caught:
        parse_keys(json.dumps({"keys": [record]}))
    assert caught.value.details["field"] == field


def test_the_variable_takes_records_and_refuses_bad_ones_by_name():
    _, record = new_key("acme", ["read"], NOW)
    settings = load_settings({"SESSIONSYNC_API_KEYS": json.dumps([record.to_dict()])})
    assert settings.api_keys.records == (record,) and not settings.api_keys.legacy
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"SESSIONSYNC_API_KEYS": json.dumps([{**record.to_dict(), "scopes": ["root"]}])})
    assert caught.value.setting == "SESSIONSYNC_API_KEYS"


@pytest.fixture
def issued():
    acme, acme_record = make_key("acme", ["read", "write"])
    beta, beta_record = make_key("beta", ["admin"])
    return ApiKeys(KeySet((acme_record, beta_record), (LEGACY,))), acme, beta


def test_a_key_is_its_tenant_s_with_its_scopes(issued):
    keys, acme, beta = issued
    assert keys.identify(f"Bearer {acme.token}") == Caller("acme", acme.key_id, frozenset({"read", "write"}))
    assert keys.identify(f"Bearer {beta.token}") == Caller("beta", beta.key_id, frozenset({"admin"}))


def test_a_plaintext_key_is_the_default_tenant_s_with_every_scope(issued):
    keys, _, _ = issued
    assert keys.identify(f"Bearer {LEGACY}") == FULL_ACCESS
    assert FULL_ACCESS.tenant == "default" and FULL_ACCESS.scopes == frozenset(SCOPES)


def test_a_key_with_a_known_id_and_another_secret_is_refused(issued):
    keys, acme, _ = issued
    forged = acme.token[:-1] + ("A" if acme.token[-1] != "A" else "B")
    assert keys.identify(f"Bearer {forged}") is None
    assert keys.identify(f"Bearer ss_live_{acme.key_id}_") is None
    assert keys.identify(f"Bearer {key_domain.digest(acme.token)}") is None  # its hash is no key


def test_an_expired_key_is_refused():
    key, record = make_key("acme", ["read"], expires_in=60)
    clock = [NOW]
    keys = ApiKeys(KeySet((record,)), wall_clock=lambda: clock[0])
    clock[0] = key_domain._epoch(record.expires) - 1
    assert keys.identify(f"Bearer {key.token}") is not None
    clock[0] = key_domain._epoch(record.expires)
    assert keys.identify(f"Bearer {key.token}") is None


def test_a_check_costs_one_hash_comparison_and_one_per_plaintext_key_whatever_the_token(issued, monkeypatch):
    # Observed, not timed: whether the token names a known id, an unknown
    # one, or is no ss_live_ key at all, the same comparisons are made.
    keys, acme, _ = issued
    compared: list[int] = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append(len(b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    for token in (acme.token, "ss_live_000000000000_" + "x" * 43, LEGACY, "not-a-key-at-all-0123"):
        compared.clear()
        keys.identify(f"Bearer {token}")
        assert compared == [64, len(LEGACY)], token


def test_the_caller_travels_in_the_authorizer_s_context_as_strings():
    caller = Caller("acme", "0123456789ab", frozenset({"write", "read"}))
    context = caller.to_context()
    assert context == {"tenant": "acme", "key_id": "0123456789ab", "scopes": "read write"}
    assert all(isinstance(v, str) for v in context.values())
    assert Caller.from_context({**context, "principalId": "0123456789ab"}) == caller
    assert Caller.from_context({"principalId": "x"}) is None


def test_loading_plaintext_keys_logs_their_deprecation(log_lines):
    ApiKeys((LEGACY,))
    [line] = [line for line in log_lines() if line.get("logger") == "sessionsync.auth"]
    assert line["level"] == "WARNING" and "deprecated" in line["message"] and "API 2.0" in line["message"]
    assert LEGACY not in json.dumps(line)
