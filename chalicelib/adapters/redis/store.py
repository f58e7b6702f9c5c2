"""The session store: hot session state in Redis with atomic compare-and-set.

The key layout is in chalicelib.adapters.redis.keys, the value format in
chalicelib.adapters.redis.codec and the Lua scripts in
chalicelib/adapters/redis/scripts/.

Each mutation is ONE Lua script: it checks the version, writes the state,
bumps the version, refreshes the TTL, updates the marker, records the outbox
entry and publishes the change on Pub/Sub.  The script builds the change
event itself (the same bytes go to Pub/Sub, the outbox and SQS).

Redis may forget (eviction, a failover to a replica that lacked the last
writes, a restart without persistence, a flush) while PostgreSQL remembers.
The store never decides alone what that means: it reports it, and the
service (``chalicelib.service.sessions``) asks PostgreSQL.  ``IdUnknown``: a create
of an id Redis has no trace of; ``EpochChanged``: a value written before
Redis's data last went back in time; ``KeyMissing``: a key gone, its marker
left.  Store methods take ``floor`` / ``known_absent`` with what PostgreSQL
said; their defaults trust Redis (a store without PostgreSQL behind it).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from chalicelib.adapters.redis import scripts
from chalicelib.adapters.redis.client import RedisClient, primaries
from chalicelib.adapters.redis.codec import (
    HEAD_BYTES,
    decode_marker,
    decode_session,
    encode_head,
    event_owner,
    iso_utc,
    owner_suffix,
    ttl_from_event,
)
from chalicelib.adapters.redis.keys import (
    BUCKETS,
    SESSION_KEY_PATTERN,
    bucket_of,
    epoch_key,
    hold_key,
    idempotency_key,
    outbox_keys,
    owner_index_key,
    session_keys,
)
from chalicelib.config import Settings
from chalicelib.domain.errors import (
    ConcurrencyError,
    IdempotencyKeyReused,
    ServiceUnavailable,
    SessionExists,
    SessionExpired,
    SessionNotFound,
)
from chalicelib.domain.events import DELETED
from chalicelib.domain.idempotency import Idempotency
from chalicelib.domain.session import Session

Clock = Callable[[], float]


@dataclass(frozen=True)
class SessionSample:
    """A session as a diagnosis sees it: its head and its TTL, not its state."""

    session_id: str
    version: int
    deleted: bool
    ttl_setting: int
    ttl_left: int  # -1: no expiry, -2: gone


@dataclass(frozen=True)
class WriteResult:
    """A committed write: the new session and the change event to ship."""

    session: Session
    event_id: str
    event_json: str
    #: the recorded outcome of an earlier write with the same Idempotency-Key:
    #: nothing was written now, and its event was shipped by that write
    replayed: bool = False


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
                 idempotency_ttl: int = Settings.idempotency_ttl) -> None:
        self.client = client
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
        # node -> the first epoch this process saw it in (SETTLE_SCRIPT)
        self._epochs_seen: dict[str, str] = {}

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
        with _redis_errors():
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
            raise EpochChanged(session_id, session.version, session)
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

    def settle(self, session_id: str, seconds: float, *,
               unrecorded_settled: bool = False) -> tuple[float, bool]:
        """(seconds left before ``session_id``'s bucket has settled in Redis's
        current epoch, whether this shows Redis went back in time).

        See SETTLE_SCRIPT.  A bucket with no record is a new deployment or a
        Redis that lost everything: with ``unrecorded_settled`` it counts as
        settled, unless this process saw the node in another epoch before.
        Raises ServiceUnavailable.
        """
        key = epoch_key(session_id)
        node = self._node_name(key)
        # the FIRST epoch this process saw the node in: once it moved on, a
        # bucket without a record is one Redis lost, in every bucket (not
        # only the one where the move was noticed first)
        seen = self._epochs_seen.get(node, "")
        with _redis_errors():
            left, status, epoch = self._run(self._settle, [key], [
                int(seconds * 1000), "1" if unrecorded_settled else "0", seen])
        epoch = epoch.decode()
        self._epochs_seen.setdefault(node, epoch)
        moved = bool(seen) and seen != epoch
        if status == 2 and unrecorded_settled and not moved:
            return 0.0, False
        return int(left) / 1000, bool(status) or moved

    def hold(self, session_id: str, seconds: float) -> float:
        """Seconds left before a session Redis lost (key and marker) may be
        recovered from PostgreSQL: see HOLD_SCRIPT.  Raises ServiceUnavailable."""
        with _redis_errors():
            left = self._run(self._hold, [hold_key(session_id)], [int(seconds * 1000)])
        return int(left) / 1000

    def _node_name(self, key: str) -> str:
        get_node = getattr(self.client, "get_node_from_key", None)
        return get_node(key).name if get_node is not None else ""

    def vouch(self, session: Session, floor: int) -> bool:
        """Mark ``session`` (read from Redis) as confirmed by PostgreSQL,
        which holds ``floor`` <= its version.  False when another write came
        first.  Raises RedisBehind when Redis is below ``floor`` after all."""
        with _redis_errors():
            reply = self._run(self._vouch, session_keys(session.session_id)[:1],
                              [session.version, floor])
        if reply[0] == b"behind":
            raise RedisBehind(session.session_id, int(reply[1]))
        return reply[0] == b"ok"

    def marker(self, session_id: str) -> tuple[int, bool] | None:
        """(last acknowledged version, deleted) from the long-lived marker."""
        with _redis_errors():
            raw = cast("bytes | None", self.client.get(session_keys(session_id)[1]))
        return None if raw is None else decode_marker(raw)

    def marker_flag(self, session_id: str) -> tuple[int, str] | None:
        """(last acknowledged version, flag) from the marker: ``L`` (live),
        ``D`` (deleted) or ``E`` (its lifetime ended: EXPIRE_SCRIPT)."""
        with _redis_errors():
            raw = cast("bytes | None", self.client.get(session_keys(session_id)[1]))
        if raw is None:
            return None
        version, flag = raw.decode().split("|")
        return int(version), flag

    # -- writes -------------------------------------------------------------

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
        IdempotencyKeyReused; the same holds for ``update`` and ``delete``.
        """
        now = self.clock()
        now_iso = iso_utc(now)
        keys, args = self._keyed(session_id, idempotency, session_keys(session_id), [
            session_id, state_json, now_iso, int(now * 1000), ttl_seconds,
            self.marker_ttl, self.channel, "1" if known_absent else "0", owner_id or ""])
        with _redis_errors():
            reply = self._run(self._create, keys, args)
        if reply[0] in (b"replay", b"reused"):
            return self._replayed(session_id, reply, idempotency)
        if reply[0] == b"exists":
            raise SessionExists(session_id, version=int(reply[1]), deleted=bool(reply[2]))
        if reply[0] == b"unknown":
            raise IdUnknown(session_id)
        session = Session(session_id, 1, state_json, now_iso, now_iso, ttl_seconds,
                          owner_id=owner_id)
        return WriteResult(session, f"{session_id}:1", reply[1].decode())

    def update(self, session_id: str, state_json: str, expected_version: int | None, *,
               floor: int | None = 0, idempotency: Idempotency | None = None,
               ttl_seconds: int | None = None) -> WriteResult:
        """Replace the state if the session is at ``expected_version`` (None:
        at whatever version is current).

        ``floor`` is the version PostgreSQL holds (0: trust Redis), or None
        when PostgreSQL was not asked.  Raises ConcurrencyError (with the
        actual version), SessionNotFound (deleted, or absent everywhere Redis
        knows of), ``KeyMissing`` when only the marker remains (the caller
        may recover and retry), ``EpochChanged`` (``floor`` None and a value
        of another epoch: ask PostgreSQL, retry with its version) and
        ``RedisBehind`` (the value is older than ``floor``: repair it).
        ``ttl_seconds`` replaces the session's TTL (None: keep it); the
        lifetime slides from now either way.  SessionExpired: its lifetime
        ended (the expiry sweep's final marker).
        """
        now = self.clock()
        now_iso = iso_utc(now)
        keys, args = self._keyed(session_id, idempotency, session_keys(session_id), [
            session_id, state_json, "" if expected_version is None else expected_version,
            now_iso, int(now * 1000), self.marker_ttl, self.channel,
            "" if floor is None else floor, "" if ttl_seconds is None else ttl_seconds])
        with _redis_errors():
            reply = self._run(self._update, keys, args)
        if reply[0] in (b"replay", b"reused"):
            return self._replayed(session_id, reply, idempotency)
        self._raise_for(session_id, reply, expected_version)
        version = (expected_version + 1 if expected_version is not None
                   else json.loads(reply[1])["version"])
        ttl = ttl_from_event(reply[1])
        session = Session(session_id, version, state_json, reply[2].decode(), now_iso, ttl,
                          owner_id=event_owner(reply[1]))
        return WriteResult(session, f"{session_id}:{version}", reply[1].decode())

    def delete(self, session_id: str, expected_version: int | None = None, *,
               floor: int | None = 0, idempotency: Idempotency | None = None) -> WriteResult:
        """Replace the session with a versioned tombstone.

        Raises as ``update``; an absent ``expected_version`` deletes
        whatever version is current.
        """
        now = self.clock()
        now_iso = iso_utc(now)
        keys, args = self._keyed(session_id, idempotency, session_keys(session_id), [
            session_id, "" if expected_version is None else expected_version,
            now_iso, int(now * 1000), self.marker_ttl, self.channel,
            "" if floor is None else floor])
        with _redis_errors():
            reply = self._run(self._delete, keys, args)
        if reply[0] in (b"replay", b"reused"):
            return self._replayed(session_id, reply, idempotency)
        self._raise_for(session_id, reply, expected_version)
        version = int(reply[2])
        event = json.loads(reply[1])
        session = Session(session_id, version, "null", event["created_at"], now_iso,
                          event["ttl_seconds"], deleted=True, owner_id=event.get("owner_id"))
        return WriteResult(session, f"{session_id}:{version}", reply[1].decode())

    def touch(self, session_id: str, expected_version: int | None = None, *,
              floor: int | None = 0, ttl_seconds: int | None = None,
              idempotency: Idempotency | None = None) -> WriteResult:
        """Extend the lifetime from now without changing the state: a new
        version and a ``session_touched`` event (TOUCH_SCRIPT), with
        ``ttl_seconds`` as the new TTL if given.  Raises as ``update``."""
        now = self.clock()
        now_iso = iso_utc(now)
        keys, args = self._keyed(session_id, idempotency, session_keys(session_id), [
            session_id, "" if expected_version is None else expected_version,
            now_iso, int(now * 1000), self.marker_ttl, self.channel,
            "" if floor is None else floor, "" if ttl_seconds is None else ttl_seconds])
        with _redis_errors():
            reply = self._run(self._touch, keys, args)
        if reply[0] in (b"replay", b"reused"):
            return self._replayed(session_id, reply, idempotency)
        self._raise_for(session_id, reply, expected_version)
        version = int(reply[2])
        session = Session(session_id, version, reply[5].decode(), reply[3].decode(), now_iso,
                          int(reply[4]), owner_id=event_owner(reply[1]))
        return WriteResult(session, f"{session_id}:{version}", reply[1].decode())

    def expire(self, session_id: str, persisted: Session, *,
               marker_absent_ok: bool = False) -> tuple[str, WriteResult | None]:
        """Record that ``persisted`` (PostgreSQL's latest, its lifetime
        ended) expired, if Redis agrees: EXPIRE_SCRIPT.  Returns (its reply:
        ``expired``, ``alive``, ``final``, ``ahead``, ``behind`` or
        ``unknown``; the write to ship when ``expired``).  Raises
        ServiceUnavailable."""
        now = self.clock()
        now_iso = iso_utc(now)
        version = persisted.version + 1
        with _redis_errors():
            reply = self._run(self._expire, session_keys(session_id), [
                session_id, persisted.version, now_iso, int(now * 1000), self.marker_ttl,
                self.channel, persisted.created_at, persisted.ttl_seconds, persisted.expires_at,
                "1" if marker_absent_ok else "0", owner_suffix(persisted.owner_id)])
        status = reply[0].decode()
        if status != "expired":
            return status, None
        gone = Session(session_id, version, "null", persisted.created_at, now_iso,
                       persisted.ttl_seconds, expired=True, owner_id=persisted.owner_id)
        return status, WriteResult(gone, f"{session_id}:{version}", reply[1].decode())

    def restore(self, session: Session, *, repair: bool = False) -> Session | None:
        """Write a session recovered from PostgreSQL back if its key is
        absent, or, with ``repair``, also over an older version (a Redis that
        went back in time).

        Returns the session now in Redis (the restored one, or the one a
        concurrent writer put there first), or None if that one vanished too.
        Raises KeyBehind when the marker says Redis acknowledged a newer
        version than ``session`` (PostgreSQL lags the queue).
        """
        keys = session_keys(session.session_id)
        with _redis_errors():
            reply = self._run(self._restore, keys[:2], [
                encode_head(session), session.version, session.ttl_seconds, self.marker_ttl,
                owner_suffix(session.owner_id) + "|" + session.state_json,
                "repair" if repair else "absent"])
        if reply[0] == b"behind":
            raise KeyBehind(session.session_id, int(reply[1]))
        if reply[0] == b"restored":
            return session
        try:
            return self.get(session.session_id)
        except SessionNotFound:
            if session.deleted:
                raise
            return None

    def recorded(self, session_id: str, idempotency: Idempotency) -> WriteResult | None:
        """The write recorded under ``idempotency``'s key, as ``update``
        returns a replay, or None when there is none.  Raises
        IdempotencyKeyReused when the key was recorded for another request.

        For a write that must find out before it reads (a PATCH reads, then
        merges, then compares-and-sets: a replay after the session moved on
        would otherwise fail its read or its If-Match first); the write's
        script checks the record again, atomically with the write.
        """
        with _redis_errors():
            raw = cast("bytes | None", self.client.get(idempotency_key(session_id, idempotency.key)))
        if raw is None:
            return None
        fingerprint, event_json = raw.split(b"|", 1)
        if fingerprint.decode() != idempotency.fingerprint:
            return self._replayed(session_id, [b"reused"], idempotency)
        return self._replayed(session_id, [b"replay", event_json], idempotency)

    def _keyed(self, session_id: str, idempotency: Idempotency | None, keys: list[str],
               args: list[Any]) -> tuple[list[str], list[Any]]:
        """A write script's KEYS and ARGV, with the idempotency record, its
        fingerprint and TTL appended when the write has a key; unchanged
        (nothing more to send) when it has none."""
        if idempotency is None:
            return keys, args
        return ([*keys, idempotency_key(session_id, idempotency.key)],
                [*args, idempotency.fingerprint, self.idempotency_ttl])

    @staticmethod
    def _replayed(session_id: str, reply: Sequence, idempotency: Idempotency | None) -> WriteResult:
        """The write recorded under the key (a ``replay`` reply), rebuilt
        from its event exactly as the original call returned it; a
        ``reused`` reply raises IdempotencyKeyReused."""
        assert idempotency is not None  # only a keyed write gets these replies
        if reply[0] == b"reused":
            raise IdempotencyKeyReused(session_id, idempotency.key)
        event_json = reply[1]
        # the state is the event's last member, as the script wrote it: cut
        # out, not decoded and encoded again, so the body is the same bytes
        cut = event_json.index(b',"state":')
        head = json.loads(event_json[:cut] + b"}")
        state = event_json[cut + len(b',"state":'):-1].decode()
        deleted = head["event_type"] == DELETED
        session = Session(session_id, head["version"], state, head["created_at"], head["occurred_at"],
                          head["ttl_seconds"], deleted=deleted, replayed=True,
                          owner_id=head.get("owner_id"))
        return WriteResult(session, head["event_id"], event_json.decode(), replayed=True)

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

    @staticmethod
    def _raise_for(session_id: str, reply: Sequence, expected: int | None) -> None:
        status = reply[0]
        if status == b"ok":
            return
        if status == b"conflict":
            raise ConcurrencyError(session_id, expected_version=expected,
                                   actual_version=int(reply[1]))
        if status == b"deleted":
            raise SessionNotFound(session_id, deleted=True)
        if status == b"missing":
            raise KeyMissing(session_id, int(reply[1]))
        if status == b"unverified":
            raise EpochChanged(session_id, int(reply[1]))
        if status == b"behind":
            raise RedisBehind(session_id, int(reply[1]))
        if status == b"expired":
            raise SessionExpired(session_id)
        raise AssertionError(f"unexpected script reply {reply!r}")

    # -- owners (the timeline above owner_index_key) -------------------------

    def owner_register(self, owner_id: str, session_id: str) -> None:
        """Put ``session_id`` in the owner's index, before its create runs."""
        with _redis_errors():
            self.client.zadd(owner_index_key(owner_id), {session_id: 0})

    def owner_ids(self, owner_id: str, *, after: str | None = None, count: int = 100) -> list[str]:
        """Up to ``count`` ids of the owner's index, in id order, after ``after``."""
        with _redis_errors():
            ids = self.client.zrangebylex(owner_index_key(owner_id),
                                          "-" if after is None else "(" + after, "+",
                                          start=0, num=count)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def owner_forget(self, owner_id: str, session_ids: Sequence[str]) -> None:
        """Drop entries from the owner's index (their sessions are gone or
        not the owner's)."""
        if not session_ids:
            return
        with _redis_errors():
            self.client.zrem(owner_index_key(owner_id), *session_ids)

    def peek(self, session_ids: Sequence[str]) -> list[Session | None]:
        """The stored values (tombstones too) of ``session_ids``, in order,
        None where there is no key: one pipelined round trip per node, read
        as they are (no epoch check: a listing, not a read to write on)."""
        if not session_ids:
            return []
        with _redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for sid in session_ids:
                pipe.get(session_keys(sid)[0])
            raws = pipe.execute()
        return [None if raw is None else decode_session(sid, raw)
                for sid, raw in zip(session_ids, raws, strict=True)]

    def block(self, session_id: str, owner_id: str, ttl_seconds: int, *,
              known_absent: bool = True) -> WriteResult | None:
        """Tombstone an id registered for ``owner_id`` whose create has not
        run (BLOCK_SCRIPT).  None when the id exists after all (a key or a
        marker): delete it the usual way.  Raises IdUnknown as ``create``."""
        now = self.clock()
        now_iso = iso_utc(now)
        with _redis_errors():
            reply = self._run(self._block, session_keys(session_id), [
                session_id, now_iso, int(now * 1000), ttl_seconds, self.marker_ttl,
                self.channel, "1" if known_absent else "0", owner_id])
        if reply[0] == b"exists":
            return None
        if reply[0] == b"unknown":
            raise IdUnknown(session_id)
        session = Session(session_id, 1, "null", now_iso, now_iso, ttl_seconds, deleted=True,
                          owner_id=owner_id)
        return WriteResult(session, f"{session_id}:1", reply[1].decode())

    # -- outbox ---------------------------------------------------------------

    def outbox_ack(self, event_ids: Sequence[str]) -> None:
        """Remove outbox entries once SQS accepted their messages."""
        if not event_ids:
            return
        with _redis_errors():
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
        with _redis_errors():
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

    def outbox_depth(self) -> int:
        with _redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for bucket in range(BUCKETS):
                pipe.zcard(outbox_keys(bucket)[0])
            return sum(pipe.execute())

    def outbox_oldest_ms(self) -> float | None:
        """When the oldest outbox entry was enqueued (ms since the epoch), or
        None when the outbox is empty.  Raises ServiceUnavailable."""
        with _redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for bucket in range(BUCKETS):
                pipe.zrange(outbox_keys(bucket)[0], 0, 0, withscores=True)
            return min((entries[0][1] for entries in pipe.execute() if entries), default=None)

    # -- diagnosis (reads only) -------------------------------------------------

    def sample(self, limit: int = 200, max_scan_calls: int = 50) -> list[SessionSample]:
        """Up to ``limit`` sessions (spread over the primaries) with version and TTL.

        SCAN is bounded by ``max_scan_calls`` per node, so a huge keyspace
        costs at most that many round trips; the state is never read
        (GETRANGE of the head only).  Raises ServiceUnavailable.
        """
        samples: list[SessionSample] = []
        with _redis_errors():
            nodes = primaries(self.client)
            per_node = max(1, limit // len(nodes))
            for _, node in nodes:
                keys = _scan_session_keys(node, per_node, max_scan_calls)
                if not keys:
                    continue
                pipe = node.pipeline(transaction=False)
                for key in keys:
                    pipe.ttl(key)
                    pipe.getrange(key, 0, HEAD_BYTES - 1)
                replies = pipe.execute()
                for i, key in enumerate(keys):
                    ttl_left, head = replies[2 * i], replies[2 * i + 1]
                    parts = head.split(b"|", 5) if head else []
                    if len(parts) < 5:
                        continue  # vanished between SCAN and the read, or not a session value
                    session_id = key.decode().split(":s:", 1)[1]
                    # the flag is followed by the epoch ("D1a2b3c4d"; bare in older values)
                    samples.append(SessionSample(session_id, int(parts[0]), parts[4][:1] == b"D",
                                                 int(parts[3]), int(ttl_left)))
        return samples

    # -- pub/sub --------------------------------------------------------------

    def subscribe(self, *, timeout: float = 1.0) -> Subscription:
        """Subscribe to the change events on the channel, now.

        Returns once Redis confirmed the subscription, so every change
        committed after this call is seen.  Iterating yields each event
        decoded, or None every ``timeout`` seconds without one so that a
        caller can stop; ``close()`` (or leaving a ``with`` block) unsubscribes.
        """
        return Subscription(self.client.pubsub(), self.channel, timeout)

    def ping(self) -> float:
        """Round trip in milliseconds."""
        start = time.perf_counter()
        with _redis_errors():
            self.client.ping()
        return (time.perf_counter() - start) * 1000

    # -- one session as stored, for operators (sessionsync inspect) -------------

    def stored(self, session_id: str) -> StoredSession:
        """Everything Redis holds for one session, read without changing
        anything: the value (a tombstone too) with its TTL, size and epoch,
        the marker, and the session's outbox entries still waiting.

        Raises ServiceUnavailable.
        """
        session_key, marker_key, index_key, _ = session_keys(session_id)
        with _redis_errors():
            reply = self._run(self._get_verified, [session_key], [])
            pipe = self.client.pipeline(transaction=False)
            pipe.ttl(session_key)
            pipe.memory_usage(session_key)
            pipe.get(marker_key)
            pipe.ttl(marker_key)
            ttl, memory, marker_raw, marker_ttl = pipe.execute()
            # the bucket's outbox is shared: only this session's entries
            # ("<id>:<version>"; ids have no glob characters)
            found = [(member.decode(), int(score)) for member, score
                     in self.client.zscan_iter(index_key, match=f"{session_id}:*", count=1000)]
        outbox = sorted((eid, int(eid.rsplit(":", 1)[1]), ms) for eid, ms in found
                        if eid.rsplit(":", 1)[0] == session_id)
        marker = None if marker_raw is None else decode_marker(marker_raw)
        return StoredSession(
            session=decode_session(session_id, reply[0]) if reply else None,
            ttl_left=int(ttl) if reply else None, value_bytes=len(reply[0]) if reply else 0,
            memory_bytes=int(memory) if reply and memory is not None else None,
            epoch_current=bool(reply[1]) if reply else None, marker=marker,
            marker_ttl_left=int(marker_ttl) if marker is not None else None,
            outbox=tuple(sorted(outbox, key=lambda entry: entry[1])))


@dataclass(frozen=True)
class StoredSession:
    """What Redis holds for one session (``SessionStore.stored``)."""

    #: the decoded value, a tombstone too; None when there is no key
    session: Session | None
    #: seconds the key has left, -1 for none (None: no key)
    ttl_left: int | None
    #: length of the stored value, and what Redis counts for the key (MEMORY USAGE)
    value_bytes: int
    memory_bytes: int | None
    #: False: written before Redis's data last went back in time, so a read
    #: asks PostgreSQL to confirm it (None: no key)
    epoch_current: bool | None
    #: (last acknowledged version, deleted) from the marker, and its TTL left
    marker: tuple[int, bool] | None
    marker_ttl_left: int | None
    #: (event id, version, enqueued at in epoch ms) of the outbox entries not
    #: yet acknowledged by SQS, by version
    outbox: tuple[tuple[str, int, int], ...]


class Subscription:
    """An open Pub/Sub subscription to the change events (see ``subscribe``)."""

    def __init__(self, pubsub: redis.client.PubSub, channel: str, timeout: float) -> None:
        self.timeout = timeout
        self._pubsub = pubsub
        try:
            with _redis_errors():
                pubsub.subscribe(channel)
                # SUBSCRIBE is not acknowledged by subscribe(): wait for the
                # server's confirmation, or an event published meanwhile is lost.
                deadline = time.monotonic() + max(timeout, 1.0)
                while True:
                    reply = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                    if reply is not None and reply["type"] == "subscribe":
                        break
                    if time.monotonic() >= deadline:
                        raise redis.TimeoutError(f"no confirmation of SUBSCRIBE {channel}")
        except BaseException:
            pubsub.close()
            raise

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> dict | None:
        with _redis_errors():
            message = self._pubsub.get_message(timeout=self.timeout)
        if message is None or message["type"] != "message":
            return None
        return json.loads(message["data"])

    def close(self) -> None:
        self._pubsub.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class KeyMissing(SessionNotFound):
    """Redis has no key but its marker says the session existed at ``version``.

    It expired (or was evicted) and may be recovered from PostgreSQL.
    """

    def __init__(self, session_id: str, marker_version: int) -> None:
        super().__init__(session_id)
        self.marker_version = marker_version


class IdUnknown(Exception):
    """Redis has no trace of the id (no key, no marker): it may have existed
    and been forgotten (eviction, failover, flush); PostgreSQL knows."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id


class EpochChanged(Exception):
    """The session's value was written before Redis's data last went back in
    time (a failover, a restart): PostgreSQL may hold a newer version."""

    def __init__(self, session_id: str, version: int, session: Session | None = None) -> None:
        super().__init__(session_id, version)
        self.session_id = session_id
        self.version = version
        #: the value read, for ``get`` (scripts refuse without returning it)
        self.session = session


class RedisBehind(Exception):
    """Redis holds ``version``, older than what PostgreSQL holds."""

    def __init__(self, session_id: str, version: int) -> None:
        super().__init__(session_id, version)
        self.session_id = session_id
        self.version = version


class KeyBehind(Exception):
    """A restore was refused: Redis acknowledged ``marker_version`` already."""

    def __init__(self, session_id: str, marker_version: int) -> None:
        super().__init__(session_id, marker_version)
        self.session_id = session_id
        self.marker_version = marker_version


def _scan_session_keys(node: redis.Redis, limit: int, max_calls: int) -> list[bytes]:
    keys: list[bytes] = []
    cursor = 0
    for _ in range(max_calls):
        cursor, batch = node.scan(cursor=cursor, match=SESSION_KEY_PATTERN, count=1000)
        keys.extend(cast("list[bytes]", batch))  # the client does not decode responses
        if cursor == 0 or len(keys) >= limit:
            break
    return keys[:limit]


class _redis_errors:
    """Translate redis-py connection trouble into ServiceUnavailable."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> Literal[False]:
        if exc is None:
            return False
        # ClusterError: still refused after the cluster client's own retries
        # (CLUSTERDOWN, or MOVED/ASK/TRYAGAIN until its "TTL exhausted").
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError,
                            redis.exceptions.ClusterError,
                            redis.exceptions.SlotNotCoveredError,
                            redis.exceptions.TryAgainError)):
            raise ServiceUnavailable(f"Redis is unavailable: {type(exc).__name__}",
                                     dependency="redis") from exc
        if isinstance(exc, redis.ResponseError):
            # redis-py strips the code off the errors it has classes for
            # (OutOfMemoryError, ReadOnlyError...) and keeps it in status_code
            code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
            if code in ("LOADING", "MASTERDOWN", "READONLY", "BUSY", "OOM", "CLUSTERDOWN"):
                raise ServiceUnavailable(f"Redis refused the command: {code}",
                                         dependency="redis") from exc
        return False
