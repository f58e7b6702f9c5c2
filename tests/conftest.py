"""Shared fixtures: real Redis (single node and a local 3-master cluster),
real PostgreSQL, LocalStack.  A missing service FAILS the test run; nothing
here skips.  Every fixture that creates something removes it in a finalizer.
"""
from __future__ import annotations

import io
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from redis.cluster import RedisCluster

from chalicelib import runtime
from chalicelib.adapters.redis.client import connect_redis
from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.observability import logs, metrics
from tests.servers import RedisClusterServers, RedisServer, ReplicatedRedis, running

# Tests use database 1 of the machine's Redis so that `make run` (db 0) and
# the test suite can share a machine.
REDIS_TEST_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/1")
# Pub/Sub channels belong to the server, not to a database: writes on the
# machine's Redis publish on a channel of the test run's own, never on the
# one a developer's `sessionsync watch` reads.
TEST_CHANNEL = f"sessionsync-test-{uuid.uuid4().hex[:8]}"
API_KEY = "test-key-0123456789abcdef"
# The headers of an authenticated call to the app, and of one with a JSON body.
BEARER = {"Authorization": f"Bearer {API_KEY}"}
AUTH = {**BEARER, "Content-Type": "application/json"}
# The repository: chalice.test reads .chalice/config.json from here.
PROJECT_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def redis_single() -> redis.Redis:
    # the client the service builds (its hot path included), so that every
    # store test runs on it; with a patient timeout for a busy machine
    client = connect_redis(Settings(redis_url=REDIS_TEST_URL, redis_timeout=5.0))
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_TEST_URL}: {exc} (run scripts/services.sh)")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def redis_cluster_servers(tmp_path_factory) -> RedisClusterServers:
    with running(RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))) as servers:
        yield servers


@pytest.fixture(scope="session")
def redis_cluster(redis_cluster_servers) -> RedisCluster:
    client = RedisCluster.from_url(redis_cluster_servers.url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture(params=["single", "cluster"])
def any_redis(request):
    """The same test against the single node and against the cluster."""
    if request.param == "single":
        return request.getfixturevalue("redis_single")
    return request.getfixturevalue("redis_cluster")


@pytest.fixture
def store(any_redis) -> SessionStore:
    return SessionStore(any_redis, channel=f"session-updates-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def throwaway_redis(tmp_path):
    """A redis-server of the test's own; the test may stop or pause it."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    if server.proc:
        server.resume()  # a paused server would ignore SIGTERM
    server.stop()


@pytest.fixture
def replicated_redis(tmp_path):
    """A primary + replica of the test's own behind a proxy standing in for
    the endpoint's DNS name (tests/servers.ReplicatedRedis); the test may
    fail it over."""
    with running(ReplicatedRedis(tmp_path / "replicated")) as pair:
        yield pair


@pytest.fixture
def session_id() -> str:
    return f"t-{uuid.uuid4().hex}"


@pytest.fixture
def app_settings() -> Settings:
    """Settings for in-process app tests: test Redis, no pipeline."""
    return Settings(redis_url=REDIS_TEST_URL, api_keys=(API_KEY,), channel=TEST_CHANNEL)


@contextmanager
def app_client(stage_name: str = "local", project_dir: Path = PROJECT_DIR):
    """The app in process (chalice.test), its HTTP side, with the stage's
    config; the runtime is whatever the test installed."""
    from chalice.test import Client

    from app import app
    with Client(app, stage_name=stage_name, project_dir=str(project_dir)) as client:
        yield client.http


@pytest.fixture
def api(use_settings, app_settings, redis_single):
    """The app in process on the test Redis, without the pipeline."""
    use_settings(app_settings)
    with app_client() as http:
        yield http


@pytest.fixture
def use_settings():
    """Install settings (and objects) into the app's runtime; reset after."""
    def install(settings: Settings, **objects):
        runtime.reset()
        runtime.install(settings=settings, **objects)
    yield install
    runtime.reset()


# --- the durable pipeline: PostgreSQL, LocalStack SQS -------------------------

PG_TEST_ADMIN_URL = os.environ.get("PG_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
LOCALSTACK_URL = os.environ.get("LOCALSTACK_URL", "http://127.0.0.1:4566")


def _database_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def pg_test_dsn() -> str:
    """A fresh database sessionsync_test_<random>, migrated; dropped at the end."""
    import psycopg

    from sessionsync import provisioning
    dsn = _database_url(PG_TEST_ADMIN_URL, f"sessionsync_test_{uuid.uuid4().hex[:10]}")
    try:
        provisioning.ensure_database(dsn)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_TEST_ADMIN_URL}: {exc} (run scripts/services.sh)")
    try:
        provisioning.migrate(dsn)
        yield dsn
    finally:
        provisioning.drop_database(dsn)


@pytest.fixture
def empty_dsn():
    """A database of its own, created empty (no migrations); dropped after the test."""
    from sessionsync import provisioning
    dsn = _database_url(PG_TEST_ADMIN_URL, f"sessionsync_mig_{uuid.uuid4().hex[:10]}")
    assert provisioning.ensure_database(dsn) is True
    yield dsn
    provisioning.drop_database(dsn)


@pytest.fixture(scope="session")
def chalice_packaged(tmp_path_factory) -> Path:
    """The directory `chalice package --stage dev --merge-template
    infra/chalice-merge.json` wrote (sam.json, deployment.zip), for a copy of
    the project and without the network (tests/packaging_support.py)."""
    from tests.packaging_support import PROJECT_DIR, chalice_package
    return chalice_package(tmp_path_factory.mktemp("packaged"), tmp_path_factory.mktemp("packaging"),
                           "--stage", "dev", "--merge-template",
                           str(PROJECT_DIR / "infra" / "chalice-merge.json"))


@pytest.fixture
def database(pg_test_dsn):
    from chalicelib.adapters.postgres.database import Database
    db = Database.from_dsn(pg_test_dsn)
    yield db
    db.close()


@pytest.fixture(scope="session")
def aws_test_environment():
    """LocalStack accepts any credentials; boto3 needs some to sign."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def localstack_settings(aws_test_environment) -> Settings:
    return Settings(aws_endpoint_url=LOCALSTACK_URL, aws_region="us-east-1")


@pytest.fixture(scope="session")
def sqs(localstack_settings):
    """A boto3 SQS client on LocalStack (fails the run when it does not answer)."""
    from botocore.exceptions import BotoCoreError

    from chalicelib.adapters import aws
    client = aws.client("sqs", localstack_settings)
    try:
        client.list_queues(MaxResults=1)
    except BotoCoreError as exc:
        pytest.fail(f"LocalStack is not reachable at {LOCALSTACK_URL}: {exc} (run scripts/localstack.sh)")
    return client


@pytest.fixture
def queue_pair(sqs):
    """A main queue + DLQ (redrive after 5 receives) with unique names; deleted after."""
    from sessionsync import provisioning
    name = f"sessionsync-test-{uuid.uuid4().hex[:10]}"
    pair = provisioning.ensure_queues(sqs, name, provisioning.dlq_name_for(name))
    yield pair
    provisioning.delete_queues(sqs, pair)


@pytest.fixture(scope="module")
def pipeline_redis(tmp_path_factory):
    """A redis-server of the module's own: its outboxes hold only the module's events."""
    server = RedisServer(tmp_path_factory.mktemp("pipeline-redis")).start()
    yield server
    server.stop()


@pytest.fixture
def pipeline(pipeline_redis, pg_test_dsn, sqs, queue_pair, database):
    """Store, producer, queues, database, consumer and relay, all real (tests/pipeline_support.py)."""
    from tests.pipeline_support import Pipeline
    client = redis.Redis.from_url(pipeline_redis.url, socket_timeout=5)
    yield Pipeline(sqs, queue_pair, SessionStore(client), database, pg_test_dsn)
    client.close()


@pytest.fixture
def pipeline_settings(pipeline, pipeline_redis, localstack_settings) -> Settings:
    """App settings wired to ``pipeline`` (Redis, PostgreSQL, queues)."""
    return Settings(redis_url=pipeline_redis.url, api_keys=(API_KEY,), database_url=pipeline.dsn,
                    queue_url=pipeline.queues.url, dlq_url=pipeline.queues.dlq_url,
                    aws_endpoint_url=LOCALSTACK_URL, aws_region="us-east-1")


@pytest.fixture
def throwaway_postgres():
    """A PostgreSQL server of the test's own (tests/servers.PostgresServer); the
    test may stop and start it.  Removed, data directory included, after."""
    from tests.servers import PostgresServer
    server = PostgresServer()
    try:
        server.start()
    except BaseException:
        server.destroy()
        raise
    yield server
    server.destroy()


@pytest.fixture
def log_lines():
    """Every sessionsync log line, at DEBUG, parsed; logging restored after."""
    stream = io.StringIO()
    logs.configure("DEBUG", stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logs.configure()


@pytest.fixture
def emf_lines():
    """The EMF metric lines written during the test, decoded."""
    stream = io.StringIO()
    metrics.configure(stream=stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    metrics.configure()


@pytest.fixture
def moto_sqs(monkeypatch):
    """moto's in-process SQS with a main queue and a DLQ (fast unit tests of SQS calls)."""
    import boto3
    from moto import mock_aws
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with mock_aws():
        client = boto3.client("sqs", region_name="us-east-1")
        queue = client.create_queue(QueueName="main")["QueueUrl"]
        dlq = client.create_queue(QueueName="dead")["QueueUrl"]
        yield SimpleNamespace(client=client, queue=queue, dlq=dlq)
