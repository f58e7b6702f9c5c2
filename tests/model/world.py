"""The real system the model is checked against, and the faults it can suffer.

One world per test: a primary and a replica behind a proxy standing in for
the endpoint's DNS name (tests/support/servers.ReplicatedRedis), or, in
``ClusterWorld``, a Redis Cluster of three shards of a master and a replica
(tests/support/servers.ReplicatedRedisCluster); SQS on
LocalStack behind a proxy, a PostgreSQL database of the world's own (the
expiry sweep walks every session of its database), consumer and outbox
relay processes (to SIGKILL), the expiry sweep, and the app in process
(chalice.test) over HTTP.  Examples share it: each uses ids of its own, and
``heal`` undoes every fault between examples.  Every loop is bounded.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis

from chalicelib import runtime
from chalicelib.adapters.postgres.database import Database
from chalicelib.adapters.redis.keys import session_keys
from chalicelib.adapters.redis.scripts import (
    CREATE_SCRIPT,
    DELETE_SCRIPT,
    TOUCH_SCRIPT,
    UPDATE_SCRIPT,
)
from chalicelib.config import Settings
from chalicelib.constants import MIN_RETENTION_DAYS
from chalicelib.domain.keys import SCOPES
from chalicelib.pipeline.expiry import ExpirySweep
from chalicelib.pipeline.retention import purge_events
from tests.chaos.stack import ChaosStack
from tests.support.app import app_client
from tests.support.constants import BEARER
from tests.support.keys import key_set
from tests.support.markers import forget_marker
from tests.support.servers import ReplicatedRedis, ReplicatedRedisCluster, wait_for

# The settle time after Redis went back in time.  Short, because every fault
# that makes Redis forget waits for the pipeline to drain first (the settle
# time's assumption: it exceeds the pipeline's lag; what a lag beyond it
# loses is the chaos suite's subject, tests/chaos).
SETTLE_SECONDS = 1.0
# The second tenant: its key names the same client ids as the default
# tenant's (the examples'), which must be other sessions.
OTHER_TENANT = "model-b"

# A consumer's messages come back this soon after it was killed.
VISIBILITY_SECONDS = 2

_CONSUMER = r"""
import sys, threading
from chalicelib.adapters import aws
from chalicelib.adapters.postgres.database import Database
from chalicelib.config import Settings
from chalicelib.constants import MIN_RETENTION_DAYS
from chalicelib.domain.keys import SCOPES
from chalicelib.pipeline.consumer import Consumer, SqsRecordSource
from chalicelib.pipeline.dead_letters import DeadLetterQueue
from sessionsync.worker import Worker
queue_url, dlq_url, dsn, endpoint, visibility = sys.argv[1:]
sqs = aws.client("sqs", Settings(aws_endpoint_url=endpoint, aws_region="us-east-1"))
consumer = Consumer(Database.from_dsn(dsn), DeadLetterQueue(sqs, dlq_url), SqsRecordSource(sqs, queue_url))
Worker(sqs, queue_url, consumer.handle, wait_seconds=1, visibility_timeout=int(visibility),
       retry_delay=0.5, report_batch_item_failures=True).run(threading.Event())
"""

# A relay as the scheduled function runs it, in a process of its own (to SIGKILL).
_RELAY = r"""
import sys
from tests.chaos.stack import relay_process_main
relay_process_main(sys.argv[1:])
"""

# The faults of Redis the machine's rules draw, and what each is on either
# world: (on the single node, on the cluster).  Every one applies to both.
REDIS_FAULTS: dict[str, tuple[str, str]] = {
    "key-evicted": ("the session's key deleted on the primary",
                    "the session's key deleted on the master of its slot"),
    "marker-evicted": ("the session's marker deleted on the primary", "likewise, on its master"),
    "flush": ("FLUSHALL on the primary (the replica follows)", "FLUSHALL on every master"),
    "restart-without-persistence": (
        "the primary restarts empty; its replica resynchronises, empty too",
        "the master of the session's slot restarts empty with its nodes.conf (the same node "
        "with its slots: an ElastiCache node replaced without a snapshot); its replica "
        "resynchronises, empty too"),
    "replica-falls-behind": (
        "the replica stops copying the primary (its link's AUTH refused): still a "
        "read-only replica, so a pooled connection on it after a failover meets READONLY",
        "the replica of the session's shard stops copying its master (its link's AUTH "
        "refused); at an example's start, every shard's"),
    "failover": (
        "FAILOVER to the caught-up replica, or, after replica-falls-behind, the replica "
        "promoted as it is; the endpoint's name moves, pooled connections stay",
        "CLUSTER FAILOVER of the session's shard (the master pauses until its replica has "
        "every write), or, after replica-falls-behind, CLUSTER FAILOVER TAKEOVER of the "
        "replica as it is; clients follow MOVED"),
    "reply-cut-after-the-script-ran": (
        "the proxy standing in for the endpoint's name resets the connection of the next "
        "write script after passing it on",
        "the proxy each node announces (cluster-announce-port) does so for the next write "
        "script on each master"),
}

WRITE_SCRIPTS = [hashlib.sha1(s.encode()).hexdigest().encode()
                 for s in (CREATE_SCRIPT, UPDATE_SCRIPT, DELETE_SCRIPT, TOUCH_SCRIPT)]


class World:
    """The world on a single Redis endpoint (a primary and its replica)."""

    #: Redis is a cluster (REDIS_CLUSTER)
    CLUSTER = False

    def __init__(self, redis_pair: Any, dsn: str, localstack_url: str, queues: Any,
                 channel: str) -> None:
        self.redis = redis_pair
        self.dsn = dsn
        self.stack = ChaosStack(redis_url=self.redis_url(), pg_dsn=dsn, localstack_url=localstack_url,
                                queues=queues, channel=channel, consumers=0, relays=0, relay_age=0.3,
                                settle_seconds=SETTLE_SECONDS, redis_cluster=self.CLUSTER)
        self.stack.start()
        self.sweeper = ExpirySweep(self.stack.store, Database.from_dsn(dsn), settle_seconds=SETTLE_SECONDS,
                                   grace_seconds=0.0, batch=10)
        self.consumers: list[subprocess.Popen] = []
        #: the relays (the service has no publisher: they are the only shippers)
        self.relays: list[subprocess.Popen] = []
        self.sqs_is_down = False
        self.lagging = False
        self._exit = ExitStack()
        # the default tenant's plaintext test key (BEARER), and a key of OTHER_TENANT
        keys, (other,) = key_set((OTHER_TENANT, SCOPES))
        self.other_tenant = {"Authorization": f"Bearer {other.token}"}
        runtime.reset()
        runtime.install(settings=Settings(redis_url=self.redis_url(), redis_cluster=self.CLUSTER,
                                          api_keys=keys, channel=channel),
                        service=self.stack.service, store=self.stack.store,
                        database=self.stack.database)
        self.http = self._exit.enter_context(app_client())
        self.start_consumer()
        self.start_relay()

    def redis_url(self) -> str:
        """The endpoint the service and its processes use."""
        return str(self.redis.proxy_url)

    # -- calls -------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, *, other_tenant: bool = False,
             **headers: str) -> tuple[float, float, Any]:
        """(sent, answered, response): wall-clock times, the server's clock;
        with the default tenant's key, or OTHER_TENANT's."""
        all_headers = {**(self.other_tenant if other_tenant else BEARER), **headers}
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
        t0 = time.time()
        reply = getattr(self.http, method.lower())(
            path, headers=all_headers, body=json.dumps(body) if body is not None else b"")
        return t0, time.time(), reply

    # -- the pipeline --------------------------------------------------------------

    def start_consumer(self) -> None:
        endpoint = f"http://127.0.0.1:{self.stack.sqs_proxy.port}"
        self.consumers.append(subprocess.Popen(
            [sys.executable, "-c", _CONSUMER, self.stack.queues.url, self.stack.queues.dlq_url, self.dsn,
             endpoint, str(VISIBILITY_SECONDS)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def kill_consumer(self) -> None:
        """SIGKILL the oldest consumer (mid-batch or not); Lambda starts another."""
        victim = self.consumers.pop(0)
        victim.kill()
        victim.wait(10)
        self.start_consumer()

    def start_relay(self) -> None:
        endpoint = f"http://127.0.0.1:{self.stack.sqs_proxy.port}"
        self.relays.append(subprocess.Popen(
            [sys.executable, "-c", _RELAY, self.redis_url(), self.stack.queues.url, endpoint,
             self.stack.channel, str(self.stack.relay_lease), *(["cluster"] if self.CLUSTER else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def kill_relay(self) -> None:
        """SIGKILL the oldest relay (its lease left held, its sends cut);
        the schedule starts another later (``start_relay``)."""
        if self.relays:
            victim = self.relays.pop(0)
            victim.kill()
            victim.wait(10)

    def sqs_down(self) -> None:
        self.stack.sqs_down()
        self.sqs_is_down = True

    def sqs_back(self) -> None:
        self.stack.sqs_back()
        self.sqs_is_down = False

    def drain(self, session_ids: Iterable[str], timeout: float = 60.0) -> None:
        """The pipeline has persisted (or dead-lettered) every change of these
        sessions: their outbox entries are gone and the queue is empty, twice
        in a row."""
        if self.sqs_is_down:
            self.sqs_back()
        if not self.relays:
            self.start_relay()
        ids = list(session_ids)
        deadline = time.monotonic() + timeout
        quiet, last = 0, None
        while quiet < 2:
            if time.monotonic() > deadline:
                raise AssertionError(f"pipeline not drained within {timeout}s: {last}")
            try:
                last = (len(self.stack.outbox_ids(ids)), self.stack.queue_depth())
            except Exception as exc:  # Redis or SQS coming back
                last = repr(exc)
            quiet = quiet + 1 if last == (0, 0) else 0
            time.sleep(0.15)

    def sweep(self) -> None:
        self.sweeper.run(budget_seconds=2)

    def settled(self, session_ids: Iterable[str]) -> None:
        """Wait out the settle time of these sessions' buckets (after a
        failover or a restart, the first access of each bucket starts it)."""
        store = self.stack.store
        for _ in range(5):
            left = max(store.settle(sid, SETTLE_SECONDS, unrecorded_settled=True)[0] for sid in session_ids)
            if left <= 0:
                return
            time.sleep(left)

    # -- Redis forgetting ------------------------------------------------------------

    def admin(self) -> redis.Redis:
        return ReplicatedRedis.admin(self.redis.primary)

    def evict(self, session_id: str, *, marker: bool = False) -> None:
        with self.admin() as admin:
            if marker:
                forget_marker(admin, session_id)
            else:
                admin.delete(session_keys(session_id)[0])

    def flush(self) -> None:
        with self.admin() as admin:
            admin.flushall()

    def restart(self, session_id: str | None = None) -> None:
        """The primary restarts without persistence: empty, and its replica
        resynchronises from it (empty too)."""
        self.redis.primary.stop()
        # a node that was a replica keeps the snapshot of its last full
        # sync (dump.rdb), which a start would load: gone with the machine
        (self.redis.primary.workdir / "dump.rdb").unlink(missing_ok=True)
        self.redis.primary.start()
        self.redis.move_endpoint()
        with self.admin() as admin:
            wait_for(lambda: _answers(admin), 20, "restarted primary")

    def stop_replication(self, session_id: str | None = None) -> None:
        if not self.lagging:
            # it stays a replica: after a failover it is the demoted node the
            # pooled connections still reach; a master of its own there
            # would take their writes (two masters), not lag
            self.redis.stop_replication(stays_replica=True)
            self.lagging = True

    def failover(self, session_id: str | None = None) -> None:
        """To a caught-up replica, or (after ``stop_replication``) to one
        that lacks the writes made since."""
        self.redis.failover(lose_unreplicated=self.lagging)
        self.lagging = False

    def cut_next_write_reply(self) -> None:
        """The reply to the next write script is cut off: it ran, the client gets a 503."""
        assert self.redis.proxy is not None
        self.redis.proxy.cut_after_request(containing=WRITE_SCRIPTS)

    # -- between examples and at the end ------------------------------------------------

    def heal_redis(self) -> None:
        assert self.redis.proxy is not None
        self.redis.proxy.uncut()
        if self.lagging:
            self.failover()
            self.failover()  # back to a pair that replicates, the history lost

    def heal(self) -> None:
        if self.sqs_is_down:
            self.sqs_back()
        self.heal_redis()
        while len(self.consumers) > 1:
            victim = self.consumers.pop()
            victim.kill()
            victim.wait(10)
        self.consumers = [proc for proc in self.consumers if proc.poll() is None]
        if not self.consumers:
            self.start_consumer()
        while len(self.relays) > 1:
            self.kill_relay()
        self.relays = [proc for proc in self.relays if proc.poll() is None]
        if not self.relays:
            self.start_relay()

    def purge(self) -> int:
        """The audit retention's purge as it runs SYNC_EVENTS_RETENTION_DAYS
        (the shortest allowed) from now: by its own clock (its ``now``) every
        row persisted so far is past the retention.  Small batches: a run of
        several statements, each resuming where the last stopped.  Returns
        the rows it deleted."""
        later = datetime.now(UTC) + timedelta(days=MIN_RETENTION_DAYS, seconds=1)
        return purge_events(self.stack.database, MIN_RETENTION_DAYS, batch_size=7, now=later).purged

    def events(self, session_ids: Iterable[str]) -> tuple[dict[tuple[str, int], tuple[str, Any]],
                                                           dict[str, int]]:
        """(the sync_events rows of these sessions: (id, version) -> (type,
        state); each session's latest version in sync_sessions)."""
        ids = list(session_ids)
        with psycopg.connect(self.dsn) as conn:
            rows = {(sid, int(v)): (kind, state) for sid, v, kind, state in conn.execute(
                "SELECT session_id, version, event_type, state FROM sync_events "
                "WHERE session_id = ANY(%s)", (ids,))}
            latest = {sid: int(v) for sid, v in conn.execute(
                "SELECT session_id, version FROM sync_sessions WHERE session_id = ANY(%s)", (ids,))}
        return rows, latest

    def persisted(self, session_ids: Iterable[str]) -> dict[str, list[tuple[int, str]]]:
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute("SELECT session_id, version, event_type FROM sync_events "
                                "WHERE session_id = ANY(%s) ORDER BY version", (list(session_ids),))
            out: dict[str, list[tuple[int, str]]] = {}
            for sid, version, kind in rows:
                out.setdefault(sid, []).append((int(version), kind))
            return out

    def close(self) -> None:
        for proc in [*self.consumers, *self.relays]:
            proc.kill()
            proc.wait(10)
        self._exit.close()
        runtime.reset()
        self.sweeper.durable.close()  # type: ignore[attr-defined]
        self.stack.close()


class ClusterWorld(World):
    """The world on a Redis Cluster (REDIS_CLUSTER=true): three shards of a
    master and a replica, every node behind a proxy it announces
    (tests/support/servers.ReplicatedRedisCluster).  A fault of one node
    hits the shard of the session the rule names; the others go on."""

    CLUSTER = True
    redis: ReplicatedRedisCluster

    def __init__(self, cluster: ReplicatedRedisCluster, *args: Any, **kwargs: Any) -> None:
        #: master (by port) -> its replica, cut off (``stop_replication``)
        self.cut_off: dict[int, Any] = {}
        super().__init__(cluster, *args, **kwargs)

    def redis_url(self) -> str:
        return self.redis.url

    def _master(self, session_id: str) -> Any:
        return self.redis.master_of(session_keys(session_id)[0])

    def evict(self, session_id: str, *, marker: bool = False) -> None:
        with self.redis.admin(self._master(session_id)) as admin:
            if marker:
                forget_marker(admin, session_id)  # its forms are in the session's slot
            else:
                admin.delete(session_keys(session_id)[0])

    def flush(self) -> None:
        self.redis.flush()

    def restart(self, session_id: str | None = None) -> None:
        """The master of the session's slot restarts without its data,
        nodes.conf kept: the same node, serving the same slots, empty."""
        assert session_id is not None
        node = self._master(session_id)
        replica = self.cut_off.pop(node.port, None)
        if replica is not None:  # a cut-off replica would wait for its link for ever
            self.redis.resume_replication(replica)
        self.redis.restart(node)
        self.lagging = bool(self.cut_off)

    def stop_replication(self, session_id: str | None = None) -> None:
        """The replica of the session's shard (of every shard: None) stops copying."""
        masters = self.redis.master_nodes() if session_id is None else [self._master(session_id)]
        for master in masters:
            if master.port not in self.cut_off:
                self.cut_off[master.port] = self.redis.stop_replication(master)
        self.lagging = bool(self.cut_off)

    def failover(self, session_id: str | None = None) -> None:
        """CLUSTER FAILOVER of the session's shard to its caught-up replica,
        or, when that replica was cut off, TAKEOVER by it as it is."""
        assert session_id is not None
        master = self._master(session_id)
        lagging = self.cut_off.pop(master.port, None) is not None
        self.redis.failover(master, takeover=lagging)
        self.lagging = bool(self.cut_off)

    def cut_next_write_reply(self) -> None:
        """The reply to the next write script on each master is cut off."""
        for master in self.redis.master_nodes():
            self.redis.proxy_of(master).cut_after_request(containing=WRITE_SCRIPTS)

    def heal_redis(self) -> None:
        for proxy in self.redis.proxies:
            proxy.uncut()
        for replica in self.cut_off.values():  # it catches up: nothing is lost
            self.redis.resume_replication(replica)
        self.cut_off.clear()
        self.lagging = False
        self.redis.wait_healthy()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
