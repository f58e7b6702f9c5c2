"""The Redis password from Secrets Manager (REDIS_SECRET_ARN), read when a
connection authenticates, against LocalStack's Secrets Manager and a
redis-server of the test's own that refuses anonymous clients (the default
user is off; one ACL user, as ElastiCache RBAC has it)."""
from __future__ import annotations

import json
import uuid

import pytest
import redis
from redis.cluster import RedisCluster

from chalicelib.adapters import aws
from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.credentials import (
    SECRET_REFRESH_SECONDS,
    SECRET_RETRY_SECONDS,
    RedisSecretUnavailable,
    SecretCredentials,
)
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import load_settings
from chalicelib.domain.errors import ServiceUnavailable
from tests.support.secrets import CountingClient, FakeClock, temporary_secret
from tests.support.servers import RedisClusterServers, RedisServer, running

USER = "sessionsync"
PASSWORD = "first-p@ss/word:1"
ROTATED = "second-p@ss/word:2"


def require_the_acl_user(server: RedisServer) -> None:
    """One ACL user and no anonymous default user, as ElastiCache RBAC has it."""
    admin = redis.Redis(port=server.port, socket_timeout=2)
    admin.acl_setuser(USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"],
                      channels=["*"], commands=["+@all"])
    admin.acl_setuser("default", enabled=False)
    admin.close()


@pytest.fixture
def acl_redis(tmp_path):
    with running(RedisServer(tmp_path / "redis")) as server:
        require_the_acl_user(server)
        yield server


def as_user(server: RedisServer, password: str) -> redis.Redis:
    return redis.Redis(port=server.port, username=USER, password=password, socket_timeout=2)


@pytest.fixture
def redis_secret(localstack_settings):
    client = aws.client("secretsmanager", localstack_settings)
    with temporary_secret(client, "sessionsync-test-redis", {"username": USER, "password": PASSWORD}) as arn:
        yield client, arn


@pytest.mark.localstack
def test_the_redis_password_is_read_from_secrets_manager_and_never_sits_in_the_url(
        acl_redis, redis_secret, session_id):
    client, arn = redis_secret
    anonymous = connect_redis(load_settings({"REDIS_URL": acl_redis.url}))
    with pytest.raises(ServiceUnavailable):
        SessionStore(anonymous).get(session_id)  # the server does require a password
    anonymous.close()

    settings = load_settings({"REDIS_URL": acl_redis.url, "REDIS_SECRET_ARN": arn})
    app = connect_redis(settings, client)
    try:
        store = SessionStore(app)
        store.create(session_id, '{"from":"secret"}', 60)
        assert store.get(session_id).state == {"from": "secret"}
        assert app.acl_whoami() == USER
        assert PASSWORD not in settings.redis_url and PASSWORD not in repr(settings)
    finally:
        app.close()


@pytest.mark.localstack
def test_a_rotated_password_reaches_new_connections_once_the_cached_one_is_old(
        acl_redis, redis_secret, session_id):
    client, arn = redis_secret
    counting, clock = CountingClient(client), FakeClock()
    settings = load_settings({"REDIS_URL": acl_redis.url, "REDIS_SECRET_ARN": arn})
    app = connect_redis(settings, counting,
                        credential_provider=SecretCredentials(counting, arn, clock=clock))
    try:
        store = SessionStore(app)
        store.create(session_id, '{"n":1}', 60)
        app.connection_pool.disconnect()
        assert store.get(session_id).version == 1
        assert counting.calls == 1  # a reconnect within the refresh reuses the read

        # rotation as ElastiCache does it: both passwords valid, the secret
        # updated, then the old password removed
        admin = as_user(acl_redis, PASSWORD)
        admin.acl_setuser(USER, enabled=True, passwords=[f"+{ROTATED}"])
        client.put_secret_value(SecretId=arn, SecretString=json.dumps(
            {"username": USER, "password": ROTATED}))
        clock.now += SECRET_REFRESH_SECONDS
        app.connection_pool.disconnect()
        assert store.get(session_id).version == 1
        admin.acl_setuser(USER, enabled=True, passwords=[f"-{PASSWORD}"])
        admin.close()

        app.connection_pool.disconnect()
        store.update(session_id, '{"n":2}', 1)
        assert store.get(session_id).state == {"n": 2}
        assert counting.calls == 2
        with pytest.raises(redis.AuthenticationError):
            as_user(acl_redis, PASSWORD).ping()
    finally:
        app.close()


@pytest.mark.localstack
def test_a_secret_that_cannot_be_read_is_a_503_naming_the_setting_and_keeps_good_credentials(
        acl_redis, redis_secret, session_id):
    client, arn = redis_secret
    clock = FakeClock()
    credentials = SecretCredentials(client, arn, clock=clock)
    app = connect_redis(load_settings({"REDIS_URL": acl_redis.url}), credential_provider=credentials)
    try:
        store = SessionStore(app)
        store.create(session_id, "{}", 60)

        client.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
        clock.now += SECRET_REFRESH_SECONDS
        app.connection_pool.disconnect()
        assert store.get(session_id).version == 1  # the last good password

        missing = SecretCredentials(client, arn, clock=clock)
        cold = connect_redis(load_settings({"REDIS_URL": acl_redis.url}), credential_provider=missing)
        with pytest.raises(ServiceUnavailable) as caught:
            SessionStore(cold).get(session_id)
        cold.close()
        cause = caught.value.__cause__
        assert isinstance(cause, RedisSecretUnavailable)
        assert "REDIS_SECRET_ARN: ResourceNotFoundException" in str(cause)
        assert arn not in str(cause) and caught.value.dependency == "redis"
        clock.now += SECRET_RETRY_SECONDS  # the next connection asks again
        with pytest.raises(RedisSecretUnavailable):
            missing.get_credentials()
    finally:
        app.close()


@pytest.mark.localstack
def test_a_cluster_client_authenticates_to_every_node_with_the_secret(tmp_path, redis_secret):
    client, arn = redis_secret
    with running(RedisClusterServers(tmp_path / "cluster")) as cluster:
        for node in cluster.nodes:
            require_the_acl_user(node)
        settings = load_settings({"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true",
                                  "REDIS_SECRET_ARN": arn})
        app = connect_redis(settings, client)  # reads the slot map: authenticates now
        try:
            store = SessionStore(app)
            ids = [f"secret-cluster-{uuid.uuid4().hex[:8]}-{i}" for i in range(12)]
            for sid in ids:
                store.create(sid, "{}", 60)
            assert all(store.get(sid).version == 1 for sid in ids)
            whoami = app.execute_command("ACL WHOAMI", target_nodes=RedisCluster.ALL_NODES)
            assert set(whoami.values()) == {USER}
        finally:
            app.close()
