"""The history of a chaos run and the checker that judges it.

In the spirit of Jepsen's checkers for a versioned register: clients record
every operation with its start and end time and its outcome (``ok``: the
service acknowledged it; ``fail``: it certainly did not happen; ``info``:
unknown, e.g. a 503 after the script may have run).  After the pipeline
drained, the checker compares the history with everything the system left:
the rows in PostgreSQL, the DLQ, the Pub/Sub messages.  Each rule returns
human-readable violations; an empty list is a pass.

Every write carries a unique token in its state (``"w"``), so that the
content of a (session, version) identifies the write that made it.
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

WRITES = ("create", "update", "patch", "delete", "touch")


@dataclass(frozen=True)
class Op:
    process: int
    kind: str  # create | update | patch | delete | touch | read | revoke | forget (by the nemesis)
    session_id: str
    start: float
    end: float
    outcome: str  # ok | fail | info
    #: the version written (ok writes) or read (ok reads)
    version: int | None = None
    #: the state written or read (None for a delete, or a read of nothing)
    state: Any = None
    #: a read that found nothing: "deleted" | "missing" | "expired"
    absent: str | None = None
    error: str | None = None
    #: the owner a create was made with (a revoke's ``session_id`` is its owner;
    #: its ``state``: ``remaining`` (ok revokes), ``deleted``, the
    #: tombstones it wrote, ``[session, version, start, end]`` each, and
    #: ``began``, when its snapshot of the owner's ids was taken)
    owner: str | None = None
    #: an acknowledged write whose answer was a replay of an earlier attempt
    #: (Idempotency-Key): its outcome, recorded when that attempt ran
    replayed: bool = False
    #: an acknowledged write's TTL (its lifetime ends no earlier than
    #: ``start + ttl``), when the client knows it
    ttl: float | None = None


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)

    def acknowledged_writes(self) -> list[Op]:
        return [op for op in self.ops if op.kind in WRITES and op.outcome == "ok"]

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for op in self.ops:
            counts[f"{op.kind}:{op.outcome}"] += 1
            if op.replayed:
                counts[f"{op.kind}:replayed"] += 1
        return dict(sorted(counts.items()))


@dataclass
class Observed:
    """What the system left once drained."""

    #: (session, version) -> (event_type, state) in sync_events
    rows: Mapping[tuple[str, int], tuple[str, Any]]
    #: session -> (version, deleted) in sync_sessions
    sessions: Mapping[str, tuple[int, bool]]
    #: every DLQ message: {"body": str, "error_code": ..., ...attributes}
    dead_letters: list[Mapping[str, Any]]
    #: every change event seen on Pub/Sub (decoded)
    published: list[Mapping[str, Any]]
    #: losses the system itself reported (log lines / metrics), each a dict
    reported: list[Mapping[str, Any]] = field(default_factory=list)


def _content(event_type: str, state: Any) -> tuple[str, str]:
    # a touch carries the state it kept: the same content as a write of it;
    # an expiry is no client's write, and content of its own
    kind = {"session_deleted": "delete", "session_expired": "expire"}.get(event_type, "write")
    return kind, json.dumps(state, sort_keys=True)


def _op_content(op: Op) -> tuple[str, str]:
    return ("delete" if op.kind == "delete" else "write"), json.dumps(op.state, sort_keys=True)


def check(history: History, observed: Observed, *, allow_lost: Iterable[tuple[str, int]] = ()) -> list[str]:
    """Every rule's violations.  ``allow_lost``: (session, version) pairs the
    system reported as unavoidably lost (rule a skips them)."""
    lost = set(allow_lost)
    return (check_acknowledged_persisted(history, observed, lost)
            + check_no_stale_reads(history, lost)
            + check_no_resurrection(history, observed, lost)
            + check_one_content_per_version(history, observed, lost)
            + check_unpersisted_dead_lettered(observed, lost)
            + check_revoked_owners(history, observed, lost)
            + check_lifetime_ends(history, observed, lost))


def check_acknowledged_persisted(history: History, observed: Observed,
                                 allow_lost: set[tuple[str, int]]) -> list[str]:
    """(a) every acknowledged write is in sync_events exactly once (the primary
    key makes "at most once" structural), with the acknowledged content."""
    problems = []
    for op in history.acknowledged_writes():
        key = (op.session_id, op.version)
        if key in allow_lost:
            continue
        row = observed.rows.get(key)
        if row is None:
            problems.append(f"(a) acknowledged {op.kind} {key} is not in sync_events")
        elif _content(*row) != _op_content(op):
            problems.append(f"(a) acknowledged {op.kind} {key} persisted with other content: "
                            f"{row!r} != {op.state!r}")
    return problems


def check_no_stale_reads(history: History,
                         allow_lost: set[tuple[str, int]] = frozenset()) -> list[str]:
    """(b) no read returned a version older than one acknowledged to any
    client before the read began (nor a live session after an acknowledged
    delete: rule c).  A write reported lost does not count."""
    acked: dict[str, list[Op]] = defaultdict(list)
    for op in history.acknowledged_writes():
        if (op.session_id, op.version) not in allow_lost:
            acked[op.session_id].append(op)
    problems = []
    for read in history.ops:
        if read.kind != "read" or read.outcome != "ok":
            continue
        before = [w for w in acked[read.session_id] if w.end < read.start]
        if not before:
            continue
        newest = max(before, key=lambda w: w.version)
        if read.version is None:
            if read.absent == "missing":
                problems.append(f"(b) read of {read.session_id} at {read.start:.3f} found nothing "
                                f"({read.error}); v{newest.version} was acknowledged at {newest.end:.3f}")
            continue
        if read.version < newest.version:
            problems.append(f"(b) read of {read.session_id} at {read.start:.3f} returned "
                            f"v{read.version}; v{newest.version} was acknowledged at {newest.end:.3f}")
    return problems


def check_no_resurrection(history: History, observed: Observed,
                          allow_lost: set[tuple[str, int]] = frozenset()) -> list[str]:
    """(c) no deleted session comes back: after an acknowledged delete, no
    read returns it, no write on it succeeds, and PostgreSQL keeps it deleted."""
    deleted_at: dict[str, Op] = {}
    for op in history.acknowledged_writes():
        if op.kind == "delete" and (op.session_id, op.version) not in allow_lost:
            deleted_at.setdefault(op.session_id, op)
    problems = []
    for op in history.ops:
        gone = deleted_at.get(op.session_id)
        if gone is None or op.start <= gone.end or op.outcome != "ok":
            continue
        if op.kind == "read" and op.version is not None:
            problems.append(f"(c) {op.session_id} deleted at {gone.end:.3f}, read back as "
                            f"v{op.version} at {op.start:.3f}")
        if op.kind in ("create", "update", "patch", "touch"):
            problems.append(f"(c) {op.session_id} deleted at {gone.end:.3f}, then {op.kind} "
                            f"v{op.version} acknowledged")
    for sid in deleted_at:
        version, deleted = observed.sessions.get(sid, (0, False))
        if not deleted:
            problems.append(f"(c) {sid} is not deleted in sync_sessions (v{version})")
    return problems


def check_one_content_per_version(history: History, observed: Observed,
                                  allow_lost: set[tuple[str, int]] = frozenset()) -> list[str]:
    """(d) no (session, version) has two different contents anywhere: the
    writes acknowledged, the reads, Pub/Sub, sync_events and the DLQ (a
    version reported lost was written again: it is left out)."""
    seen: dict[tuple[str, int], dict[tuple[str, str], str]] = defaultdict(dict)

    def note(key: tuple[str, int], content: tuple[str, str], where: str) -> None:
        seen[key].setdefault(content, where)

    for op in history.ops:
        if op.outcome != "ok" or op.version is None:
            continue
        if op.kind in WRITES:
            note((op.session_id, op.version), _op_content(op), f"{op.kind} by client {op.process}")
        elif op.kind == "read":
            note((op.session_id, op.version), ("write", json.dumps(op.state, sort_keys=True)),
                 f"read by client {op.process}")
    for event in observed.published:
        note((event["session_id"], event["version"]), _content(event["event_type"], event["state"]),
             "Pub/Sub")
    for key, row in observed.rows.items():
        note(key, _content(*row), "sync_events")
    for letter in observed.dead_letters:
        try:
            event = json.loads(letter["body"])
            note((event["session_id"], event["version"]), _content(event["event_type"], event["state"]),
                 f"DLQ ({letter.get('error_code')})")
        except (ValueError, KeyError, TypeError):
            continue  # not an event: rule e looks at it
    return [f"(d) {key} has {len(contents)} contents: " + "; ".join(
                f"{where}: {content[1][:80]}" for content, where in contents.items())
            for key, contents in sorted(seen.items()) if len(contents) > 1 and key not in allow_lost]


def check_unpersisted_dead_lettered(observed: Observed,
                                    allow_lost: set[tuple[str, int]] = frozenset()) -> list[str]:
    """(e) every change event published but not persisted is in the DLQ
    with its reason."""
    dead: dict[tuple[str, int], Mapping[str, Any]] = {}
    problems = []
    for letter in observed.dead_letters:
        if not letter.get("error_code") or not letter.get("error_class"):
            problems.append(f"(e) a DLQ message has no reason: {letter.get('body', '')[:80]}")
        try:
            event = json.loads(letter["body"])
            dead[(event["session_id"], event["version"])] = letter
        except (ValueError, KeyError, TypeError):
            continue
    for event in observed.published:
        key = (event["session_id"], event["version"])
        if key in observed.rows:
            if _content(*observed.rows[key]) != _content(event["event_type"], event["state"]) \
                    and key not in dead and key not in allow_lost:
                problems.append(f"(e) published {key} differs from its row and is not in the DLQ")
            continue
        if key not in dead and key not in allow_lost:
            problems.append(f"(e) published {key} is neither persisted nor in the DLQ")
    return problems


    return problems


def check_revoked_owners(history: History, observed: Observed,
                         allow_lost: set[tuple[str, int]] = frozenset()) -> list[str]:
    """(f) after a revoke-all of an owner returned with nothing remaining,
    no session of the owner whose create ended before the revoke-all
    started survives: PostgreSQL holds it deleted (an acknowledged create),
    or not at all or deleted (a create of unknown outcome), and no read or
    write that started after the revoke-all ended found it live.

    A create of unknown outcome whose id PostgreSQL holds with another
    version 1 did not make the session (another create of the id did: the
    workload's creates of existing ids carry no owner), so the revoke-all
    rightly left it.  A session came back with the loss, not past the
    revoke-all, when a revoke-all tombstone of it written before the
    revoke-all ended was reported lost (``allow_lost``) and Redis forgot it
    (a ``forget`` op: the nemesis's, in the history) after the revoke-all
    began and after the tombstone's script began (its send may still have
    been waiting): the revoke-all saw the tombstone, or wrote it.  A revoke-all
    begun after Redis forgot answers for the session itself.  A session
    whose lifetime ended (a ``session_expired`` row: rule (g) proves it is
    recorded only once due) is over too: the revoke-all leaves an expired
    session to the sweep, and no read or write may find it live after.

    And a revoke-all ends only what was created before it: none of its
    tombstones is of a session whose create began after it took its
    snapshot of the owner's ids (``began``)."""
    problems = []
    for revoke in history.ops:
        began = (revoke.state or {}).get("began") if revoke.kind == "revoke" else None
        if began is None:
            continue
        ended = {sid for sid, *_ in (revoke.state or {}).get("deleted", ())}
        problems += [f"(f) {op.session_id} of {revoke.session_id}, whose create began at "
                     f"{op.start:.3f}, was ended by the revoke-all begun at {began:.3f}"
                     for op in history.ops if op.kind == "create" and op.session_id in ended
                     and op.owner == revoke.session_id and op.start > began]
    ended = {sid for (sid, _), (event_type, _) in observed.rows.items()
             if event_type == "session_expired"}
    revokes = [op for op in history.ops if op.kind == "revoke" and op.outcome == "ok"
               and not (op.state or {}).get("remaining")]
    tombstones = _revoke_tombstones(history)
    forgets = [op.start for op in history.ops if op.kind == "forget"]
    for revoke in revokes:
        doomed = [op for op in history.ops
                  if op.kind == "create" and op.owner == revoke.session_id
                  and op.outcome in ("ok", "info") and op.end < revoke.start
                  and (op.session_id, 1) not in allow_lost]
        for create in doomed:
            sid = create.session_id
            first = observed.rows.get((sid, 1))
            if create.outcome == "info" and first is not None \
                    and _content(*first) != _op_content(create):
                continue  # another create made the id: not this owner's
            if any((sid, version) in allow_lost and start <= revoke.end
                   and any(revoke.start <= forgot >= start for forgot in forgets)
                   for start, _end, version in tombstones.get(sid, ())):
                continue  # its tombstone was lost with Redis's outbox: reported
            version, deleted = observed.sessions.get(sid, (0, None))
            if sid in ended:
                pass  # over by its lifetime; a later live use is caught below
            elif create.outcome == "ok" and deleted is not True:
                problems.append(f"(f) {sid} of {revoke.session_id}, created at {create.end:.3f}, "
                                f"survived the revoke-all of {revoke.start:.3f}: sync_sessions "
                                f"v{version} deleted={deleted}")
            elif create.outcome == "info" and deleted is False:
                problems.append(f"(f) {sid} of {revoke.session_id} (create of unknown outcome) "
                                f"survived the revoke-all of {revoke.start:.3f}")
            for op in history.ops:
                if (op.session_id == sid and op.start > revoke.end and op.outcome == "ok"
                        and op.kind in ("read", "update", "patch", "create")
                        and op.version is not None):
                    problems.append(f"(f) {sid} of {revoke.session_id} was revoked at "
                                    f"{revoke.end:.3f}, then {op.kind} v{op.version} at {op.start:.3f}")
    return problems


def never_sent(history: History, accepted: Iterable[tuple[str, int, str]],
               since: float = float("-inf")) -> set[tuple[str, int]]:
    """(session, version) of the writes begun since ``since`` whose event
    SQS never accepted (``accepted``: (session, version, state JSON) of
    every event it did): the acknowledged writes of the workload, and the
    tombstones a revoke-all wrote (its deletions are acknowledged writes
    too, of the server's).  Their inline send failed (on a busy machine) and
    the relay had not run, so they lived only in Redis's outbox, and a fault
    that makes Redis forget loses them: the documented limit ("Changes that
    never reached SQS" in docs/guarantees.md), reported as Redis's jump back
    in time.  One that reached SQS must be persisted or dead-lettered,
    whatever Redis forgot."""
    sent = set(accepted)
    writes = [(op.session_id, op.version, op.start, op.state)
              for op in history.acknowledged_writes()]
    writes += [(sid, version, start, None) for sid, version, start, _ in revoke_tombstones(history)]
    return {(sid, version) for sid, version, start, state in writes
            if start >= since and (sid, version, json.dumps(state, sort_keys=True)) not in sent}


def revoke_tombstones(history: History) -> list[tuple[str, int, float, float]]:
    """(session, version, start, end) of every tombstone a revoke-all wrote
    (a deletion, or an id blocked before its create ran), whatever the
    revoke-all's outcome."""
    return [(str(sid), int(version), float(start), float(end))
            for op in history.ops if op.kind == "revoke"
            for sid, version, start, end in (op.state or {}).get("deleted", ())]


def _revoke_tombstones(history: History) -> dict[str, list[tuple[float, float, int]]]:
    """session -> (start, end, version) of its revoke-all tombstones."""
    by_session: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for sid, version, start, end in revoke_tombstones(history):
        by_session[sid].append((start, end, version))
    return by_session


# The service stamps a write to the millisecond, truncated (its updated_at;
# expires_at = updated_at + ttl): a write sent at 6.0004 s may be stamped
# 6.000 and end at 7.000, as its answer said.  The earliest a lifetime can
# end is its write's start + ttl - this.
STAMP_RESOLUTION = 0.001


def check_lifetime_ends(history: History, observed: Observed,
                        allow_lost: set[tuple[str, int]] = frozenset()) -> list[str]:
    """(g) a session ends when its lifetime ends, and only then: no read
    answers "expired" before the lifetime of a write acknowledged before it
    could have ended; after a session was seen expired (a read, or a
    ``session_expired`` event), no read returns it and no write on it is
    acknowledged; and nothing is persisted after its ``session_expired``."""
    acked: dict[str, list[Op]] = defaultdict(list)
    for op in history.acknowledged_writes():
        if (op.session_id, op.version) not in allow_lost:
            acked[op.session_id].append(op)
    problems = []
    ended: dict[str, float] = {}  # session -> when it was first seen expired
    for op in history.ops:
        if op.kind != "read" or op.outcome != "ok" or op.absent != "expired":
            continue
        ended[op.session_id] = min(ended.get(op.session_id, op.end), op.end)
        before = [w for w in acked[op.session_id] if w.end < op.start and w.ttl is not None]
        if before:
            newest = max(before, key=lambda w: w.version or 0)
            if op.end < newest.start + (newest.ttl or 0) - STAMP_RESOLUTION:
                problems.append(f"(g) read of {op.session_id} at {op.start:.3f} answered expired; "
                                f"v{newest.version} (ttl {newest.ttl:g}s) was acknowledged at "
                                f"{newest.end:.3f}")
    for op in history.ops:
        seen = ended.get(op.session_id)
        if seen is None or op.start <= seen or op.outcome != "ok" or op.version is None:
            continue
        if op.kind == "read" or op.kind in WRITES:
            problems.append(f"(g) {op.session_id} seen expired at {seen:.3f}, then {op.kind} "
                            f"v{op.version} at {op.start:.3f}")
    expired_at = {sid: v for (sid, v), (event_type, _) in observed.rows.items()
                  if event_type == "session_expired"}
    for (sid, version) in sorted(observed.rows):
        if sid in expired_at and version > expired_at[sid]:
            problems.append(f"(g) {sid} expired at v{expired_at[sid]}, then v{version} was persisted")
    for op in history.acknowledged_writes():
        if op.session_id in expired_at and (op.version or 0) >= expired_at[op.session_id]:
            problems.append(f"(g) {op.session_id} expired at v{expired_at[op.session_id]}, then "
                            f"{op.kind} v{op.version} was acknowledged")
    return problems


def now() -> float:
    return time.monotonic()
