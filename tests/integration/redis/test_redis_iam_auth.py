"""REDIS_AUTH=iam against a TLS + ACL redis-server of the test's own
(tests/support/redis_tls.py): the ACL user's password is set to the IAM
token the provider makes (fixed fake AWS keys from the environment, as a
Lambda role's arrive, and a clock the test moves), so the server accepts
exactly that token, as ElastiCache would; once the token is
IAM_REFRESH_SECONDS old, a new connection authenticates with a new one."""
from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import quote

import botocore.auth
import pytest
import redis

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.credentials import IAM_REFRESH_SECONDS, iam_auth_token
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import load_settings
from chalicelib.domain.errors import ServiceUnavailable
from tests.support.redis_tls import PASSWORD, USER, TlsRedis, running_tls_redis
from tests.support.secrets import FakeClock

CACHE = "sessionsync-cache"
SIGNED_FROM = datetime.datetime(2026, 11, 29, 12, 0, 0)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory) -> TlsRedis:
    with running_tls_redis(tmp_path_factory.mktemp("redis-iam")) as server:
        yield server


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """One clock for the refresh age and for the time botocore signs at."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    fake = FakeClock()
    start = fake.now
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k:
                        SIGNED_FROM + datetime.timedelta(seconds=fake.now - start))
    return fake


def set_password(admin: redis.Redis, password: str) -> None:
    """The user's only password from now on; open connections stay as they are."""
    admin.acl_setuser(USER, enabled=True, reset_passwords=True, passwords=[f"+{password}"])


def iam_setup(tls_redis: TlsRedis, clock: FakeClock) -> tuple[Any, Any, redis.Redis]:
    """REDIS_AUTH=iam settings for the server, their token provider on
    ``clock``, and an admin connection with the user's set-up password."""
    ca = quote(str(tls_redis.ca_file))
    settings = load_settings({
        "REDIS_AUTH": "iam", "REDIS_IAM_CACHE_NAME": CACHE,
        "REDIS_URL": f"rediss://{USER}@127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={ca}"})
    admin = redis.Redis(port=tls_redis.port, ssl=True, ssl_ca_certs=str(tls_redis.ca_file),
                        username=USER, password=PASSWORD, socket_timeout=2)
    return settings, iam_auth_token(settings, clock=clock), admin


def test_iam_tokens_authenticate_and_a_new_one_is_used_once_the_cached_one_is_old(
        tls_redis, clock, session_id):
    settings, provider, admin = iam_setup(tls_redis, clock)
    admin.ping()  # authenticated before the password changes, and stays so
    app = connect_redis(settings, credential_provider=provider)
    try:
        first = provider.token()
        set_password(admin, first)
        store = SessionStore(app)
        store.create(session_id, '{"auth":"iam"}', 60)
        assert store.get(session_id).state == {"auth": "iam"}
        assert app.acl_whoami() == USER
        assert provider.get_credentials() == (USER, first)

        clock.now += IAM_REFRESH_SECONDS
        second = provider.token()
        assert second != first  # signed at a later time
        set_password(admin, second)
        admin.client_kill_filter(user=USER, skipme=True)  # the app's connections

        store.update(session_id, '{"auth":"refreshed"}', 1)  # reconnects with the new token
        assert store.get(session_id).state == {"auth": "refreshed"}
        assert provider.get_credentials() == (USER, second)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=tls_redis.port, ssl=True, ssl_ca_certs=str(tls_redis.ca_file),
                        username=USER, password=first, socket_timeout=2).ping()
    finally:
        app.close()
        set_password(admin, PASSWORD)
        admin.close()


def test_a_token_younger_than_the_refresh_age_is_not_made_again(tls_redis, clock, session_id):
    settings, provider, admin = iam_setup(tls_redis, clock)
    admin.ping()
    app = connect_redis(settings, credential_provider=provider)
    try:
        set_password(admin, provider.token())
        store = SessionStore(app)
        store.create(session_id, "{}", 60)

        clock.now += IAM_REFRESH_SECONDS - 1
        set_password(admin, provider.token())  # the server wants a newer token...
        admin.client_kill_filter(user=USER, skipme=True)
        with pytest.raises(ServiceUnavailable) as caught:  # ...the cached one is still used
            store.get(session_id)
        assert isinstance(caught.value.__cause__, redis.AuthenticationError)
    finally:
        app.close()
        set_password(admin, PASSWORD)
        admin.close()
