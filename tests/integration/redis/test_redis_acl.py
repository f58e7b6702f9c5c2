"""The deployed app user's ACL (infra/stacks/cache.yaml's AccessString, read
from the template as deployed) on a redis-server of the test's own: every
key family the service writes is one that user may touch."""
from __future__ import annotations

import time
import uuid

import pytest
import redis
from cfnlint.decode import cfn_yaml

from chalicelib.adapters.redis.store import SessionStore
from chalicelib.adapters.redis.tenant_counts import TenantCounts
from sessionsync import marker_migration
from tests.support.constants import PROJECT_DIR
from tests.support.markers import to_previous_format

USER, PASSWORD = "app", "app-password-1"


def _access_string() -> str:
    cache = cfn_yaml.loads((PROJECT_DIR / "infra/stacks/cache.yaml").read_text())["Resources"]
    users = [r["Properties"]["AccessString"] for r in cache.values() if r["Type"] == "AWS::ElastiCache::User"]
    return next(access for access in users if access.startswith("on "))


@pytest.fixture
def app_client(throwaway_redis):
    admin = redis.Redis(port=throwaway_redis.port, socket_timeout=5)
    admin.execute_command("ACL", "SETUSER", USER, "reset", f">{PASSWORD}", *_access_string().split())
    client = redis.Redis(port=throwaway_redis.port, username=USER, password=PASSWORD, socket_timeout=5)
    yield client
    client.close()
    admin.close()


def test_the_app_user_runs_every_session_script(app_client):
    store = SessionStore(app_client)
    sid = f"acl-{uuid.uuid4().hex[:8]}"
    created = store.create(sid, '{"n":0}', 60)
    store.update(sid, '{"n":1}', 1)
    store.delete(sid, 2)
    assert store.marker(sid) is not None and store.marker(sid).deleted
    assert created.session.version == 1


def test_the_app_user_keeps_a_tenant_s_count(app_client):
    counts = TenantCounts(app_client)

    reservation = counts.reserve("acme", f"acme/{uuid.uuid4().hex[:8]}", int(time.time() * 1000) + 60_000, 10)

    assert reservation.reserved


def test_the_app_user_migrates_markers(app_client):
    store = SessionStore(app_client)
    sid = f"acl-{uuid.uuid4().hex[:8]}"
    store.create(sid, '{"n":0}', 60)
    to_previous_format(app_client, sid)

    result = marker_migration.migrate(app_client, batch=10)

    assert (result.moved, result.remaining) == (1, 0)
