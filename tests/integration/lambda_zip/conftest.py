"""The zip tier: every function of the deployment package, run from the
unpacked ``deployment.zip`` in a bare interpreter (tests/support/lambda_runtime.py),
configured as the packaged template configures it, against a Redis of the
module's own, a database of its own, LocalStack's SQS and Secrets Manager.

``lambda_stack`` stands up what the ``byo`` stage ("bring your own Redis
and PostgreSQL") would point the functions at: its queues, the API-key
secret and the database secret (RDS's JSON format) in LocalStack, and
resolves each function's Environment from the template with those stand-ins,
as CloudFormation would.  Two departures, named where they are made:
REDIS_URL is ``redis://`` (the template says ``rediss://``: TLS is the Redis
TLS tests' subject, tests/integration/redis), and the database secret says
``sslmode=disable`` (a local server without TLS).
"""
from __future__ import annotations

import json
import stat
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.lambda_zip.utils import API_KEY, READER_RECORD
from tests.support.constants import PG_TEST_ADMIN_URL, database_url
from tests.support.lambda_runtime import LambdaFunction, function_environment, template_functions
from tests.support.servers import RedisServer


@pytest.fixture(scope="session")
def lambda_task_root(chalice_packaged, tmp_path_factory) -> Iterator[Path]:
    """deployment.zip unpacked, as Lambda unpacks it into /var/task."""
    root = tmp_path_factory.mktemp("var-task")
    with zipfile.ZipFile(chalice_packaged / "deployment.zip") as package:
        package.extractall(root)
    # read-only, as /var/task is (the interpreter runs with -B besides: as
    # root, this process could write anyway)
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield root
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.fixture(scope="session")
def lambda_runtime_dir(tmp_path_factory) -> Path:
    """What the runtime provides beside the code (/var/runtime: boto3...)."""
    from tests.support.packaging import runtime_provided
    return runtime_provided(tmp_path_factory.mktemp("var-runtime"))


@pytest.fixture(scope="session")
def packaged_template(chalice_packaged) -> dict[str, Any]:
    return json.loads((chalice_packaged / "sam.json").read_text())


class LambdaStack:
    """The functions of the package with the stand-ins of one stack.

    ``replaced``: variables the template sets, given another value here;
    ``added``: variables the template does not set (AWS_ENDPOINT_URL: the
    runtime has none, LocalStack stands in for AWS here).
    """

    def __init__(self, template: dict[str, Any], task_root: Path, runtime_dir: Path, workdir: Path,
                 refs: dict[str, str], *, replaced: dict[str, str], added: dict[str, str],
                 redis: RedisServer, database_url: str, queues: Any) -> None:
        self.template = template
        self.task_root = task_root
        self.runtime_dir = runtime_dir
        self.workdir = workdir
        self.refs = refs
        self.replaced = replaced
        self.added = added
        self.redis = redis
        self.database_url = database_url
        self.queues = queues
        self.specs = template_functions(template)
        self.started: list[LambdaFunction] = []

    def environment(self, logical_id: str, **extra: str) -> dict[str, str]:
        env = function_environment(self.specs[logical_id], self.template, self.refs)
        env.update({k: v for k, v in self.replaced.items() if k in env})
        return {**env, **self.added, **extra}

    def function(self, logical_id: str, **extra: str) -> LambdaFunction:
        """A new execution environment of the function, started (cold);
        ``extra``: variables beside the template's (a test's own knobs)."""
        function = LambdaFunction(self.specs[logical_id], self.task_root, self.runtime_dir,
                                  self.environment(logical_id, **extra),
                                  self.workdir / f"{logical_id}-{uuid.uuid4().hex[:6]}.log")
        self.started.append(function)
        function.start()
        return function

    def stop(self) -> None:
        for function in self.started:
            function.stop()


@pytest.fixture(scope="module")
def stack_redis(tmp_path_factory) -> Iterator[RedisServer]:
    """A redis-server of the module's own: the tests may kill its clients."""
    server = RedisServer(tmp_path_factory.mktemp("zip-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack_database() -> Iterator[str]:
    """An empty database of the module's own (the migration function migrates it)."""
    from sessionsync import provisioning
    dsn = database_url(PG_TEST_ADMIN_URL, f"sessionsync_zip_{uuid.uuid4().hex[:10]}")
    provisioning.ensure_database(dsn)
    yield dsn
    provisioning.drop_database(dsn)


@pytest.fixture(scope="module")
def stack_queues(sqs) -> Iterator[Any]:
    from sessionsync import provisioning
    name = f"sessionsync-zip-{uuid.uuid4().hex[:10]}"
    pair = provisioning.ensure_queues(sqs, name, provisioning.dlq_name_for(name))
    yield pair
    provisioning.delete_queues(sqs, pair)


@pytest.fixture(scope="module")
def secrets(localstack_settings) -> Any:
    from chalicelib.adapters import aws
    return aws.client("secretsmanager", localstack_settings)


def stack_refs(template: dict[str, Any], *, redis_port: int, queues: Any, api_keys_arn: str,
               db_secret_arn: str, db_host: str = "") -> dict[str, str]:
    """The template's parameters for the ``byo`` stage pointed at the local
    services, and stand-ins for what the stack's resources would resolve to."""
    from sessionsync.provisioning import dlq_name_for
    parameters = {name: str(spec.get("Default", "")) for name, spec in template["Parameters"].items()}
    queue_name = queues.url.rsplit("/", 1)[1]
    parameters.update(
        VpcMode="none", CacheMode="external", DatabaseMode="external", RedisEndpoint="127.0.0.1",
        RedisPort=str(redis_port), RedisClusterMode="false", RedisAuthSecretArn="",
        DbSecretArn=db_secret_arn, DbHost=db_host, ApiKeysSecretArn=api_keys_arn, MigrateOnDeploy="true",
        QueueName=queue_name, DeadLetterQueueName=dlq_name_for(queue_name), QueueType="standard",
        SyncEventsRetentionDays="30")
    return {**parameters, "AWS::StackName": "sessionsync-zip", "AWS::Region": "us-east-1",
            "AWS::AccountId": "000000000000", "AWS::Partition": "aws",
            "SessionQueue": queues.url, "SessionDeadLetterQueue": queues.dlq_url,
            "SessionQueue.QueueName": queue_name,
            "SessionDeadLetterQueue.QueueName": dlq_name_for(queue_name),
            # the migration step's answer (Data.Version) once it ran
            "SchemaMigrations.Version": "0"}


@contextmanager
def stack_of(template: dict[str, Any], task_root: Path, runtime_dir: Path, workdir: Path, redis: RedisServer,
             database: str, queues: Any, secrets: Any, *, db_host: str = "") -> Iterator[LambdaStack]:
    """The functions configured as the ``byo`` stage would configure them
    for these services (DbHost: ``db_host``, a pooler's host:port, or the
    secret's host when empty); the secrets deleted and the functions stopped after."""
    from psycopg import conninfo

    from tests.support.constants import LOCALSTACK_URL
    from tests.support.secrets import temporary_secret

    params = conninfo.conninfo_to_dict(database)
    db_secret = {"engine": "postgres", "username": params.get("user", "postgres"), "password": "unused",
                 "host": params.get("host", "127.0.0.1"), "port": int(params.get("port", 5432)),
                 "dbname": params["dbname"], "sslmode": "disable"}
    keys = {"api_keys": [API_KEY], "keys": [READER_RECORD.to_dict()]}
    with temporary_secret(secrets, "sessionsync-zip-api-keys", keys) as keys_arn, \
            temporary_secret(secrets, "sessionsync-zip-db", db_secret) as db_arn:
        refs = stack_refs(template, redis_port=redis.port, queues=queues, api_keys_arn=keys_arn,
                          db_secret_arn=db_arn, db_host=db_host)
        stack = LambdaStack(template, task_root, runtime_dir, workdir, refs,
                            replaced={"REDIS_URL": f"redis://127.0.0.1:{redis.port}"},
                            # LocalStack, standing in for AWS
                            added={"AWS_ENDPOINT_URL": LOCALSTACK_URL},
                            redis=redis,
                            database_url=database, queues=queues)
        try:
            yield stack
        finally:
            stack.stop()


@pytest.fixture(scope="module")
def lambda_stack(packaged_template, lambda_task_root, lambda_runtime_dir, tmp_path_factory, stack_redis,
                 stack_database, stack_queues, secrets) -> Iterator[LambdaStack]:
    logs = tmp_path_factory.mktemp("zip-logs")
    with stack_of(packaged_template, lambda_task_root, lambda_runtime_dir, logs, stack_redis, stack_database,
                  stack_queues, secrets) as stack:
        yield stack


@pytest.fixture(scope="module")
def migrated(lambda_stack) -> dict[str, Any]:
    """The migration function, invoked directly, on the empty database."""
    migrations = lambda_stack.function("RunMigrations")
    invocation = migrations.invoke({"action": "migrate"})
    assert invocation.ok, invocation.error
    lambda_stack.refs["SchemaMigrations.Version"] = str(invocation.result["version"])
    return invocation.result


@pytest.fixture(scope="module")
def authorizer(lambda_stack) -> LambdaFunction:
    return lambda_stack.function("Authorizer")
