"""Concurrent clients doing what users do: read-modify-write with CAS (and,
now and then, unconditional with If-Match: *), merge patches (PATCH, no
version: the server reads, merges and writes with CAS), touches (now and
then), creates (new ids, and now and then an id that exists), deletes and
reads, and now and then a revoke-all of one of two owners (new sessions are
created with one of them),
through the session service, recording every request and its outcome.

Every other write (``keyed_every``) carries an Idempotency-Key and, when it gets a 503 (its
outcome unknown), is retried with it a few times: one operation from the
first attempt to the answer, as a client sees it.  A retry that finds the
write done gets its original outcome, which the checker holds to rules (a)
and (d) like any acknowledged write.

Bounded: each client stops at a deadline or after ``max_ops``.
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from chalicelib.adapters.redis.store import SessionStore
from chalicelib.config import Settings
from chalicelib.domain.errors import (
    ConcurrencyError,
    RecoveryPending,
    ServiceUnavailable,
    SessionExists,
    SessionExpired,
    SessionNotFound,
)
from chalicelib.domain.idempotency import Idempotency, fingerprint
from chalicelib.domain.session import Session
from chalicelib.domain.store import WriteResult
from chalicelib.domain.validation import CreateRequest, PatchRequest, UpdateRequest
from chalicelib.service import owners
from chalicelib.service.sessions import SessionService
from tests.chaos.history import History, Op, now

# a keyed write whose outcome is unknown (503) is sent again this many times
KEYED_RETRIES = 3
RETRY_PAUSE_SECONDS = 0.2


@dataclass
class Workload:
    service: Callable[[], SessionService]
    history: History
    prefix: str
    sessions: int = 6
    clients: int = 4
    seed: int = 7
    #: a pause between a client's operations: keeps the write rate (about
    #: 150/s) within what LocalStack and one consumer carry on a busy 2-core
    #: machine, so that the pipeline's lag stays under the settle time
    think_seconds: float = 0.02
    #: one write in this many carries an Idempotency-Key (and retries a 503)
    keyed_every: int = 2

    def __post_init__(self) -> None:
        self.ids = [f"{self.prefix}-{i}" for i in range(self.sessions)]
        # the last session is deleted at some point; the others live
        self.deletable = self.ids[-1]
        # the owners of the sessions created during the run
        self.owners = [f"{self.prefix}-u{k}" for k in range(2)]
        self._new = 0
        self._lock = threading.Lock()

    def setup(self) -> None:
        """Create every session once, before the faults."""
        for sid in self.ids:
            self._create(0, sid)

    def run(self, *, seconds: float, max_ops: int = 5000) -> None:
        stop_at = now() + seconds
        threads = [threading.Thread(target=self._client, args=(p, stop_at, max_ops), daemon=True)
                   for p in range(1, self.clients + 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=seconds + 60)
        assert not any(t.is_alive() for t in threads), "a workload client hung"

    # -- one client -------------------------------------------------------------

    def _client(self, process: int, stop_at: float, max_ops: int) -> None:
        rng = random.Random(self.seed * 1000 + process)
        for _ in range(max_ops):
            if now() >= stop_at:
                return
            time.sleep(self.think_seconds)
            roll = rng.random()
            sid = rng.choice(self.ids)
            if roll < 0.35:
                self._read(process, sid)
            elif roll < 0.72:
                self._read_modify_write(process, sid, rng)
            elif roll < 0.82:
                self._patch(process, sid, rng)
            elif roll < 0.85:
                self._touch(process, sid)
            elif roll < 0.93:
                if roll < 0.9:
                    self._create(process, self._fresh_id(), rng.choice(self.owners))
                else:
                    self._create(process, sid)
            elif sid == self.deletable and roll > 0.97:
                self._delete(process, sid)
            elif roll > 0.993:
                self._revoke(process, rng.choice(self.owners))
            else:
                self._read(process, sid)

    def _fresh_id(self) -> str:
        with self._lock:
            self._new += 1
            sid = f"{self.prefix}-n{self._new}"
            self.ids.append(sid)
            return sid

    def _token(self, process: int) -> str:
        with self._lock:
            self._new += 1
            return f"c{process}-{self._new}"

    # -- operations ---------------------------------------------------------------

    def _read(self, process: int, sid: str) -> Op | None:
        start = now()
        try:
            read = self.service().get(sid)
        except SessionNotFound as exc:
            absent = ("expired" if isinstance(exc, SessionExpired)
                      else "deleted" if exc.details.get("deleted") else "missing")
            return self._add(Op(process, "read", sid, start, now(), "ok", absent=absent,
                                error=exc.message))
        except (ServiceUnavailable, RecoveryPending) as exc:
            return self._add(Op(process, "read", sid, start, now(), "fail", error=exc.code))
        return self._add(Op(process, "read", sid, start, now(), "ok", read.session.version,
                            read.session.state))

    def _read_modify_write(self, process: int, sid: str, rng: random.Random) -> None:
        read = self._read(process, sid)
        if read is None or read.outcome != "ok" or read.version is None:
            return
        state = {"n": int((read.state or {}).get("n", 0)) + 1, "w": self._token(process)}
        # now and then If-Match: * (no version check: whatever is current)
        expected = None if rng.random() < 0.15 else read.version
        self._write(process, "update", sid, state, lambda key: self.service().update(
            UpdateRequest(sid, _json(state), expected), key), expected)

    def _patch(self, process: int, sid: str, rng: random.Random) -> None:
        """A merge patch: a new token, and now and then a member removed.
        Acknowledged, it is recorded with the whole state it made (the
        service's answer), which rules (a) and (d) compare with every copy."""
        patch: dict = {"w": self._token(process), "patched_by": process}
        if rng.random() < 0.3:
            patch["patched_by"] = None
        self._write(process, "patch", sid, patch, lambda key: self.service().patch(
            PatchRequest(sid, patch, Settings.max_state_bytes), key), record_answer=True)

    def _create(self, process: int, sid: str, owner: str | None = None) -> None:
        state = {"n": 0, "w": self._token(process)}
        self._write(process, "create", sid, state, lambda key: self.service().create(
            CreateRequest(sid, _json(state), None, owner), key), owner=owner)

    def _revoke(self, process: int, owner: str) -> None:
        """DELETE /owners/{owner}/sessions: its version is how many it
        deleted, its state whether more remain and the tombstones it wrote
        (history rule f; a scenario where Redis loses acknowledged writes
        excuses those it lost, as it does the workload's own)."""
        start = now()
        recording = _RecordingService(self.service())
        try:
            result = owners.revoke_all(cast(SessionService, recording), owner, budget_seconds=20)
        except (ServiceUnavailable, RecoveryPending) as exc:
            # some deletions may have run: unknown
            self._add(Op(process, "revoke", owner, start, now(), "info", error=exc.code,
                         state={"deleted": recording.tombstones, "began": recording.store.began}))
            return
        self._add(Op(process, "revoke", owner, start, now(), "ok", result.deleted,
                     {"remaining": result.remaining, "deleted": recording.tombstones,
                      "began": recording.store.began}))

    def _delete(self, process: int, sid: str) -> None:
        self._write(process, "delete", sid, None, lambda key: self.service().delete(sid, None, key))

    def _touch(self, process: int, sid: str) -> None:
        """A touch keeps the state: the Op records what the service returned."""
        start = now()
        try:
            session = self.service().touch(sid)
        except (ConcurrencyError, SessionNotFound, RecoveryPending) as exc:
            self._add(Op(process, "touch", sid, start, now(), "fail", error=exc.code))
            return
        except ServiceUnavailable as exc:
            self._add(Op(process, "touch", sid, start, now(), "info", error=exc.code))
            return
        self._add(Op(process, "touch", sid, start, now(), "ok", session.version, session.state,
                     ttl=session.ttl_seconds))

    def _key(self, process: int, kind: str, sid: str, state, expected: int | None) -> Idempotency | None:
        """A new Idempotency-Key for every other write (None for the others)."""
        token = self._token(process)
        if int(token.rsplit("-", 1)[1]) % self.keyed_every:
            return None
        return Idempotency(token, fingerprint(kind, f"/sessions/{sid}", _json(state).encode(),
                                              if_match=None if expected is None else str(expected)))

    def _write(self, process: int, kind: str, sid: str, state, call,
               expected: int | None = None, *, record_answer: bool = False,
               owner: str | None = None) -> None:
        start = now()
        key = self._key(process, kind, sid, state, expected)
        attempts = 1 + (KEYED_RETRIES if key is not None else 0)
        for attempt in range(attempts):
            if attempt:
                time.sleep(RETRY_PAUSE_SECONDS)
            try:
                session = call(key)
            except (ConcurrencyError, SessionNotFound, SessionExists, RecoveryPending) as exc:
                # refused before anything was written; after a 503, though,
                # the earlier attempt may have run (and its record been lost
                # with a failover): still unknown
                self._add(Op(process, kind, sid, start, now(), "info" if attempt else "fail",
                             state=state, error=exc.code, owner=owner))
                return
            except ServiceUnavailable as exc:
                # may have run (a connection cut after the script): unknown,
                # unless a keyed retry finds out
                error = exc.code
                continue
            self._add(Op(process, kind, sid, start, now(), "ok", session.version,
                         session.state if record_answer else state, replayed=session.replayed,
                         owner=owner, ttl=session.ttl_seconds))
            return
        self._add(Op(process, kind, sid, start, now(), "info", state=state, error=error, owner=owner))

    def _add(self, op: Op) -> Op:
        self.history.add(op)
        return op


class _RecordingService:
    """The session service as a revoke-all uses it, noting each tombstone
    the revoke-all writes: ``[session, version, start, end]``, from before
    the script that writes it to its acknowledgement (after the send)."""

    def __init__(self, service: SessionService) -> None:
        self._service = service
        self.store = _RecordingStore(service.store)
        self.tombstones: list[list] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)

    def delete(self, session_id: str, *args: Any, **kwargs: Any) -> Session:
        start = now()
        session = self._service.delete(session_id, *args, **kwargs)
        self.tombstones.append([session_id, session.version, start, now()])
        return session

    def ship(self, result: WriteResult) -> None:
        # a blocked id: BLOCK_SCRIPT ran in store.block, just before
        self._service.ship(result)
        start = self.store.blocked.pop(result.session.session_id, now())
        self.tombstones.append([result.session.session_id, result.session.version, start, now()])


class _RecordingStore:
    """The store, noting when each BLOCK_SCRIPT call began, and when the
    revoke-all's snapshot of the owner's ids was taken (its script answered)."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self.blocked: dict[str, float] = {}
        self.began: float | None = None

    def owner_revoke_begin(self, owner_id: str, *, only_epoch: bool = False) -> tuple[str, str, str]:
        began = self._store.owner_revoke_begin(owner_id, only_epoch=only_epoch)
        if not only_epoch:
            self.began = now()
        return began

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def block(self, session_id: str, *args: Any, **kwargs: Any) -> WriteResult | None:
        self.blocked[session_id] = now()
        result = self._store.block(session_id, *args, **kwargs)
        if result is None:
            del self.blocked[session_id]  # the id exists: deleted the usual way
        return result


def _json(state) -> str:
    import json
    return json.dumps(state, separators=(",", ":"))
