"""Guarantee 7: ``rediss://user:password@host`` works, as ElastiCache
in-transit encryption and RBAC require.

The server is tests/support/redis_tls.py's: TLS only, an ACL user, the
default user disabled.  The client is built by ``connect_redis`` from a URL,
exactly as the app builds it; the CA file rides in the URL's
``ssl_ca_certs`` query parameter, which redis-py passes to its SSL socket.
"""
from __future__ import annotations

import pytest
import redis

from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import load_settings
from chalicelib.domain.errors import ServiceUnavailable
from tests.support.redis_tls import USER, TlsRedis, running_tls_redis


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory) -> TlsRedis:
    with running_tls_redis(tmp_path_factory.mktemp("redis-tls")) as server:
        yield server


def test_a_rediss_url_with_user_and_password_works_through_connect_redis(tls_redis, session_id):
    settings = load_settings({"REDIS_URL": tls_redis.url(ca_file=tls_redis.ca_file)})
    client = connect_redis(settings)
    try:
        store = SessionStore(client)
        store.create(session_id, '{"secure":true}', 60)
        store.update(session_id, '{"secure":"still"}', 1)
        assert store.get(session_id).state == {"secure": "still"}
        # the app's ACL user, over TLS (the server has no plaintext port)
        assert client.acl_whoami() == USER
        assert client.connection_pool.connection_class is redis.SSLConnection
    finally:
        client.close()


def test_a_wrong_password_fails_clearly(tls_redis, session_id):
    settings = load_settings({"REDIS_URL": tls_redis.url("wrong-password", tls_redis.ca_file)})
    client = connect_redis(settings)
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            SessionStore(client).get(session_id)
    finally:
        client.close()
    assert caught.value.dependency == "redis"
    assert "AuthenticationError" in caught.value.message
    assert isinstance(caught.value.__cause__, redis.AuthenticationError)
    assert "wrong-password" not in caught.value.message


def test_a_server_certificate_from_an_untrusted_ca_is_refused(tls_redis, session_id):
    # no ssl_ca_certs: the system CAs do not know the test CA
    client = connect_redis(load_settings({"REDIS_URL": tls_redis.url()}))
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            SessionStore(client).get(session_id)
    finally:
        client.close()
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value.__cause__)
