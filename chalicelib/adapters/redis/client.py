"""Build the redis-py client sessionsync uses, single node or cluster.

Timeouts are short on purpose: an unreachable Redis must turn into a 503
within about a second, not a Lambda that hangs until its own timeout.
``rediss://`` (TLS) and ``redis://user:password@`` (RBAC / AUTH) URLs are
passed to redis-py unchanged, as ElastiCache in-transit encryption needs.
With REDIS_SECRET_ARN the user name and password come from Secrets Manager
instead, read when a connection authenticates (``SecretCredentials``);
with REDIS_AUTH=iam the password is an ElastiCache IAM token (``IamAuthToken``).
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import PRIMARY, ClusterPipeline, RedisCluster
from redis.exceptions import BusyLoadingError, MasterDownError, ReadOnlyError, RedisClusterException
from redis.retry import Retry

from chalicelib.adapters.redis.credentials import SecretCredentials, iam_auth_token
from chalicelib.config import REDIS_SECRET_ARN, Settings
from chalicelib.domain.errors import ConfigurationError, ServiceUnavailable

RedisClient = redis.Redis | RedisCluster

# Replies after which the command did not run, so sending it again cannot
# apply a write twice.  READONLY and MASTERDOWN come from a node that is a
# replica now: after a failover the endpoint's name points at the promoted
# node, but a pooled connection stays attached to the demoted one.  LOADING
# comes from a node reading its data set after a restart.
NOT_RUN_ERRORS = (ReadOnlyError, MasterDownError, BusyLoadingError)
# Attempts after the first, each on a new connection (so the endpoint's name
# is resolved again), with pauses that keep the whole under the one-second
# budget of a 503.
NOT_RUN_RETRIES = 3
NOT_RUN_BACKOFF = ExponentialBackoff(cap=0.1, base=0.025)
# A cluster command refused with CLUSTERDOWN is sent once more, after
# redis-py's own pause and a reload of the slot map.
CLUSTER_RETRIES = 1
# Connections a pool may open (per node for a cluster).  redis-py's default
# (100 since redis-py 6) fails the 101st concurrent command at once with
# MaxConnectionsError, a 503: ``sessionsync serve`` runs a thread per
# client connection, so a burst of more clients than that got 503s
# (``sessionsync bench --sections http_load``).  A Lambda runs one request
# at a time and never gets near it.  Redis's own default maxclients bounds
# it instead.
POOL_MAX_CONNECTIONS = 10_000
# Histories seen ending (``_Redis.ended_histories``) are kept this long and
# this many: evidence for the failover that ended them, not for a later one.
ENDED_HISTORY_SECONDS = 120.0
ENDED_HISTORIES_KEPT = 8

def connect_redis(settings: Settings, secrets_client: Any = None, **overrides: Any) -> RedisClient:
    """Return a client for ``settings.redis_url``.

    A single-node client connects lazily (no round trip at cold start); a
    cluster client reads the slot map now.  Raises ServiceUnavailable when
    a cluster cannot be reached.  With ``settings.redis_secret_arn`` the
    credentials are read from that secret through ``secrets_client``; with
    REDIS_AUTH=iam they are IAM tokens signed with the default AWS credentials.
    ``overrides`` go to redis-py (tests use them).
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_timeout,
        "socket_timeout": settings.redis_timeout,
        "health_check_interval": 30,
        "client_name": "sessionsync",
        "max_connections": POOL_MAX_CONNECTIONS,
    }
    if settings.redis_secret_arn:
        if secrets_client is None:
            raise ConfigurationError(REDIS_SECRET_ARN, "is set but no Secrets Manager client was given")
        options["credential_provider"] = SecretCredentials(secrets_client, settings.redis_secret_arn)
    url = settings.redis_url
    if settings.redis_auth == "iam":
        options["credential_provider"] = iam_auth_token(settings)
        # the user name goes to the provider: redis-py refuses one beside it
        parts = urlsplit(url)
        url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    options.update(overrides)
    # redis-py never re-sends a command after a connection error or a
    # timeout.  Such a command may have run: the connection can break after
    # Redis executed a CAS script and before its reply arrived, and a re-sent
    # script would then answer ConcurrencyError (or SessionExists) for a write
    # that succeeded, which a client's retry loop would apply twice.  The
    # caller gets a 503, outcome unknown, within the one-second budget of a
    # dependency outage (docs/guarantees.md: a fast 503).  Reads, which are
    # safe to repeat, retry a broken connection themselves (SessionStore.get).
    # Only the replies of NOT_RUN_ERRORS are retried: redis-py then drops the
    # connection and opens a new one.
    if not settings.redis_cluster:
        options.setdefault("retry", Retry(NOT_RUN_BACKOFF, NOT_RUN_RETRIES,
                                          supported_errors=NOT_RUN_ERRORS))
        return _Redis.from_url(url, **options)
    # The cluster client retries by itself (MOVED, ASK, TRYAGAIN: see
    # _Cluster); its ``retry`` only says how often a whole command is tried
    # again after CLUSTERDOWN.
    options.setdefault("retry", Retry(NoBackoff(), CLUSTER_RETRIES))
    # Unlike redis.Redis, a cluster client connects as it is built (it reads
    # the slot map): an unreachable or non-cluster Redis must be a 503.
    try:
        return _Cluster.from_url(url, **options)
    except (RedisClusterException, redis.ConnectionError, redis.TimeoutError) as exc:
        raise ServiceUnavailable(f"Redis Cluster is unavailable: {type(exc).__name__}",
                                 dependency="redis") from exc


# The commands of the hot path: a read (GET, EVALSHA of GET_SCRIPT) and the
# compare-and-set (EVALSHA of UPDATE_SCRIPT), sent on _Redis's own
# connection; EVAL too, the store's answer to NOSCRIPT (a restart, a
# failover), so that the script runs, and is cached, on the node that will
# run the next EVALSHA, not on the one a pooled connection may still point at.
HOT_COMMANDS = frozenset({"GET", "EVALSHA", "EVAL", "SCRIPT LOAD"})
_KEYS_ONLY = frozenset({"keys"})


class _EndedHistories:
    """The histories a client saw end (a demoted primary's account of where
    its history as the primary ended): the evidence SETTLE_SCRIPT weighs
    after a failover.  Kept ENDED_HISTORY_SECONDS, ENDED_HISTORIES_KEPT at most."""

    def _init_ended(self) -> None:
        #: replication id -> (offset its history ended at, when seen)
        self._ended: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._ended_lock = threading.Lock()

    def ended_histories(self) -> list[tuple[str, int]]:
        """(replication id, offset) of each history this client saw end lately."""
        cutoff = time.monotonic() - ENDED_HISTORY_SECONDS
        with self._ended_lock:
            return [(replid, offset) for replid, (offset, seen) in self._ended.items()
                    if seen > cutoff]

    def _keep_ended(self, ended: tuple[str, int] | None) -> None:
        if ended is None:
            return
        replid, offset = ended
        with self._ended_lock:  # the threaded local server's threads share the client
            self._ended[replid] = (offset, time.monotonic())
            self._ended.move_to_end(replid)
            while len(self._ended) > ENDED_HISTORIES_KEPT:
                self._ended.popitem(last=False)


class _Redis(_EndedHistories, redis.Redis):
    """redis.Redis that sends GET and EVALSHA on one connection of its own.

    A warm Lambda serves one request at a time, so checking a connection out
    of the pool and back in, with redis-py's bookkeeping around each command,
    buys nothing there, and it cost a large share of a read's round trip
    (docs/performance.md, "The hot path at wire speed").  The hot
    commands go straight to the connection (redis-py still connects it, with
    TLS, AUTH and the client name, runs the health check after an idle
    spell, parses the reply and raises its errors); everything else
    (pipelines, Pub/Sub, INFO...) goes through the pool as before.

    The retries are the client's, with the same rule: only NOT_RUN_ERRORS
    are sent again, on a new connection; after a connection error or a
    timeout redis-py has dropped the connection, the error goes up (a write
    is never re-sent) and the next command connects again, resolving the
    endpoint's name again.  A thread that finds the connection busy (the
    threaded local server) takes the pool's path instead of waiting.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._init_ended()
        self._forget_hot_connection()
        # a forked child must not talk on its parent's socket (the pool
        # resets itself likewise); the weak reference lets the client go
        after_fork = weakref.WeakMethod(self._forget_hot_connection)
        os.register_at_fork(after_in_child=lambda: (forget := after_fork()) and forget())
        # _pack writes str as UTF-8 (hiredis): a client set up for another
        # encoding, or with a client-side cache (it answers GETs itself),
        # goes through redis-py
        encoder = self.get_encoder()
        self._hot = (encoder.encoding == "utf-8" and encoder.encoding_errors == "strict"
                     and self.get_cache() is None)

    def _close_connection(self, conn: Any, error: Exception | None = None,
                          *args: Any, **kwargs: Any) -> None:
        # the pool's path: redis-py's failure callback, before the retry
        if isinstance(error, ENDED_HISTORY_ERRORS):
            self._note_ended_history(conn)
        super()._close_connection(conn, error, *args, **kwargs)

    def _note_ended_history(self, conn: Any) -> None:
        """Ask the node that refused a write, on the same connection, where
        its history as the primary ended (``ended_history``), and keep it.

        Timeline of the planned failover this witnesses::

            t0  the replica caught up with the primary (history A, offset F)
            t1  the replica is promoted (history B, master_replid2 A,
                second_repl_offset F+1); the old primary is demoted
            t2  the endpoint's name moves to the new primary
            t3  a write on a pooled connection to the demoted node: READONLY;
                here it says history A ended at F
            t4  the write is sent again, on the new primary: F+1 <= F+1, so
                nothing acknowledged in A was lost (SETTLE_SCRIPT)

        Best effort: the connection is dropped right after, whatever happens."""
        try:
            conn.send_command("INFO", "replication")
            raw = conn.read_response()
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            ended = ended_history(dict(line.split(":", 1) for line in text.splitlines()
                                       if ":" in line))
        except Exception:  # deliberately broad: evidence is optional, the retry is not
            return
        self._keep_ended(ended)

    def _forget_hot_connection(self) -> None:
        self._hot_lock = threading.Lock()
        self._hot_connection: Any = None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        # options other than "keys" (which only a client-side cache reads)
        # change how redis-py reads the reply: its path then
        if not (self._hot and args[0] in HOT_COMMANDS and options.keys() <= _KEYS_ONLY
                and self._hot_lock.acquire(blocking=False)):
            return super().execute_command(*args, **options)
        try:
            packed = _pack(args)
            if packed is None:  # an argument only redis-py's encoder knows (or refuses)
                return super().execute_command(*args, **options)
            conn = self._checked_out()
            reply = conn.retry.call_with_retry(lambda: _send_and_read(conn, packed),
                                               lambda error: self._refused(conn, error))
            callback = self.response_callbacks.get(args[0])
            return reply if callback is None else callback(reply)
        finally:
            self._hot_lock.release()


    def _checked_out(self) -> Any:
        """The hot connection (the caller holds ``_hot_lock``)."""
        conn = self._hot_connection
        if conn is None:
            # from the pool, so that closing the client closes it too
            conn = self._hot_connection = self.connection_pool.get_connection()
        else:
            _drop_if_dead(conn)
        return conn

    def call_then_wait(self, args: tuple[Any, ...], replicas: int, timeout_ms: int,
                       wait_if: Callable[[Any], bool]) -> tuple[Any, int | None]:
        """Send ``args`` (a write's script), then, when ``wait_if(reply)``,
        ``WAIT replicas timeout_ms`` on the SAME connection (WAIT counts the
        replicas that have this connection's writes): (the reply, how many
        replicas acknowledged it, or None when not asked).  The write is
        retried as every command is (NOT_RUN_ERRORS, on a new connection);
        WAIT is never re-sent: after an error its outcome is unknown.  On
        the hot connection when it is free, else on one of the pool's."""
        lock = self._hot_lock
        hot = lock.acquire(blocking=False)
        conn = self._checked_out() if hot else self.connection_pool.get_connection()
        try:
            reply = conn.retry.call_with_retry(lambda: _send_and_read_args(conn, args),
                                               lambda error: self._refused(conn, error))
            if not wait_if(reply):
                return reply, None
            return reply, int(_send_and_read_args(conn, ("WAIT", replicas, timeout_ms)))
        finally:
            if hot:
                lock.release()
            else:
                self.connection_pool.release(conn)

    def _refused(self, conn: Any, error: Exception) -> None:
        """The hot path's failure callback: as the pool's (``_close_connection``)."""
        if isinstance(error, ENDED_HISTORY_ERRORS):
            self._note_ended_history(conn)
        conn.disconnect()


# The refusals of a node that was the primary and is a replica now (reached
# through the primary endpoint's name: it named this node when the
# connection was opened); a replica's history as the primary has ended.
ENDED_HISTORY_ERRORS = (ReadOnlyError, MasterDownError)
_NO_ID = "0" * 40


def ended_history(info: dict[str, str]) -> tuple[str, int] | None:
    """(replication id, the offset it ended at) of the history a demoted
    primary served, from its INFO replication; None when it does not say.

    Demoted, not yet synchronised with the new primary (link not up): its
    own id and offset, final (a replica accepts no write).  Synchronised by
    a partial resync (the new primary continued its history): the id it
    left (master_replid2) and second_repl_offset - 1.  After a full resync
    (the new primary lacked some of its writes) it names neither: no evidence.
    """
    if info.get("role") != "slave":
        return None
    if info.get("master_link_status") != "up":
        replid, offset = info.get("master_replid", ""), info.get("master_repl_offset", "")
    else:
        replid, offset = info.get("master_replid2", ""), info.get("second_repl_offset", "")
        offset = str(int(offset) - 1) if offset.lstrip("-").isdigit() else ""
    if len(replid) != 40 or replid == _NO_ID or not offset.isdigit():
        return None
    return replid, int(offset)


def _drop_if_dead(conn: Any) -> None:
    """Disconnect ``conn`` if the server closed it (a restart, a failover,
    an idle timeout) or it holds a stray reply, as the pool checks each
    connection it hands out: the command then goes on a new connection
    instead of failing, which for a write would be a 503 with its outcome
    unknown.  One poll of the socket (about 1 us)."""
    try:
        if conn.is_connected and conn.can_read():
            conn.disconnect()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        conn.disconnect()


def _send_and_read(conn: Any, packed: list[bytes]) -> Any:
    # both disconnect on a socket error or a timeout and raise redis-py's
    # ConnectionError / TimeoutError; an error reply is raised as its class
    # (NoScriptError, ReadOnlyError...) and leaves the connection usable
    conn.send_packed_command(packed)
    return conn.read_response()


def _send_and_read_args(conn: Any, args: tuple[Any, ...]) -> Any:
    """As ``_send_and_read``, packed by redis-py."""
    conn.send_command(*args)
    return conn.read_response()


def _pack(args: tuple[Any, ...]) -> list[bytes] | None:
    """RESP for ``args`` in one buffer, by hiredis as redis-py packs with it;
    None for an argument hiredis refuses (redis-py then raises DataError)."""
    if " " in args[0]:  # a command with a subcommand, "SCRIPT LOAD"
        args = (*args[0].split(), *args[1:])
    try:
        return [hiredis.pack_command(args)]
    except TypeError:
        return None


class _Cluster(_EndedHistories, RedisCluster):
    """RedisCluster that does not re-send a command after a timeout or a
    connection error (see above), and hears where a demoted master's
    history ended.

    After a failover the demoted master answers MOVED (not READONLY, as a
    single endpoint's does): redis-py then moves the slot to its new master
    in its map, or reloads the whole map.  The masters it knew that are
    replicas after that are the demoted ones: each is asked, once, where
    its history as the master ended (``ended_history``), the evidence
    SETTLE_SCRIPT weighs on the promoted node, as for a single endpoint::

        t0  CLUSTER FAILOVER: the master pauses writes, its replica catches up
            (history A, offset F) and is promoted (master_replid2 A,
            second_repl_offset F+1); the old master follows it
        t1  a command for the slot reaches the old master: MOVED
        t2  the map changes; the old master, a replica now, says A ended at F
        t3  the command runs on the new master; its settle finds F+1 <= F+1:
            nothing acknowledged in A was lost, no settle time

    What it does retry, as redis-py does, since the command did not run:
    MOVED and ASK are followed at once; TRYAGAIN (a slot migrating) is tried
    again with short pauses for under half a second; CLUSTERDOWN and a slot
    missing from the map reload the map and try CLUSTER_RETRIES more times;
    LOADING too.  After a connection error redis-py has already reloaded the
    map, so the next command finds a new primary.  What is still refused
    after that is a 503 (errors.unavailable).
    """

    ERRORS_ALLOW_RETRY = (*(e for e in RedisCluster.ERRORS_ALLOW_RETRY
                            if not issubclass(e, (redis.TimeoutError, redis.ConnectionError))),
                          BusyLoadingError)  # type: ignore[assignment]  # redis-py types it as its own four

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._init_ended()
        super().__init__(*args, **kwargs)
        manager = self.nodes_manager
        move_slot, initialize = manager.move_slot, manager.initialize

        def moved(error: Any) -> Any:
            # MOVED (or ASK): the slot's owner in the map before is asked,
            # whether the map knew its replica (redis-py then marks the old
            # master a replica) or not (it stays a master in the map)
            slot = manager.slots_cache.get(error.slot_id) or []
            result = move_slot(error)
            if slot and manager.slots_cache.get(error.slot_id, [None])[0] is not slot[0]:
                self._note_ended_history(slot[0])
            return result

        def reloaded(*args: Any, **kwargs: Any) -> Any:
            before = self._masters()
            result = initialize(*args, **kwargs)
            for name, node in list(manager.nodes_cache.items()):
                if name in before and node.server_type != PRIMARY:
                    self._note_ended_history(node)
            return result
        # the map's two ways of changing (redis-py offers no hook that names the old owner)
        manager.move_slot = moved  # type: ignore[method-assign,assignment]
        manager.initialize = reloaded  # type: ignore[method-assign]

    def _masters(self) -> set[str]:
        return {name for name, node in list(self.nodes_manager.nodes_cache.items())
                if node.server_type == PRIMARY}

    def _note_ended_history(self, node: Any) -> None:
        """Ask ``node`` (a master the map no longer names for a slot) where
        its history as the master ended: nothing when it is still a master
        (a slot migrated).  Best effort: a node that does not answer or says
        nothing proves nothing, and the wait is the settle time."""
        client = node.redis_connection
        if client is None:
            return
        try:
            info = client.info("replication")
        except Exception:  # deliberately broad: evidence is optional
            return
        self._keep_ended(ended_history({k: str(v) for k, v in info.items()}))

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        # A pipeline retries with its own, wider list (timeouts included) and
        # re-sends the whole batch: give it no retries, as before, so that a
        # hung node costs one timeout, not two.
        pipe = super().pipeline(transaction, shard_hint)
        pipe.set_retry(Retry(NoBackoff(), 0))
        return pipe
