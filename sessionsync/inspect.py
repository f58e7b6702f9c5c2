"""``sessionsync inspect <id>``: everything about one session, and what is wrong with it.

Reads, never writes: the session's Redis key (version, TTL, size, epoch),
its version marker, its outbox entries still waiting for SQS, its durable
copy in ``sync_sessions`` and last events in ``sync_events``, and the DLQ
messages that name it (peeked: each is made visible again at once).  Then
it compares them and says in words what it finds, e.g. "Redis is at v7,
PostgreSQL at v5, no outbox entry: 2 versions are in flight or lost".

Each source is read on its own: one that cannot be reached is reported as
such and the others are still shown.  Clients are passed in.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from chalicelib.domain.errors import SessionSyncError
from sessionsync import dlq
from sessionsync.operations import LEVELS, Finding
from sessionsync.redis_views import StoredSession, key_names, stored

#: the last events shown
EVENTS = 5
#: DLQ messages read at most, looking for the session's
DLQ_READ_LIMIT = 1000


@dataclass
class Inspection:
    session_id: str
    keys: dict[str, str]
    redis: StoredSession | None = None
    #: the sync_sessions row (a Session), None when there is none
    persisted: Any = None
    events: list[dict[str, Any]] = field(default_factory=list)
    #: the DLQ messages that name the session; None when no DLQ was read
    dead_letters: list[dlq.DeadLetterMessage] | None = None
    dlq_read: int = 0
    dlq_limit: int = DLQ_READ_LIMIT
    #: source -> why it could not be read ("redis", "postgresql", "dlq")
    errors: dict[str, str] = field(default_factory=dict)
    #: sources not configured ("postgresql", "dlq")
    missing: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    now: float = 0.0

    @property
    def level(self) -> str:
        return max((f.level for f in self.findings), key=LEVELS.index, default="ok")

    @property
    def redis_version(self) -> int | None:
        """The newest version Redis acknowledged: its key's, else its marker's."""
        r = self.redis
        if r is None:
            return None
        versions = [v for v in (r.session.version if r.session else None,
                                r.marker.version if r.marker else None) if v is not None]
        return max(versions, default=None)

    @property
    def lag(self) -> int | None:
        """Versions PostgreSQL is behind Redis (negative: ahead)."""
        if self.redis_version is None or "postgresql" in self.errors or "postgresql" in self.missing:
            return None
        return self.redis_version - (self.persisted.version if self.persisted else 0)

    def to_dict(self) -> dict[str, Any]:
        r = self.redis
        redis_doc: dict[str, Any] | None = None
        if r is not None:
            s = r.session
            redis_doc = {
                "key": self.keys["session"], "present": s is not None,
                "version": s.version if s else None, "deleted": s.deleted if s else None,
                "ttl_left_s": r.ttl_left, "ttl_seconds": s.ttl_seconds if s else None,
                "value_bytes": r.value_bytes, "memory_bytes": r.memory_bytes,
                "epoch_current": r.epoch_current,
                "created_at": s.created_at if s else None, "updated_at": s.updated_at if s else None,
                "marker": ({"key": self.keys["marker"], "version": r.marker.version,
                            "deleted": r.marker.deleted, "ttl_left_s": r.marker_ttl_left}
                           if r.marker else None),
                "outbox": [{"event_id": eid, "version": v, "age_s": round(max(0.0, self.now - ms / 1000), 1)}
                           for eid, v, ms in r.outbox]}
        p = self.persisted
        pg_doc = None if p is None else {"version": p.version, "deleted": p.deleted,
                                         "updated_at": p.updated_at, "ttl_seconds": p.ttl_seconds,
                                         "expires_at": p.expires_at, "expired": p.expired}
        return {
            "session_id": self.session_id, "level": self.level, "keys": self.keys,
            "redis": redis_doc,
            "postgresql": {"session": pg_doc, "lag_versions": self.lag, "events": self.events},
            "dlq": None if self.dead_letters is None else {
                "read": self.dlq_read, "messages": [m.summary() for m in self.dead_letters]},
            "errors": self.errors, "not_configured": self.missing,
            "findings": [{"level": f.level, "summary": f.summary, **({"fix": f.fix} if f.fix else {})}
                         for f in self.findings]}


def _read(inspection: Inspection, source: str, read: Callable[[], None]) -> None:
    """Run one read; a dependency that fails is recorded, the others go on."""
    try:
        read()
    except SessionSyncError as exc:
        inspection.errors[source] = exc.message
    except Exception as exc:  # report, never crash: the other sources still matter
        inspection.errors[source] = f"{type(exc).__name__}: {exc}"


def inspect(session_id: str, *, store: Any, database: Any = None, sqs: Any = None,
            dlq_url: str | Callable[[], str] | None = None, events: int = EVENTS,
            dlq_limit: int = DLQ_READ_LIMIT,
            clock: Callable[[], float] = time.time) -> Inspection:
    """Read every trace of ``session_id`` and judge them (``Inspection.findings``).

    ``database`` (the PostgreSQL adapter) and ``sqs``/``dlq_url`` may be
    None when not configured; ``dlq_url`` may be a function that looks it
    up (a failed look-up is reported like a failed read).
    """
    found = Inspection(session_id, key_names(session_id), now=clock(), dlq_limit=dlq_limit)

    def read_redis() -> None:
        found.redis = stored(store, session_id)
    _read(found, "redis", read_redis)

    if database is None:
        found.missing.append("postgresql")
    else:
        def read_postgres() -> None:
            found.persisted = database.latest(session_id)
            found.events = database.history(session_id, limit=events)
        _read(found, "postgresql", read_postgres)

    if sqs is None or not dlq_url:
        found.missing.append("dlq")
    else:
        def read_dlq() -> None:
            url = dlq_url() if callable(dlq_url) else dlq_url
            messages = dlq.peek(sqs, url, limit=dlq_limit)
            found.dlq_read = len(messages)
            found.dead_letters = [m for m in messages if m.session_id == session_id]
        _read(found, "dlq", read_dlq)

    found.findings = judge(found)
    return found


def _versions(numbers: Sequence[int]) -> str:
    return ", ".join(f"v{n}" for n in numbers)


def judge(i: Inspection) -> list[Finding]:
    """What is right or wrong with the session, in words, worst cases first
    within the order: sources, Redis, PostgreSQL against Redis, DLQ."""
    out: list[Finding] = []
    sid = i.session_id
    for source, error in i.errors.items():
        out.append(Finding(source, "fail", f"{source} could not be read: {error}",
                           fix="check it with `sessionsync health`"))
    r = i.redis
    session = r.session if r else None
    marker = r.marker if r else None
    persisted = i.persisted
    letters = i.dead_letters or []
    pg_known = "postgresql" not in i.errors and "postgresql" not in i.missing

    if r is not None and session is None and marker is None and pg_known and persisted is None \
            and not letters:
        unread = "" if i.dead_letters is not None else " (the DLQ was not read)"
        out.append(Finding("session", "warn", f"no trace of {sid!r}: Redis has no key and no "
                           f"marker, PostgreSQL has no row{unread}",
                           fix="check the id (ids are case-sensitive), and that REDIS_URL and "
                               "DATABASE_URL point at the right stack"))
        return out

    # -- Redis on its own ---------------------------------------------------
    if r is not None:
        if session is not None and not session.deleted:
            out.append(Finding("redis", "ok", f"Redis holds v{session.version}, TTL {r.ttl_left} s "
                               f"left of {session.ttl_seconds} s, {r.value_bytes} bytes"))
            if r.ttl_left == -1:
                out.append(Finding("redis", "fail", "the session key has no TTL: it will never expire",
                                   fix="every write sets one; something other than sessionsync "
                                       "wrote this key"))
        if session is not None and session.deleted:
            out.append(Finding("redis", "ok", f"deleted at v{session.version} (the tombstone "
                               f"expires in {r.ttl_left} s; the marker keeps the id from being reused)"))
        if session is None and marker is not None:
            if marker.deleted:
                out.append(Finding("redis", "ok", f"deleted at v{marker.version}: the tombstone has "
                                   "expired, the marker keeps the id from being reused"))
            elif persisted is not None and (persisted.expired or persisted.expired_at(i.now)):
                out.append(Finding("redis", "ok", f"the session's lifetime ended at "
                                   f"{persisted.expires_at}: reads answer 404 SessionExpired"
                                   + (" (session_expired recorded)" if persisted.expired else
                                      " (the expiry sweep records it within minutes)")))
            else:
                out.append(Finding("redis", "info", f"the Redis key has expired (or was evicted); "
                                   f"the marker says v{marker.version}: the next read recovers it from "
                                   "PostgreSQL"))
        if session is None and marker is None:
            out.append(Finding("redis", "info", "Redis has forgotten this session (no key, no "
                               "marker: a flush, a failover or a marker TTL): the next read asks "
                               "PostgreSQL, after REDIS_SETTLE_SECONDS"))
        if session is not None and marker is None:
            out.append(Finding("redis", "warn", f"the key is at v{session.version} but its version "
                               "marker is missing", fix="with SESSION_MARKER_TTL=0 (the default) "
                               "markers never expire: was it deleted by hand, or evicted (allkeys-*)?"))
        elif session is not None and marker is not None and marker.version != session.version:
            out.append(Finding("redis", "warn", f"the key is at v{session.version} but the marker "
                               f"says v{marker.version}", fix="a key or marker was written outside "
                               "sessionsync, or restored from an old snapshot"))
        if r.epoch_current is False:
            out.append(Finding("redis", "info", "the value was written before Redis last went back "
                               "in time (failover, restart): the next read asks PostgreSQL to "
                               "confirm it"))

    # -- PostgreSQL against Redis ------------------------------------------------
    top = i.redis_version
    if pg_known and top is not None:
        stored = persisted.version if persisted else 0
        waiting = sorted(v for _, v, _ in r.outbox) if r else []
        dead = sorted({int(m.event["version"]) for m in letters
                       if m.event and isinstance(m.event.get("version"), int)})
        missing = [v for v in range(stored + 1, top + 1)]
        at = f"PostgreSQL at v{stored}" if persisted else "PostgreSQL has no row"
        if not missing and stored == top:
            out.append(Finding("postgresql", "ok", f"PostgreSQL agrees: v{stored}"
                               + (" (deleted)" if persisted and persisted.deleted else "")))
        elif stored > top:
            out.append(Finding("postgresql", "warn", f"Redis is at v{top}, behind PostgreSQL "
                               f"at v{stored}: Redis lost writes (failover, restart)",
                               fix="the next read or write repairs Redis from PostgreSQL after "
                                   "REDIS_SETTLE_SECONDS; nothing to do"))
        else:
            in_outbox = [v for v in missing if v in waiting]
            in_dlq = [v for v in missing if v in dead]
            unaccounted = [v for v in missing if v not in waiting and v not in dead]
            lag = len(missing)
            head = f"Redis is at v{top}, {at}"
            if in_dlq:
                out.append(Finding("postgresql", "fail", f"{head}: {_versions(in_dlq)} "
                                   f"{'is' if len(in_dlq) == 1 else 'are'} in the DLQ",
                                   fix=f"see why with `sessionsync dlq list --messages`; fix the "
                                       f"cause, then `sessionsync dlq redrive --session-id {sid}`"))
            if in_outbox:
                out.append(Finding("postgresql", "info", f"{head}: {_versions(in_outbox)} "
                                   f"{'is' if len(in_outbox) == 1 else 'are'} waiting in the outbox "
                                   "for SQS", fix="the relay sends it within seconds; if it stays, "
                                   "check the relay (`sessionsync diagnose`, outbox section)"))
            if unaccounted:
                where = ("no outbox entry" if not waiting else
                         f"no outbox entry for {_versions(unaccounted)}")
                n = len(unaccounted)
                out.append(Finding("postgresql", "warn" if n == lag else "info",
                                   f"{head}, {where}: {n} version{'s' if n != 1 else ''} "
                                   f"{'are' if n != 1 else 'is'} in flight or lost, see dlq list",
                                   fix="in flight: `sessionsync queue-metrics` shows messages "
                                       "waiting or in flight and this clears in seconds; lost: "
                                       "`sessionsync dlq list` (the DLQ may hold more than was read)"))

    # -- the DLQ ------------------------------------------------------------------
    for message in letters:
        event = message.event or {}
        version = event.get("version")
        if pg_known and persisted and isinstance(version, int) and version <= persisted.version:
            out.append(Finding("dlq", "warn", f"the DLQ holds v{version} ({message.error_class} "
                               f"{message.error_code or ''} {message.constraint or ''}".rstrip()
                               + "), already persisted: a duplicate or a version conflict",
                               fix="`sessionsync dlq list --messages`: a version_conflict means two "
                                   "writes got the same version; PostgreSQL kept the first"))
    if i.dead_letters is not None and i.dlq_read >= i.dlq_limit:
        out.append(Finding("dlq", "info", f"only the first {i.dlq_read} DLQ messages were read"))
    return out
