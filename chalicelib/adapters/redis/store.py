"""The session store on Redis: the store contract (chalicelib.domain.store).

The key layout is in keys.py, the value and event format in codec.py, the
Lua in scripts/ (write.lua: the protocol every write speaks).  Each write
is ONE script: version check, value, marker, outbox entry and Pub/Sub in
one atomic step, so an acknowledged write always has its outbox entry.
When Redis may have forgotten (eviction, failover, restart, flush) the
store does not decide: it raises one of the contract's signals and the
service asks PostgreSQL.  Methods take ``persisted_version`` /
``known_absent`` with what PostgreSQL said; their defaults trust Redis (a
store without PostgreSQL behind it).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import redis
from redis.exceptions import RedisClusterException

from chalicelib.adapters.redis import scripts
from chalicelib.adapters.redis.client import RedisClient
from chalicelib.adapters.redis.codec import (
    decode_marker,
    decode_session,
    encode_head,
    iso_utc,
    owner_suffix,
    session_from_event,
    value_epoch,
)
from chalicelib.adapters.redis.errors import redis_errors, unavailable
from chalicelib.adapters.redis.keys import (
    BUCKETS,
    SWEEP_POSITION_KEY,
    bucket_epoch_key,
    bucket_of,
    epoch_key,
    hold_key,
    idempotency_key,
    legacy_idempotency_key,
    outbox_keys,
    owner_index_key,
    owner_revoke_keys,
    session_keys,
)
from chalicelib.config import REDIS_WAIT_REPLICAS, Settings
from chalicelib.constants import REVOKE_POSITION_TTL_SECONDS
from chalicelib.domain.errors import (
    ConcurrencyError,
    ConfigurationError,
    IdempotencyKeyReused,
    ServiceUnavailable,
    SessionExists,
    SessionExpired,
    SessionNotFound,
)
from chalicelib.domain.idempotency import Idempotency
from chalicelib.domain.session import Session
from chalicelib.domain.store import (
    EpochChanged,
    IdUnknown,
    KeyMissing,
    Marker,
    MarkerAhead,
    RedisBehind,
    WriteResult,
)

Clock = Callable[[], float]


# While the node says it continues the history a bucket was in, unproven
# yet, a settle asks to be asked again this soon: the process that meets
# the demoted node may prove it any moment (SETTLE_SCRIPT), and a client
# told to come back when the whole settle time has run out would wait it
# all for nothing.
EVIDENCE_RECHECK_SECONDS = 1.0

# outbox_pending counts this many buckets first: enough to cover a page
# when a backlog is waiting, without counting every bucket for each page
_OUTBOX_FIRST_WINDOW = 64


class SessionStore:
    """Create, read, compare-and-set and delete sessions in Redis.

    Takes its Redis client (single node or cluster) from outside.  Every
    method raises ``ServiceUnavailable`` when Redis cannot be reached in
    time, and the domain errors its docstring names.
    """

    def __init__(self, client: RedisClient, *, marker_ttl: int = 0,
                 channel: str = "session-updates", clock: Clock = time.time,
                 idempotency_ttl: int = Settings.idempotency_ttl,
                 wait_replicas: int = Settings.redis_wait_replicas,
                 wait_timeout_ms: int = Settings.redis_wait_timeout_ms) -> None:
        self.client = client
        #: REDIS_WAIT_REPLICAS: a write is acknowledged once on this many replicas
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        if wait_replicas and not hasattr(client, "call_then_wait"):
            raise ConfigurationError(REDIS_WAIT_REPLICAS, "needs a single-node endpoint's client")
        self.marker_ttl = marker_ttl
        self.idempotency_ttl = idempotency_ttl
        self.channel = channel
        self.clock = clock
        self._create = client.register_script(scripts.CREATE_SCRIPT)
        self._update = client.register_script(scripts.UPDATE_SCRIPT)
        self._delete = client.register_script(scripts.DELETE_SCRIPT)
        self._restore = client.register_script(scripts.RESTORE_SCRIPT)
        self._vouch = client.register_script(scripts.VOUCH_SCRIPT)
        self._get_verified = client.register_script(scripts.GET_SCRIPT)
        self._settle = client.register_script(scripts.SETTLE_SCRIPT)
        self._hold = client.register_script(scripts.HOLD_SCRIPT)
        self._block = client.register_script(scripts.BLOCK_SCRIPT)
        self._touch = client.register_script(scripts.TOUCH_SCRIPT)
        self._expire = client.register_script(scripts.EXPIRE_SCRIPT)
        self._slide_get = client.register_script(scripts.SLIDE_GET_SCRIPT)
        self._revoke_begin = client.register_script(scripts.REVOKE_BEGIN_SCRIPT)
        self._marker = client.register_script(scripts.MARKER_SCRIPT)
        # node -> the first epoch this process saw it in (SETTLE_SCRIPT)
        self._epochs_seen: dict[str, str] = {}
        #: settles that found the node continuing the value's history
        #: (SETTLE_SCRIPT's status 3): evidence that ended or spared a wait
        self.continuity_proven = 0
        # (node, epoch) whose buckets this process passed its evidence on to
        self._spread: set[tuple[str, str]] = set()

    # -- reads --------------------------------------------------------------

    def get(self, session_id: str, *, verify: bool = False, slide: bool = False) -> Session | None:
        """The live session, or None when Redis has no key for it.

        Raises SessionNotFound(deleted=True) for a tombstone, and, with
        ``verify``, EpochChanged for a value written before Redis's data
        last went back in time (PostgreSQL must confirm it: ``vouch``).
        With ``slide`` (SESSION_SLIDE_ON_READ) a live value of the node's
        epoch gets its full TTL again, atomically with the read
        (SLIDE_GET_SCRIPT; ``verify`` is implied).
        """
        key = session_keys(session_id)[0]
        with redis_errors():
            try:
                reply = self._read(key, verify, slide)
            except redis.ConnectionError:
                # a pooled connection that broke (failover, restart): a read
                # is safe to repeat, once, on a fresh connection
                reply = self._read(key, verify, slide)
        if reply is None:
            return None
        raw, current = reply
        session = decode_session(session_id, raw)
        if session.deleted:  # a deletion is final, whatever the epoch
            raise SessionNotFound(session_id, deleted=True)
        if not current:
            raise EpochChanged(session_id, session.version, session, epoch=value_epoch(raw))
        return session

    def _read(self, key: str, verify: bool, slide: bool = False) -> tuple[bytes | str, bool] | None:
        """(value, whether it carries the node's epoch), or None."""
        if slide:
            reply = self._run(self._slide_get, [key], [])
            # unverified, a value of another epoch is served as a plain GET
            # would (it is not slid: only one PostgreSQL confirmed is)
            return (reply[0], bool(reply[1]) or not verify) if reply else None
        if not verify:
            raw = self.client.get(key)
            return None if raw is None else (raw, True)
        reply = self._run(self._get_verified, [key], [])
        return (reply[0], bool(reply[1])) if reply else None

    def settle(self, session_id: str, seconds: float, *, unrecorded_settled: bool = False,
               value_epoch: str | None = None) -> tuple[float, bool]:
        """(seconds before asking again: until ``session_id``'s bucket has
        settled in Redis's current epoch, or EVIDENCE_RECHECK_SECONDS when
        evidence may end the wait sooner; whether this shows Redis went back
        in time).

        See SETTLE_SCRIPT.  A bucket with no record is a new deployment or a
        Redis that lost everything: with ``unrecorded_settled`` it counts as
        settled, unless this process saw the node in another epoch before.
        ``value_epoch`` is the epoch of the value the caller asks about: 0
        when the node is proven to continue that epoch's history (the
        histories this client saw end are the evidence: client.py,
        ``ended_histories``), however long the bucket's clock still runs.
        Raises ServiceUnavailable.
        """
        key = epoch_key(session_id)
        node = self._node_name(key)
        # the FIRST epoch this process saw the node in: once it moved on, a
        # bucket without a record is one Redis lost, in every bucket (not
        # only the one where the move was noticed first)
        seen = self._epochs_seen.get(node, "")
        ended = getattr(self.client, "ended_histories", None)

        def evidence() -> list[Any]:
            return [field for pair in (ended() if ended is not None else []) for field in pair]

        shown, first = evidence(), None
        for _ in range(2):
            with redis_errors():
                left, status, epoch, *pending = self._run(self._settle, [key], [
                    int(seconds * 1000), "1" if unrecorded_settled else "0", seen,
                    value_epoch or "", *shown])
            first = status if first is None else first
            # the script may have met the demoted node first (READONLY): the
            # client then heard where its history ended, after the arguments
            # were built; once more with that evidence
            found = evidence()
            if status == 3 or found == shown:
                break
            shown = found
        epoch = epoch.decode()
        self._epochs_seen.setdefault(node, epoch)
        if status == 3:  # the same history, continued: nothing went back
            self.continuity_proven += 1
            if shown and (node, epoch) not in self._spread:  # this process's own evidence
                self._spread.add((node, epoch))
                self._spread_evidence(shown)
            return int(left) / 1000, False
        moved = bool(seen) and seen != epoch
        if first == 2 and unrecorded_settled and not moved:
            return 0.0, False
        wait = int(left) / 1000
        if pending and pending[0]:
            # another process may find the evidence any moment (this one saw
            # nothing end): ask again soon rather than when the clock runs out
            wait = min(wait, EVIDENCE_RECHECK_SECONDS)
        return wait, bool(first) or moved

    def _spread_evidence(self, evidence: Sequence[Any]) -> None:
        """Pass evidence that the node continues a history on to every
        bucket's epoch record (SETTLE_SCRIPT 'spread', one pipelined round
        trip), so that processes that did not see that history end trust
        its values too.  On a cluster the pipeline reaches every master:
        only the one that continues the history takes it.  Best effort: a
        bucket it misses waits as it would have."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for bucket in range(BUCKETS):
                # execute_command: a cluster's pipeline refuses its evalsha method
                pipe.execute_command("EVALSHA", self._settle.sha, 1, bucket_epoch_key(bucket), 0,
                                     "spread", "", "", *evidence)
            pipe.execute(raise_on_error=False)
        except (redis.RedisError, RedisClusterException):
            pass

    def hold(self, session_id: str, seconds: float) -> float:
        """Seconds left before a session Redis lost (key and marker) may be
        recovered from PostgreSQL: see HOLD_SCRIPT.  Raises ServiceUnavailable."""
        with redis_errors():
            left = self._run(self._hold, [hold_key(session_id)], [int(seconds * 1000)])
        return int(left) / 1000

    def _node_name(self, key: str) -> str:
        get_node = getattr(self.client, "get_node_from_key", None)
        return get_node(key).name if get_node is not None else ""

    def vouch(self, session: Session, persisted_version: int) -> bool:
        """Mark ``session`` (read from Redis) as confirmed by PostgreSQL,
        which holds ``persisted_version`` <= its version.  False when another
        write came first.  Raises RedisBehind when Redis is below
        ``persisted_version`` after all."""
        with redis_errors():
            reply = self._run(self._vouch, session_keys(session.session_id)[:1],
                              [session.version, persisted_version])
        if reply[0] == b"behind":
            raise RedisBehind(session.session_id, int(reply[1]))
        return reply[0] == b"ok"

    def marker(self, session_id: str) -> Marker | None:
        """The session's long-lived version marker, or None."""
        with redis_errors():
            raw = self._run(self._marker, session_keys(session_id)[:2], [])
        return None if raw is None else decode_marker(raw)

    # -- writes: one protocol (scripts/write.lua) ---------------------------
    #
    # Every write script takes one ARGV layout and answers {status, detail}:
    # ``_write`` builds the arguments, ``_committed`` turns a commit or a
    # replay into a WriteResult through the one decoder
    # (codec.session_from_event), and each write maps its refusals to what
    # it raises.

    def create(self, session_id: str, state_json: str, ttl_seconds: int, *,
               known_absent: bool = True, idempotency: Idempotency | None = None,
               owner_id: str | None = None) -> WriteResult:
        """Create version 1.  Raises SessionExists (also for a deleted id).

        ``owner_id`` is stored in the value (the owner's index is the
        caller's: ``owner_register`` first, see the timeline above ``owner_index_key``).

        With ``known_absent=False`` an id that Redis has no trace of raises
        IdUnknown instead of being created: the caller asks PostgreSQL
        whether it existed, then calls again with ``known_absent=True``.

        With ``idempotency``, a write already recorded under its key comes
        back as it was (``WriteResult.replayed``) before anything else is
        checked, and a key recorded for another request raises
        IdempotencyKeyReused; the same holds for every write that takes it.
        """
        reply = self._write(self._create, session_id, idempotency, "",
                            "0" if known_absent else "", ttl_seconds, state_json, owner_id or "")
        result = self._committed(session_id, reply, idempotency)
        if result is None:
            raise _refused_new(session_id, reply)
        return result

    def update(self, session_id: str, state_json: str, expected_version: int | None, *,
               persisted_version: int | None = 0, idempotency: Idempotency | None = None,
               ttl_seconds: int | None = None) -> WriteResult:
        """Replace the state if the session is at ``expected_version`` (None:
        at whatever version is current).  ``ttl_seconds`` replaces the TTL
        (None: keep it); the lifetime slides from now either way.

        ``persisted_version`` is the version PostgreSQL holds (0: trust
        Redis), or None when PostgreSQL was not asked.  Raises
        ConcurrencyError (with the actual version), SessionNotFound
        (deleted), SessionExpired (the expiry sweep's final marker), and the
        contract's signals: KeyMissing (only the marker remains: recover,
        retry), EpochChanged (a value of another epoch and
        ``persisted_version`` None: ask PostgreSQL, retry with its version),
        RedisBehind (older than ``persisted_version``: repair it).
        """
        reply = self._write(self._update, session_id, idempotency,
                            "" if expected_version is None else expected_version,
                            "" if persisted_version is None else persisted_version,
                            "" if ttl_seconds is None else ttl_seconds, state_json)
        result = self._committed(session_id, reply, idempotency)
        if result is None:
            raise _refused(session_id, reply, expected_version)
        return result

    def delete(self, session_id: str, expected_version: int | None = None, *,
               persisted_version: int | None = 0,
               idempotency: Idempotency | None = None) -> WriteResult:
        """Replace the session with a versioned tombstone.

        Raises as ``update``; an absent ``expected_version`` deletes
        whatever version is current.
        """
        reply = self._write(self._delete, session_id, idempotency,
                            "" if expected_version is None else expected_version,
                            "" if persisted_version is None else persisted_version)
        result = self._committed(session_id, reply, idempotency)
        if result is None:
            raise _refused(session_id, reply, expected_version)
        return result

    def touch(self, session_id: str, expected_version: int | None = None, *,
              persisted_version: int | None = 0, ttl_seconds: int | None = None,
              idempotency: Idempotency | None = None) -> WriteResult:
        """Extend the lifetime from now without changing the state: a new
        version and a ``session_touched`` event (TOUCH_SCRIPT), with
        ``ttl_seconds`` as the new TTL if given.  Raises as ``update``."""
        reply = self._write(self._touch, session_id, idempotency,
                            "" if expected_version is None else expected_version,
                            "" if persisted_version is None else persisted_version,
                            "" if ttl_seconds is None else ttl_seconds)
        result = self._committed(session_id, reply, idempotency)
        if result is None:
            raise _refused(session_id, reply, expected_version)
        return result

    def block(self, session_id: str, owner_id: str, ttl_seconds: int, *,
              known_absent: bool = True) -> WriteResult | None:
        """Tombstone an id registered for ``owner_id`` whose create has not
        run (BLOCK_SCRIPT).  None when the id exists after all (a key or a
        marker): delete it the usual way.  Raises IdUnknown as ``create``."""
        reply = self._write(self._block, session_id, None, "", "0" if known_absent else "",
                            ttl_seconds, "", owner_id)
        if reply[0] in (b"exists", b"deleted"):
            return None
        result = self._committed(session_id, reply, None)
        if result is None:
            raise _refused_new(session_id, reply)
        return result

    def expire(self, session_id: str, persisted: Session, *,
               marker_absent_ok: bool = False) -> tuple[str, WriteResult | None]:
        """Record that ``persisted`` (PostgreSQL's latest, its lifetime
        ended) expired, if Redis agrees: EXPIRE_SCRIPT.  Returns (its reply:
        ``expired``, ``alive``, ``final``, ``ahead``, ``behind`` or
        ``unknown``; the write to ship when ``expired``).  Raises
        ServiceUnavailable."""
        reply = self._write(self._expire, session_id, None, "", persisted.version,
                            persisted.ttl_seconds, "", persisted.owner_id or "", "", "",
                            persisted.created_at, persisted.expires_at,
                            "1" if marker_absent_ok else "0")
        if reply[0] == b"ok":
            return "expired", _result(reply[1].decode())
        return reply[0].decode(), None

    def sweep_position(self) -> str:
        """Where the expiry sweep goes on: the id after which its next run
        starts ('' for the first)."""
        with redis_errors():
            raw = cast("bytes | None", self.client.get(SWEEP_POSITION_KEY))
        return "" if raw is None else raw.decode()

    def set_sweep_position(self, after: str) -> None:
        """Keep ``after`` as the expiry sweep's position ('' forgets it)."""
        with redis_errors():
            if after:
                self.client.set(SWEEP_POSITION_KEY, after)
            else:
                self.client.delete(SWEEP_POSITION_KEY)

    def recorded(self, session_id: str, idempotency: Idempotency) -> WriteResult | None:
        """The write recorded under ``idempotency``'s key, as ``update``
        returns a replay, or None when there is none.  Raises
        IdempotencyKeyReused when the key was recorded for another request.

        For a write that must find out before it reads (a PATCH reads, then
        merges, then compares-and-sets: a replay after the session moved on
        would otherwise fail its read or its If-Match first); the write's
        script checks the record again, atomically with the write.
        """
        with redis_errors():
            # one slot: one round trip, on the cluster too
            raw, legacy = cast("list[bytes | None]", self.client.mget(
                idempotency_key(session_id, idempotency.key),
                legacy_idempotency_key(session_id, idempotency.key)))
        if raw is None and legacy is not None and legacy.startswith(idempotency.fingerprint.encode()):
            raw = legacy  # the previous release's record of this request (write.lua's replayed)
        if raw is None:
            return None
        fingerprint, event = raw.split(b"|", 1)
        if fingerprint.decode() != idempotency.fingerprint:
            raise IdempotencyKeyReused(session_id, idempotency.key)
        return _result(event.decode(), replayed=True)

    def _write(self, script: Any, session_id: str, idempotency: Idempotency | None,
               *fields: Any) -> Any:
        """Run write ``script`` with the protocol's arguments: the common
        ones, then ``fields`` (ARGV[6] on), then the idempotency record's
        when the write has a key.  A write without one sends the 4 keys and
        its own fields only: a key costs nothing to the writes that have none."""
        now = self.clock()
        keys = session_keys(session_id)
        args = [session_id, iso_utc(now), int(now * 1000), self.marker_ttl, self.channel, *fields]
        if idempotency is not None:
            keys += [idempotency_key(session_id, idempotency.key),
                     legacy_idempotency_key(session_id, idempotency.key)]
            args += [""] * (_FINGERPRINT_ARG - len(args)) + [idempotency.fingerprint,
                                                             self.idempotency_ttl]
        try:
            if self.wait_replicas:
                return self._run_replicated(script, keys, args)
            return self._run(script, keys, args)
        except Exception as exc:
            # as ``with redis_errors()``, without its cost on every write
            translated = unavailable(exc)
            if translated is None:
                raise
            raise translated from exc

    def _run_replicated(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``_run``, then, for a write that committed, WAIT until
        ``wait_replicas`` replicas have it (REDIS_WAIT_REPLICAS), on the
        connection that ran it.

        A WAIT that timed out leaves the write committed on the primary,
        its outbox entry included (the relay ships it), but not confirmed
        on a replica, so a failover could still lose it from Redis: the
        client gets a 503 of unknown outcome, as for a reply cut off after
        the script ran, and retries (with its Idempotency-Key: the replay
        answers as the write did).

        Timeline of the loss this closes::

            t0  PUT v7 runs on the primary; WAIT 1: the replica has it
            t1  acknowledged (200)
            t2  the primary dies; the replica is promoted with v7
            (without WAIT, t1 could come before the replica had v7: a
            promoted replica at v6, and v7 only in the queue)
        """
        def committed(reply: Any) -> bool:
            return isinstance(reply, list) and reply[:1] == [b"ok"]

        call = self.client.call_then_wait  # type: ignore[union-attr]  # a single node's (__init__)
        try:
            reply, acked = call(("EVALSHA", script.sha, len(keys), *keys, *args),
                                self.wait_replicas, self.wait_timeout_ms, committed)
        except redis.exceptions.NoScriptError:
            reply, acked = call(("EVAL", script.script, len(keys), *keys, *args),
                                self.wait_replicas, self.wait_timeout_ms, committed)
        if acked is not None and acked < self.wait_replicas:
            raise ServiceUnavailable(
                f"the write is committed on the Redis primary but {acked} of "
                f"{self.wait_replicas} replicas confirmed it within {self.wait_timeout_ms} ms; "
                "its outcome is unknown: retry with the same Idempotency-Key",
                dependency="redis", retry_after_seconds=1)
        return reply

    @staticmethod
    def _committed(session_id: str, reply: Sequence, idempotency: Idempotency | None
                   ) -> WriteResult | None:
        """The write a reply carries: committed (``ok``) or recorded under
        its key (``replay``: nothing written now); None for a refusal."""
        status = reply[0]
        if status == b"ok":
            return _result(reply[1].decode())
        if status == b"replay":
            return _result(reply[1].decode(), replayed=True)
        if status == b"reused":
            assert idempotency is not None  # only a keyed write gets it
            raise IdempotencyKeyReused(session_id, idempotency.key)
        return None

    def _run(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA ``script``, loading it first if the server lost it (a
        restart, a failover, SCRIPT FLUSH), as redis-py's ``Script.__call__``
        does, without its per-call import and pipeline check (what that
        saves on every write: docs/performance.md)."""
        try:
            return self.client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # EVAL, not SCRIPT LOAD then EVALSHA: two commands may reach two
            # nodes (after a failover, one connection on the new primary and
            # one still on the old), so the load could miss the node that then
            # runs the script.  EVAL runs it, and caches it, wherever it lands.
            return self.client.eval(script.script, len(keys), *keys, *args)

    # -- write-backs from PostgreSQL --------------------------------------------

    def restore(self, session: Session, *, repair: bool = False) -> Session | None:
        """Write a session recovered from PostgreSQL back if its key is
        absent, or, with ``repair``, also over an older version (a Redis that
        went back in time), for what is left of its lifetime.

        Returns the session now in Redis (the restored one, or the one a
        concurrent writer put there first), or None if that one vanished too.
        Raises MarkerAhead when the marker says Redis acknowledged a newer
        version than ``session`` (PostgreSQL lags the queue), and
        SessionExpired when its lifetime is over (``session.expired``: a
        recorded end, put back as the final marker; or ``expires_at`` passed
        on Redis's clock): nothing is written back then (RESTORE_SCRIPT).
        """
        keys = session_keys(session.session_id)
        ends = "E" if session.expired else "" if session.deleted else session.expires_ms
        with redis_errors():
            reply = self._run(self._restore, keys[:2], [
                encode_head(session), session.version, session.ttl_seconds, self.marker_ttl,
                owner_suffix(session.owner_id) + "|" + session.state_json,
                "repair" if repair else "absent", ends])
        if reply[0] == b"behind":
            raise MarkerAhead(session.session_id, int(reply[1]))
        if reply[0] == b"ended":
            raise SessionExpired(session.session_id,
                                 expires_at=None if session.expired else session.expires_at)
        if reply[0] == b"restored":
            return session
        try:
            return self.get(session.session_id)
        except SessionNotFound:
            if session.deleted:
                raise
            return None

    # -- owners (the timeline above owner_index_key) -------------------------

    def owner_register(self, owner_id: str, session_id: str) -> None:
        """Put ``session_id`` in the owner's index, before its create runs."""
        with redis_errors():
            self.client.zadd(owner_index_key(owner_id), {session_id: 0})

    def owner_ids(self, owner_id: str, *, after: str | None = None, count: int = 100,
                  revoking: bool = False) -> list[str]:
        """Up to ``count`` ids of the owner's index (``revoking``: of the ids
        a revoke-all still has to deal with), in id order, after ``after``."""
        index, still, _ = owner_revoke_keys(owner_id)
        with redis_errors():
            ids = self.client.zrangebylex(still if revoking else index,
                                          "-" if after is None else "(" + after, "+",
                                          start=0, num=count)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def owner_forget(self, owner_id: str, session_ids: Sequence[str]) -> None:
        """Drop entries from the owner's index and from a revoke-all's ids
        (their sessions are gone or not the owner's)."""
        if not session_ids:
            return
        index, still, _ = owner_revoke_keys(owner_id)
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(index, *session_ids)
            pipe.zrem(still, *session_ids)
            pipe.execute()

    def owner_revoke_begin(self, owner_id: str, *, only_epoch: bool = False) -> tuple[str, str, str]:
        """A revoke-all begins: the ids registered so far become the ids it
        deals with (``owner_ids(revoking=True)``), none registered later.
        Returns when it began (Redis's clock, as a session's ``created_at``),
        where an earlier call's walk of PostgreSQL stopped ('' if none) and
        the epoch of the owner's node.  ``only_epoch``: take nothing (the
        call's end compares the epochs: a jump back in time since its start
        may have lost the set)."""
        with redis_errors():
            began_ms, position, epoch = self._run(self._revoke_begin, owner_revoke_keys(owner_id),
                                                  ["1" if only_epoch else ""])
        return (iso_utc(int(began_ms) / 1000),
                position.decode() if isinstance(position, bytes) else position, epoch.decode())

    def owner_revoke_position(self, owner_id: str, after: str | None) -> None:
        """Keep where a revoke-all's walk of PostgreSQL stopped (the last id
        it dealt with) for the next call; None: the walk is done."""
        key = owner_revoke_keys(owner_id)[2]
        with redis_errors():
            if after is None:
                self.client.delete(key)
            else:
                self.client.set(key, after, ex=REVOKE_POSITION_TTL_SECONDS)

    def peek(self, session_ids: Sequence[str]) -> list[Session | None]:
        """The stored values (tombstones too) of ``session_ids``, in order,
        None where there is no key: one pipelined round trip per node, read
        as they are (no epoch check: a listing, not a read to write on)."""
        if not session_ids:
            return []
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for sid in session_ids:
                pipe.get(session_keys(sid)[0])
            raws = pipe.execute()
        return [None if raw is None else decode_session(sid, raw)
                for sid, raw in zip(session_ids, raws, strict=True)]

    def value_sizes(self, session_ids: Sequence[str]) -> list[int]:
        """The stored values' lengths in bytes (0 where there is no key), in
        order: one pipelined round trip per node, no value read."""
        if not session_ids:
            return []
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for sid in session_ids:
                pipe.strlen(session_keys(sid)[0])
            return [int(n) for n in pipe.execute()]

    # -- outbox ---------------------------------------------------------------

    def outbox_ack(self, event_ids: Sequence[str]) -> None:
        """Remove outbox entries once SQS accepted their messages."""
        if not event_ids:
            return
        with redis_errors():
            by_bucket: dict[int, list[str]] = {}
            for eid in event_ids:
                by_bucket.setdefault(bucket_of(eid.rsplit(":", 1)[0]), []).append(eid)
            pipe = self.client.pipeline(transaction=False)
            for bucket, ids in by_bucket.items():
                index, data = outbox_keys(bucket)
                pipe.zrem(index, *ids)
                pipe.hdel(data, *ids)
            pipe.execute()

    def outbox_pending(self, older_than_s: float, limit: int = 500,
                       start_bucket: int = 0) -> Iterator[tuple[str, str]]:
        """(event id, event JSON) of up to ``limit`` outbox entries enqueued
        before now - older_than_s.

        Buckets are read from ``start_bucket`` on, wrapping around: a relay
        that moves its start past what it got last time cannot be held on
        the first buckets by entries it fails to send.

        A page costs what it returns, not what is waiting: the buckets are
        counted first (a window at a time, until the page is covered), and
        each is asked only for what the page still needs.  Asking every
        bucket for a page's worth of ids made each page read the whole
        backlog, and draining it quadratic.
        """
        cutoff = int((self.clock() - older_than_s) * 1000)
        order = [(start_bucket + i) % BUCKETS for i in range(BUCKETS)]
        take: list[tuple[int, int]] = []  # (bucket, how many ids to read from it)
        need, done, window = limit, 0, _OUTBOX_FIRST_WINDOW
        with redis_errors():
            while need > 0 and done < BUCKETS:
                buckets = order[done:done + window]
                pipe = self.client.pipeline(transaction=False)
                for bucket in buckets:
                    pipe.zcount(outbox_keys(bucket)[0], "-inf", cutoff)
                for bucket, count in zip(buckets, pipe.execute(), strict=True):
                    if count and need > 0:
                        take.append((bucket, min(count, need)))
                        need -= take[-1][1]
                done += len(buckets)
                # the first window did not cover the page: the outbox is
                # sparse, so count the rest in one round trip
                window = BUCKETS
            if not take:
                return
            pipe = self.client.pipeline(transaction=False)
            for bucket, count in take:
                pipe.zrangebyscore(outbox_keys(bucket)[0], "-inf", cutoff, start=0, num=count)
            per_bucket = [(bucket, ids) for (bucket, _), ids in zip(take, pipe.execute(), strict=True)
                          if ids]
            pipe = self.client.pipeline(transaction=False)
            for bucket, ids in per_bucket:
                pipe.hmget(outbox_keys(bucket)[1], ids)
            bodies = pipe.execute() if per_bucket else []
        for (_, ids), values in zip(per_bucket, bodies, strict=True):
            for eid, body in zip(ids, values, strict=True):
                if body is None:  # acked between the two reads
                    continue
                yield eid.decode(), body.decode()

    def outbox_oldest_ms(self) -> float | None:
        """When the oldest outbox entry was enqueued (ms since the epoch), or
        None when the outbox is empty: the relay's lag alarm, and diagnose."""
        with redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for bucket in range(BUCKETS):
                pipe.zrange(outbox_keys(bucket)[0], 0, 0, withscores=True)
            return min((entries[0][1] for entries in pipe.execute() if entries), default=None)

    # -- health ---------------------------------------------------------------

    def ping(self) -> float:
        """Round trip in milliseconds (/health)."""
        start = time.perf_counter()
        with redis_errors():
            self.client.ping()
        return (time.perf_counter() - start) * 1000


# ARGV[11], the fingerprint, as a list index: a keyed write pads its own
# fields up to it (scripts/write.lua)
_FINGERPRINT_ARG = 10


def _result(event: str, replayed: bool = False) -> WriteResult:
    session = session_from_event(event, replayed=replayed)
    return WriteResult(session, f"{session.session_id}:{session.version}", event, replayed)


def _refused(session_id: str, reply: Sequence, expected: int | None) -> Exception:
    """What a refused write on a session (update, delete, touch) raises."""
    status, version = reply[0], int(reply[1])
    if status == b"conflict":
        return ConcurrencyError(session_id, expected_version=expected, actual_version=version)
    if status == b"deleted":
        return SessionNotFound(session_id, deleted=True)
    if status == b"missing":
        return KeyMissing(session_id, version)
    if status == b"unverified":
        return EpochChanged(session_id, version, epoch=reply[2].decode())
    if status == b"behind":
        return RedisBehind(session_id, version)
    if status == b"expired":
        return SessionExpired(session_id)
    return AssertionError(f"unexpected script reply {reply!r}")


def _refused_new(session_id: str, reply: Sequence) -> Exception:
    """What a refused write of a new id (create, block) raises."""
    status = reply[0]
    if status in (b"exists", b"deleted"):
        return SessionExists(session_id, version=int(reply[1]), deleted=status == b"deleted")
    if status == b"unknown":
        return IdUnknown(session_id)
    return AssertionError(f"unexpected script reply {reply!r}")
