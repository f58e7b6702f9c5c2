"""Configuration: a missing or malformed setting fails with a message that
names it, and never prints a secret.  Pure: ``load_settings`` takes the
environment as a mapping."""
from __future__ import annotations

import re

import pytest

from chalicelib import config
from chalicelib.config import Settings, check_database_url, load_settings
from chalicelib.domain.errors import ConfigurationError
from chalicelib.domain.keys import KeySet

PASSWORD_WITH_AT = "p@ssw0rd"
PASSWORD_WITH_SLASH = "ab/cd3f"


@pytest.mark.parametrize("url, password, escaped", [
    (f"postgresql://app:{PASSWORD_WITH_AT}@db.internal:5432/sessions", PASSWORD_WITH_AT, "%40"),
    (f"postgresql://app:{PASSWORD_WITH_SLASH}@db.internal:5432/sessions", PASSWORD_WITH_SLASH, "%2F"),
    ("postgres://app:x/y@z@db.internal/sessions", "x/y@z", "%2F"),
    ("postgresql://app:q#w@db.internal/sessions", "q#w", "%23"),
    ("postgresql://app:q?w@db.internal/sessions", "q?w", "%3F"),
])
def test_an_unescaped_password_in_database_url_is_explained_without_printing_it(url, password, escaped):
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"DATABASE_URL": url})
    error = caught.value
    assert error.setting == "DATABASE_URL"
    assert error.message.startswith("DATABASE_URL: ")
    assert "percent-encode" in error.message
    suggestion = error.details["suggestion"]
    assert escaped in suggestion and suggestion in error.message
    assert suggestion.startswith(url.split(":", 1)[0] + "://app:")
    assert suggestion.endswith("@" + url.rsplit("@", 1)[1])
    # neither the password nor a recognisable piece of it is shown
    for text in (error.message, str(error), repr(error), str(error.to_dict())):
        assert password not in text
        assert all(part not in text for part in password.replace("#", "@").replace("?", "@")
                   .replace("/", "@").split("@") if len(part) > 1)


def test_a_percent_encoded_password_is_accepted():
    url = "postgresql://app:p%40ss%2Fw0rd@db.internal:5432/sessions"
    assert load_settings({"DATABASE_URL": url}).database_url == url
    assert check_database_url("postgresql://app@localhost/sessions")


@pytest.mark.parametrize("url, fragment", [
    ("mysql://app:pw@db/sessions", "scheme must be postgresql://"),
    ("postgresql://app:pw@db:54x2/sessions", "port is not a number"),
    ("postgresql://", "neither host nor database"),
])
def test_a_malformed_database_url_names_the_setting(url, fragment):
    with pytest.raises(ConfigurationError, match=fragment) as caught:
        load_settings({"DATABASE_URL": url})
    assert caught.value.setting == "DATABASE_URL"
    assert "pw" not in caught.value.message


@pytest.mark.parametrize("env, setting", [
    ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://h:port/0"}, "REDIS_URL"),
    ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER"),
    ({"DB_POOLED": "transaction"}, "DB_POOLED"),
    ({"REDIS_TIMEOUT": "fast"}, "REDIS_TIMEOUT"),
    ({"REDIS_TIMEOUT": "0"}, "REDIS_TIMEOUT"),
    ({"SESSION_TTL": "an hour"}, "SESSION_TTL"),
    ({"SESSION_TTL": "0"}, "SESSION_TTL"),
    ({"MAX_STATE_BYTES": str(1024 * 1024)}, "MAX_STATE_BYTES"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
    ({"SESSIONSYNC_API_KEYS": "short"}, "SESSIONSYNC_API_KEYS"),
    ({"AWS_ENDPOINT_URL": "127.0.0.1:4566"}, "AWS_ENDPOINT_URL"),
    ({"REDIS_URL": "rediss://app:pw@cache.example.com:6379", "REDIS_SECRET_ARN": "arn:x"},
     "REDIS_SECRET_ARN"),
    ({"SYNC_EVENTS_RETENTION_DAYS": "a month"}, "SYNC_EVENTS_RETENTION_DAYS"),
    ({"SYNC_EVENTS_RETENTION_DAYS": "-40"}, "SYNC_EVENTS_RETENTION_DAYS"),
    ({"SYNC_EVENTS_RETENTION_DAYS": "0"}, "SYNC_EVENTS_RETENTION_DAYS"),
    ({"SYNC_EVENTS_RETENTION_DAYS": "29"}, "SYNC_EVENTS_RETENTION_DAYS"),
    ({"SYNC_EVENTS_RETENTION_DAYS": "30.5"}, "SYNC_EVENTS_RETENTION_DAYS"),
])
def test_a_malformed_setting_fails_with_a_message_naming_it(env, setting):
    with pytest.raises(ConfigurationError) as caught:
        load_settings(env)
    assert caught.value.setting == setting
    assert caught.value.message.startswith(f"{setting}: ")


def test_an_api_key_is_never_part_of_a_message_or_repr():
    key = "a-long-secret-api-key-0123456789"
    settings = load_settings({"SESSIONSYNC_API_KEYS": f"{key}, another-secret-key-9876543210"})
    assert settings.api_keys.legacy == (key, "another-secret-key-9876543210")
    assert key not in repr(settings)
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"SESSIONSYNC_API_KEYS": f"{key},tiny"})
    assert key not in caught.value.message and "tiny" not in caught.value.message


def test_an_empty_environment_gives_the_documented_defaults():
    settings = load_settings({})
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.session_ttl == Settings.session_ttl == 3600
    assert settings.max_state_bytes == Settings.max_state_bytes == 256 * 1024
    assert settings.redis_timeout == 1.0
    assert not settings.has_database and not settings.has_queue
    assert not settings.db_pooled and load_settings({"DB_POOLED": "true"}).db_pooled


def test_rediss_urls_with_credentials_and_query_options_are_accepted():
    url = "rediss://sessionsync:p%40ss@cache.example.com:6379/0?ssl_ca_certs=%2Fetc%2Fca.pem"
    settings = load_settings({"REDIS_URL": url, "REDIS_CLUSTER": "true"})
    assert settings.redis_url == url and settings.redis_cluster


def test_the_redis_secret_arn_is_read_and_the_url_keeps_no_credentials_beside_it():
    settings = load_settings({"REDIS_URL": "rediss://cache.example.com:6379",
                              "REDIS_SECRET_ARN": " arn:aws:secretsmanager:eu-west-1:1:secret:redis "})
    assert settings.redis_secret_arn == "arn:aws:secretsmanager:eu-west-1:1:secret:redis"
    assert load_settings({}).redis_secret_arn is None


def test_a_redis_url_with_a_database_that_is_not_a_number_names_redis_url():
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"REDIS_URL": "redis://127.0.0.1:6379/abc"})
    assert caught.value.setting == "REDIS_URL"


def test_redis_cluster_with_a_database_other_than_0_names_redis_url():
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"REDIS_URL": "redis://127.0.0.1:6379/3", "REDIS_CLUSTER": "true"})
    assert caught.value.setting == "REDIS_URL"
    assert load_settings({"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_CLUSTER": "true"}).redis_cluster


def test_sync_events_retention_is_unset_by_default_and_read_in_whole_days():
    assert load_settings({}).events_retention_days is None
    assert load_settings({"SYNC_EVENTS_RETENTION_DAYS": " "}).events_retention_days is None
    assert load_settings({"SYNC_EVENTS_RETENTION_DAYS": "90"}).events_retention_days == 90
    with pytest.raises(ConfigurationError, match="at least 30 days"):
        load_settings({"SYNC_EVENTS_RETENTION_DAYS": "7"})


# --- the declarations: one per setting, and the README's table kept in step -----

#: README cells that describe a default in words rather than show it
DEFAULTS_IN_WORDS = {"DB_SSL_ROOT_CERT": "the RDS CA bundle in the package", "PGHOST": "—"}


def _shown(default) -> str:
    if default is None or default == () or (isinstance(default, KeySet) and not default):
        return "—"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{default:g}`" if isinstance(default, float) else f"`{default}`"


def _readme_settings() -> dict[str, str]:
    """variable name -> its default cell, from the README's Configuration table;
    ``PG*`` stands for libpq's variables."""
    from tests.support.constants import PROJECT_DIR
    text = (PROJECT_DIR / "README.md").read_text().split("\n## Configuration\n", 1)[1]
    rows = {}
    for line in text.split("\n## ", 1)[0].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) != 3:
            continue
        names = re.findall(r"`([A-Z][A-Z0-9_*]*)`", cells[0])
        for name in names:
            for expanded in (config.PG_ENVIRONMENT if name == "PG*" else (name,)):
                assert expanded not in rows, f"{expanded} has two rows"
                rows[expanded] = cells[1]
    return rows


def test_every_setting_is_declared_once_and_the_readme_table_lists_each_with_its_default():
    declared = {name: variable for variable in config.variables() for name in variable.names}
    assert len(declared) == sum(len(v.names) for v in config.variables())  # no name twice
    readme = _readme_settings()
    assert set(readme) == set(declared), "README.md's Configuration table and chalicelib/config.py"
    for variable in config.variables():
        cell = readme[variable.name]
        expected = DEFAULTS_IN_WORDS.get(variable.name) or _shown(variable.default)
        assert cell.startswith(expected), (variable.name, cell, expected)


def test_a_default_is_never_parsed_and_a_blank_value_means_the_default():
    blank = {name: " \t" for variable in config.variables() for name in variable.names}
    assert load_settings(blank) == load_settings({}) == Settings()
    assert config.auth_mode(blank) == "api-key"


@pytest.mark.parametrize("variable", config.variables(), ids=lambda v: v.name)
def test_each_health_check_a_setting_stops_is_the_dependency_it_configures(variable):
    from chalicelib.api import health

    def probes():
        raise ConfigurationError(variable.name, "malformed")

    report = health.check_configured(probes)
    assert [c.name for c in report.checks] == [variable.check or "configuration"]
    assert report.checks[0].error == f"configuration error: {variable.name} is malformed"
