"""The reference model of one session's life: the specification the real
service is checked against (tests/model/machine.py drives it).

A session is, at any moment, in one PHASE::

    absent ──create──> live(v, ttl, ends, owner) ──PUT/PATCH/touch──> live(v+1 ...)
                         │        │             └─lifetime ends──> expired   (final)
                         │        └──DELETE──> deleted                      (final)
                         └──revoke-all begun after its create──> deleted    (final)
    absent ──revoke-all of an owner whose create was registered──> blocked  (final)

``answers(op, life, call)`` is the whole specification: for one operation
on one possible life it lists every answer the service may give, each with
the life that follows it.  It includes the answers a fault allows: any call
may answer 503 (with Retry-After), and a write that answered 503 may or may
not have happened (a reply cut after the script ran), so the model then
keeps both lives.  The checker (``Possibilities``) holds the set of lives
still consistent with everything observed; an answer no remaining life
allows is a violation, named by the promise it breaks (``PROMISES``).

Time: a lifetime ends between ``ends_lo`` (the ``expires_at`` the write
answered, or its send time plus the TTL when the answer was lost) and
``ends_hi`` (the moment the answer came back plus the TTL plus
``EXPIRY_SLACK``: Redis counts the key's TTL from when the script ran, which
is before the answer).  A call that began after ``ends_hi`` must find the
session over; one that ended before ``ends_lo`` must find it live; in
between either is allowed, and the first answer decides.

The model knows nothing of Redis, SQS or PostgreSQL: a promise is about what
a client sees, so a new mechanism needs no change here, a new operation or
state does (one row in ``OPERATIONS``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

INF = float("inf")
# Redis starts a key's TTL when the script runs, a moment after the stamp the
# answer carries; and it expires keys to the millisecond.
EXPIRY_SLACK = 0.3

ABSENT, LIVE, DELETED, EXPIRED, BLOCKED = "absent", "live", "deleted", "expired", "blocked"
FINAL = (DELETED, EXPIRED, BLOCKED)

# The promises (docs/guarantees.md) a violation can break, by name: a run
# may judge a subset (MODEL_PROMISES) to measure how fast each is found.
PROMISES = {
    "answers": "every answer is one the model allows in the session's state",
    "lifetime": "a session ends when its lifetime ends, not later (recovery, repair) nor earlier",
    "final": "a deleted or expired session never comes back (nor with a null state)",
    "revoke-spares-later": "a revoke-all spares sessions whose create began after it",
    "revoke-ends": "a revoke-all ends the owner's earlier sessions and finishes in bounded calls",
    "history": "after the pipeline drains, PostgreSQL and the DLQ satisfy the history checker",
    "tenants": "another tenant's key reaches only its own sessions of the same ids, never these",
    "retention": "the purge removes only rows a newer version replaced: each session keeps its latest",
}


@dataclass(frozen=True)
class Life:
    """One possible life of a session, as far as a client can tell."""

    phase: str = ABSENT
    version: int = 0
    #: the content of the current version (the state's "w")
    token: str | None = None
    ttl: int = 0
    ends_lo: float = INF
    ends_hi: float = INF
    owner: str | None = None
    #: (version, token) of every version it went through: what its history may show
    log: tuple[tuple[int, str | None], ...] = ()
    #: wall-clock time its create was sent (a revoke-all begun later ends it)
    born: float = INF

    def at(self, t0: float, t1: float) -> list[Life]:
        """The lives this one may be in during a call from ``t0`` to ``t1``."""
        if self.phase != LIVE or t1 < self.ends_lo:
            return [self]
        ended = replace(self, phase=EXPIRED)
        return [ended] if t0 >= self.ends_hi else [self, ended]


@dataclass(frozen=True)
class Call:
    """One call: its operation's arguments and when it was sent and answered
    (wall clock, the server's clock on this machine)."""

    op: str
    t0: float
    t1: float
    token: str | None = None
    ttl: int | None = None
    owner: str | None = None
    #: the precondition: "if-match", "body-version", "if-none-match-star", "none"
    precondition: str = "none"
    expected: int | None = None
    #: GET: Cache-Control max-stale
    max_stale: bool = False


@dataclass(frozen=True)
class Answer:
    """What the service answered (the parts the model judges)."""

    status: int
    code: str | None = None
    version: int | None = None
    token: Any = None
    expires_at: float | None = None
    retry_after: bool = False
    #: a copy served stale (``Age``: max-stale while Redis was unavailable)
    stale: bool = False
    #: GET events: [(version, event_type, token)] newest first
    events: tuple[tuple[int, str, Any], ...] = ()
    #: a 404 that says the session was deleted
    deleted: bool = False


@dataclass(frozen=True)
class Allowed:
    """One answer the model allows: its status and code, the version it
    must carry (None: any / none), and the life after it."""

    status: int
    code: str | None
    then: Life
    version: int | None = None
    token: Any = None


UNAVAILABLE = (503, "ServiceUnavailable")
PENDING = (503, "RecoveryPending")


def _written(life: Life, call: Call, *, token: str | None = None, phase: str = LIVE,
             ttl: int | None = None) -> Life:
    """The life after a write of ``call`` committed on ``life``."""
    ttl = ttl or call.ttl or life.ttl
    token = token if token is not None else call.token
    version = life.version + 1
    return replace(life, phase=phase, version=version, token=token if phase == LIVE else None,
                   ttl=ttl, ends_lo=call.t0 + ttl if phase == LIVE else INF,
                   ends_hi=call.t1 + ttl + EXPIRY_SLACK if phase == LIVE else INF,
                   log=(*life.log, (version, token if phase == LIVE else None)))


def _gone(life: Life) -> list[tuple[int, str]]:
    """What a call on a session that is not live answers."""
    if life.phase == EXPIRED:
        return [(404, "SessionExpired")]
    return [(404, "SessionNotFound")]


def _unknown(life: Life, written: Life | None) -> list[Allowed]:
    """A fault's answers: 503 with nothing written; or, for a write, a 503
    after which it may have been written (the reply was lost)."""
    lives = [life] + ([written] if written is not None else [])
    return [Allowed(status, code, then) for status, code in (UNAVAILABLE, PENDING) for then in lives]


# -- the operations ------------------------------------------------------------

def create(life: Life, call: Call) -> list[Allowed]:
    """POST /sessions, or PUT with If-None-Match: * (then 412, not 409)."""
    taken = 412 if call.precondition == "if-none-match-star" else 409
    code = "PreconditionFailed" if taken == 412 else "SessionExists"
    if life.phase == ABSENT:
        born = replace(life, owner=call.owner, born=call.t0)
        made = _written(born, call)
        return [Allowed(201, None, made, version=1, token=call.token), *_unknown(born, made)]
    return [Allowed(taken, code, life), *_unknown(life, None)]


def _conditional(life: Life, call: Call, write: Callable[[Life], Life], status: int = 200,
                 unconditional_ok: bool = False) -> list[Allowed]:
    """A write that needs the session live, at ``call.expected`` when given."""
    if call.precondition == "none" and not unconditional_ok:
        return [Allowed(428, "PreconditionRequired", life)]
    if life.phase != LIVE:
        return [Allowed(s, c, life) for s, c in _gone(life)] + _unknown(life, None)
    if call.expected is not None and call.expected != life.version:
        if call.precondition == "if-match":
            return [Allowed(412, "PreconditionFailed", life), *_unknown(life, None)]
        return [Allowed(409, "ConcurrencyError", life), *_unknown(life, None)]
    after = write(life)
    return [Allowed(status, None, after, version=after.version, token=after.token),
            *_unknown(life, after)]


def put(life: Life, call: Call) -> list[Allowed]:
    if call.precondition == "if-none-match-star":
        return create(life, call)
    return _conditional(life, call, lambda lf: _written(lf, call))


def patch(life: Life, call: Call) -> list[Allowed]:
    """A merge patch setting "w": without If-Match it applies to the current version."""
    return _conditional(life, call, lambda lf: _written(lf, call), unconditional_ok=True)


def touch(life: Life, call: Call) -> list[Allowed]:
    return _conditional(life, call, lambda lf: _written(lf, call, token=lf.token),
                        unconditional_ok=True)


def delete(life: Life, call: Call) -> list[Allowed]:
    return _conditional(life, call, lambda lf: _written(lf, call, phase=DELETED), status=204,
                        unconditional_ok=True)


def get(life: Life, call: Call) -> list[Allowed]:
    if life.phase == LIVE:
        allowed = [Allowed(200, None, life, version=life.version, token=life.token)]
    else:
        allowed = [Allowed(s, c, life) for s, c in _gone(life)]
    if call.max_stale:
        # Redis unavailable, and the client accepts a stale copy: PostgreSQL's
        # last, which may be behind acknowledged writes, a deletion or a
        # shorter lifetime still in the queue (never a final one it persisted)
        allowed += [Allowed(200, "stale", life, version=v, token=t) for v, t in life.log if t is not None]
    return allowed + _unknown(life, None)


def history(life: Life, call: Call) -> list[Allowed]:
    """GET /sessions/{id}/events: what PostgreSQL persisted (judged in
    ``events_allowed``); 404 while nothing of it is persisted."""
    return [Allowed(200, None, life), Allowed(404, "SessionNotFound", life), *_unknown(life, None)]


def revoked(life: Life, call: Call) -> list[Life]:
    """The lives after a revoke-all of ``call.owner`` (begun at ``call.t0``)
    that finished: the owner's sessions created before it are over; those
    whose create began after it are untouched."""
    if life.owner != call.owner or life.born >= call.t0:
        return [life]
    if life.phase == LIVE:
        return [_written(life, call, phase=DELETED)]
    if life.phase == ABSENT:
        return [replace(life, phase=BLOCKED)]
    if life.phase == EXPIRED:
        # over by its lifetime already: either end may be the one a read reports
        return [life, _written(life, call, phase=DELETED)]
    return [life]


def revoke_unfinished(life: Life, call: Call) -> list[Life]:
    """A revoke-all that answered ``remaining: true`` or a 503: each earlier
    session of the owner may or may not be over yet."""
    after = revoked(life, call)
    return [life] + [lf for lf in after if lf != life]


# op -> its answers in a state; one row per operation (a new operation: a row)
OPERATIONS: dict[str, Callable[[Life, Call], list[Allowed]]] = {
    "create": create,
    "put": put,
    "patch": patch,
    "touch": touch,
    "delete": delete,
    "get": get,
    "history": history,
}


def matches(allowed: Allowed, answer: Answer) -> bool:
    if allowed.status != answer.status or answer.stale != (allowed.code == "stale"):
        return False
    if allowed.code not in (None, "stale") and allowed.code != answer.code:
        return False
    if allowed.status == 503 and not answer.retry_after:
        return False
    if allowed.version is not None and allowed.status != 204 and allowed.version != answer.version:
        return False  # (a 204 carries no version)
    if allowed.status in (200, 201) and allowed.token is not None and allowed.token != answer.token:
        return False
    return True


def expiry_ok(life: Life, answer: Answer) -> bool:
    """A live answer's expires_at is the lifetime the model knows."""
    if answer.expires_at is None or answer.stale or life.phase != LIVE:
        return True
    return life.ends_lo - 0.002 <= answer.expires_at <= life.ends_hi


def events_allowed(lives: Iterable[Life], events: tuple[tuple[int, str, Any], ...]) -> bool:
    """A history page: newest first, each event one the session went
    through (a ``session_expired`` or ``session_deleted`` only as its last)."""
    versions = [v for v, _, _ in events]
    if versions != sorted(versions, reverse=True) or len(set(versions)) != len(versions):
        return False
    for life in lives:
        known = dict(life.log)
        if all(_event_fits(known, life, v, kind, token) for v, kind, token in events):
            return True
    return False


def _event_fits(known: dict[int, str | None], life: Life, version: int, kind: str, token: Any) -> bool:
    if life.phase == BLOCKED:  # the revoke-all's tombstone of an id never created
        return kind == "session_deleted"
    if kind == "session_expired":
        return version == life.version + 1 or (life.phase == EXPIRED and version <= life.version + 1)
    if version not in known:
        return False
    if kind == "session_deleted":
        return known[version] is None
    return known[version] == token


class Violation(AssertionError):
    def __init__(self, promise: str, message: str) -> None:
        super().__init__(f"[{promise}] {message}")
        self.promise = promise


def promise_of(lives: Iterable[Life], answer: Answer, call: Call) -> str:
    """Which promise an answer no life allows breaks (for the report)."""
    lives = list(lives)
    if answer.status in (200, 201, 204) and call.op not in ("history",):
        if answer.status == 200 and call.op == "get" and answer.token is None:
            return "final"
        if any(lf.phase == LIVE and call.t0 >= lf.ends_hi for lf in lives) or \
                (lives and all(lf.phase == EXPIRED for lf in lives)):
            return "lifetime"
        if lives and all(lf.phase in FINAL for lf in lives):
            return "final"
    return "answers"


@dataclass
class Possibilities:
    """The lives of one session still consistent with what was observed."""

    session_id: str
    lives: frozenset[Life] = frozenset({Life()})

    def observe(self, call: Call, answer: Answer) -> None:
        """Narrow the lives to those that allow ``answer`` to ``call``;
        raise Violation when none does."""
        step = OPERATIONS[call.op]
        nxt: set[Life] = set()
        for base in self.lives:
            for life in base.at(call.t0, call.t1):
                for allowed in step(life, call):
                    if matches(allowed, answer) and (allowed.status not in (200, 201)
                                                     or expiry_ok(allowed.then, answer)):
                        if call.op == "history" and allowed.status == 200 \
                                and not events_allowed([life], answer.events):
                            continue
                        nxt.add(allowed.then)
        if not nxt:
            raise Violation(promise_of(self._now(call), answer, call),
                            f"{self.session_id}: {call.op} ({call.precondition}, expected "
                            f"{call.expected}) answered {answer.status} {answer.code or ''} "
                            f"v{answer.version} {answer.token!r}; the model allows "
                            f"{self.describe(call)}")
        self.lives = frozenset(nxt)

    def _now(self, call: Call) -> list[Life]:
        return [lf for base in self.lives for lf in base.at(call.t0, call.t1)]

    def describe(self, call: Call) -> str:
        out = []
        for life in self._now(call):
            allowed = sorted({(a.status, a.code or "", a.version or 0)
                              for a in OPERATIONS[call.op](life, call) if a.status != 503})
            out.append(f"{life.phase} v{life.version} {life.token!r} -> {allowed}")
        return "; ".join(out)

    def revoke(self, call: Call, finished: bool) -> None:
        step = revoked if finished else revoke_unfinished
        self.lives = frozenset(after for base in self.lives for life in base.at(call.t0, call.t1)
                               for after in step(life, call))

    def may_be_live(self, t0: float, t1: float) -> bool:
        return any(lf.phase == LIVE for base in self.lives for lf in base.at(t0, t1))

    def owned_live(self, owner: str, t0: float, t1: float) -> set[tuple[int, str | None]]:
        """(version, token) the owner listing may show for this session."""
        return {(lf.version, lf.token) for base in self.lives for lf in base.at(t0, t1)
                if lf.phase == LIVE and lf.owner == owner}
