"""Create what the pipeline needs, idempotently: the SQS queue pair, the
local database, its schema.  ``sessionsync bootstrap`` calls ``bootstrap``;
tests call the parts.  Running it again converges (attributes are set, not
only given at creation) and creates nothing twice.

Queue settings and why:

* main queue VisibilityTimeout = 6 x the consumer's timeout (180 s), so a
  batch that Lambda is still retrying is not handed to a second consumer;
* RedrivePolicy to the DLQ after maxReceiveCount = 5 receives: a message
  that keeps failing with a retryable error ends in the DLQ, never loops;
* MaximumMessageSize 1 MiB: an event carries a state of up to 256 KiB
  (MAX_STATE_BYTES), which an escaped JSON encoding can grow past the old
  256 KiB SQS limit;
* the DLQ keeps messages 14 days (the maximum), longer than the main queue
  (4 days): SQS keeps a redriven message's original enqueue time, so a DLQ
  shorter than the main queue would expire messages early.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import conninfo, sql

from chalicelib.adapters.postgres import connection
from chalicelib.config import SESSION_QUEUE_NAME, Settings, default_queue_name
from chalicelib.constants import FIFO_SUFFIX, QUEUE_MAX_RECEIVE_COUNT, QUEUE_VISIBILITY_TIMEOUT
from chalicelib.domain.errors import ConfigurationError, ServiceUnavailable
from sessionsync import migrations

log = logging.getLogger("sessionsync.provisioning")

MAX_MESSAGE_SIZE = 1024 * 1024
MAIN_RETENTION_SECONDS = 4 * 24 * 3600
DLQ_RETENTION_SECONDS = 14 * 24 * 3600


@dataclass(frozen=True)
class QueuePair:
    url: str
    arn: str
    dlq_url: str
    dlq_arn: str


def dlq_name_for(queue_name: str) -> str:
    # a FIFO queue's DLQ must be FIFO too, and keep the .fifo suffix last
    if queue_name.endswith(FIFO_SUFFIX):
        return f"{queue_name.removesuffix(FIFO_SUFFIX)}-dlq{FIFO_SUFFIX}"
    return f"{queue_name}-dlq"


def ensure_queues(sqs: Any, name: str, dlq_name: str, *, fifo: bool = False,
                  visibility_timeout: int = QUEUE_VISIBILITY_TIMEOUT,
                  max_receive_count: int = QUEUE_MAX_RECEIVE_COUNT) -> QueuePair:
    """Create (or converge) the DLQ and the main queue with its redrive policy.

    ``fifo``: both are FIFO queues (their names end in .fifo), with
    deduplication by the producer's ids, never by content: two events
    never share an id, and a resent event keeps its id.

    Raises ServiceUnavailable when SQS cannot be reached or refuses.
    """
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        # FifoQueue can only be set at creation
        created = ({"FifoQueue": "true", "ContentBasedDeduplication": "false"} if fifo else {})
        dlq_url = sqs.create_queue(QueueName=dlq_name, Attributes=created)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=dlq_url, Attributes={
            "MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS),
            "MaximumMessageSize": str(MAX_MESSAGE_SIZE)})
        dlq_arn = _arn(sqs, dlq_url)
        url = sqs.create_queue(QueueName=name, Attributes=created)["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "MessageRetentionPeriod": str(MAIN_RETENTION_SECONDS),
            "MaximumMessageSize": str(MAX_MESSAGE_SIZE),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": max_receive_count})})
        return QueuePair(url, _arn(sqs, url), dlq_url, dlq_arn)
    except (BotoCoreError, ClientError) as exc:
        raise ServiceUnavailable(f"cannot create the queues: {exc}", dependency="sqs") from exc


def _arn(sqs: Any, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def delete_queues(sqs: Any, pair: QueuePair) -> None:
    """Delete both queues (tests); a queue already gone is fine."""
    from botocore.exceptions import ClientError
    for url in (pair.url, pair.dlq_url):
        try:
            sqs.delete_queue(QueueUrl=url)
        except ClientError:
            pass


def ensure_database(dsn: str, *, maintenance_db: str = "postgres", pooled: bool = False) -> bool:
    """Create the database ``dsn`` names if it does not exist; True if created.

    Connects to ``maintenance_db`` on the same server for that.  Raises
    psycopg.OperationalError when the server cannot be reached.
    """
    params = conninfo.conninfo_to_dict(dsn)
    name = params.get("dbname")
    if not name:
        return False  # the default database (the user's): it exists or libpq says so
    params["dbname"] = maintenance_db
    with connection.connect(conninfo.make_conninfo("", **params), statement_timeout_ms=None,
                            pooled=pooled) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        try:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
        except psycopg.errors.DuplicateDatabase:
            return False  # created by a concurrent bootstrap
        return True


def drop_database(dsn: str, *, maintenance_db: str = "postgres") -> None:
    """Drop the database ``dsn`` names, closing its connections (tests)."""
    params = conninfo.conninfo_to_dict(dsn)
    name = params["dbname"]
    params["dbname"] = maintenance_db
    with connection.connect(conninfo.make_conninfo("", **params), statement_timeout_ms=None) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name))))


def migrate(dsn: str, *, pooled: bool = False) -> list[migrations.Migration]:
    """Apply pending migrations to ``dsn``; return those applied.  ``pooled``
    (DB_POOLED): through a transaction pooler, which refuses startup options
    (the migrations' advisory lock is the transaction's either way)."""
    with connection.connect(dsn, statement_timeout_ms=None, lock_timeout_ms=None,
                            application_name="sessionsync-migrate", pooled=pooled) as conn:
        return migrations.migrate(conn)


def migration_status(dsn: str, *, pooled: bool = False) -> list[migrations.MigrationState]:
    """Each migration on disk and in ``dsn``'s database, with its state; reads only."""
    with connection.connect(dsn, application_name="sessionsync-migrate", pooled=pooled) as conn:
        return migrations.status(conn)


@dataclass(frozen=True)
class BootstrapReport:
    queues: QueuePair | None
    database_created: bool
    migrations_applied: list[str]


def bootstrap(settings: Settings, sqs: Any | None, dsn: str | None) -> BootstrapReport:
    """Queues (when ``sqs`` is given), database and schema (when ``dsn`` is).

    Queue names come from SESSION_QUEUE_NAME / SESSION_DLQ_NAME (default
    sessionsync-events, or sessionsync-events.fifo with
    SESSION_QUEUE_FIFO, and <name>-dlq).  Raises ServiceUnavailable,
    ConfigurationError, MigrationError, psycopg.Error.
    """
    queues = None
    if sqs is not None:
        if settings.queue_url and not settings.queue_name:
            raise ConfigurationError(SESSION_QUEUE_NAME, "bootstrap creates queues by name: set it "
                                     "(SESSION_QUEUE_URL alone names an existing queue)")
        name = settings.queue_name or default_queue_name(settings.queue_fifo)
        queues = ensure_queues(sqs, name, settings.dlq_name or dlq_name_for(name),
                               fifo=settings.queue_fifo)
    created, applied = False, []
    if dsn is not None:
        created = ensure_database(dsn, pooled=settings.db_pooled)
        applied = [m.filename for m in migrate(dsn, pooled=settings.db_pooled)]
    return BootstrapReport(queues, created, applied)
