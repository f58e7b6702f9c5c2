"""The state machine: hypothesis drives the real service (tests/model/world.py)
with operations and faults, and every answer is judged by the model
(tests/model/model.py).

Each example uses sessions and an owner of its own; a second tenant's key
calling the same ids and owner reaches sessions of its own, judged by the
same model in a space of their own (``theirs``).  The first violation
is recorded and the example goes on without judging (the servers are
real: a shrink that replays the steps may not meet the same timing, and
raising mid-example would leave the faults in place); it is raised at
teardown, after the world is healed.  At teardown, with no violation, the
pipeline drains and the chaos suite's history checker (tests/chaos/history.py)
runs over what PostgreSQL, the DLQ and Pub/Sub hold for the example.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from chalicelib.domain import errors, tenants
from chalicelib.service import owners
from tests.chaos.history import History, Op, check
from tests.model.model import (
    ABSENT,
    PROMISES,
    Answer,
    Call,
    Possibilities,
    Violation,
)
from tests.model.world import OTHER_TENANT, REDIS_FAULTS, World

# The faults of Redis that make it forget more than a key (``redis_forgets``).
# Each applies on the single node and on the cluster: what each is on either,
# world.REDIS_FAULTS (with key-evicted and the reply cut, the other rules').
FORGETTING = ["replica-falls-behind", "failover", "marker-evicted", "flush",
              "restart-without-persistence"]
assert {*FORGETTING, "key-evicted", "reply-cut-after-the-script-ran"} == set(REDIS_FAULTS)

# sessions of an example: all but the last exist when it starts (``start``)
SESSIONS = 3
TTLS = (1, 4, 8)
PAUSES = (0.5, 1.5, 3.0)


def judged_promises() -> frozenset[str]:
    """MODEL_PROMISES=lifetime,final judges only those (to measure how fast
    each is found); every promise by default."""
    names = os.environ.get("MODEL_PROMISES", "")
    chosen = frozenset(n for n in names.split(",") if n) or frozenset(PROMISES)
    assert chosen <= set(PROMISES), f"MODEL_PROMISES: unknown {sorted(chosen - set(PROMISES))}"
    return chosen


def _iso(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def answer_of(reply: Any) -> Answer:
    """The parts of an HTTP answer the model judges."""
    body: Any = None
    if reply.body:
        try:
            body = json.loads(reply.body)
        except ValueError:
            body = None
    headers = {k.lower(): v for k, v in reply.headers.items()}
    status = reply.status_code
    if not isinstance(body, dict):
        return Answer(status, retry_after="retry-after" in headers)
    state = body.get("state")
    events = tuple((e["version"], e["event_type"],
                    e["state"].get("w") if isinstance(e.get("state"), dict) else None)
                   for e in body.get("events", ()) or ())
    return Answer(status, body.get("code"), body.get("version") if status < 300 else None,
                  state.get("w") if isinstance(state, dict) else None,
                  _iso(body.get("expires_at")) if status < 300 else None,
                  retry_after="retry-after" in headers, stale="age" in headers, events=events,
                  deleted=bool(((body.get("error") or {}).get("details") or {}).get("deleted")))


def _answer_of_error(exc: Exception) -> Answer:
    if isinstance(exc, errors.SessionSyncError):
        return Answer(exc.status, exc.code, retry_after=exc.status == 503)
    raise exc


class ModelMachine(RuleBasedStateMachine):
    """Set ``world`` (and optionally ``promises``) before running."""

    world: ClassVar[World]
    promises: ClassVar[frozenset[str]] = frozenset(PROMISES)
    #: examples run so far in this process (the report says which one failed)
    examples: ClassVar[int] = 0
    #: MODEL_SURVEY=1: report every violation and raise none (how many
    #: examples the search takes to find each promise broken)
    survey: ClassVar[bool] = False
    #: promise -> the example that first broke it (survey)
    found: ClassVar[dict[str, int]] = {}

    def __init__(self) -> None:
        super().__init__()
        ModelMachine.examples += 1
        self.example = ModelMachine.examples
        prefix = f"md{uuid.uuid4().hex[:6]}"
        self.ids = [f"{prefix}-s{i}" for i in range(SESSIONS)]
        self.owner = f"{prefix}-o"
        self.models = {sid: Possibilities(sid) for sid in self.ids}
        #: the other tenant's sessions of the same client ids: its own, absent
        #: until its key creates them (``other_tenant``)
        self.theirs = {sid: Possibilities(sid) for sid in self.ids}
        #: the calls go with the other tenant's key, judged in its space
        self.other = False
        #: the last step was the other tenant's (a change it caused breaks "tenants")
        self.after_other_tenant = False
        self.history = History()
        self.violation: Violation | None = None
        self.tokens = 0
        #: sessions created during a revoke-all so far
        self.late = 0
        self.began = time.monotonic()

    # -- judging ------------------------------------------------------------------

    def _token(self) -> str:
        self.tokens += 1
        return f"w{self.tokens}"

    def _space(self) -> dict[str, Possibilities]:
        """The sessions the calls reach: the example's, or the other tenant's."""
        return self.theirs if self.other else self.models

    @contextmanager
    def _as_other_tenant(self) -> Iterator[None]:
        self.other = True
        try:
            yield
        finally:
            self.other = False

    def _judge(self, sid: str, call: Call, answer: Answer, promise: str | None = None) -> None:
        if self.violation is not None and not self.survey:
            return
        promise = "tenants" if self.other else promise
        try:
            self._space()[sid].observe(call, answer)
        except Violation as exc:
            exc = Violation(promise, str(exc).split("] ", 1)[1]) if promise else exc
            # the session's lives are unknown from here: it is judged no more
            self._space().pop(sid)
            self._violate(exc.promise, str(exc).split("] ", 1)[1])

    def _violate(self, promise: str, message: str) -> None:
        if promise not in self.promises:
            return
        if self.survey:
            print(f"MODEL SURVEY example {self.example}: [{promise}] {message}")
            self.found.setdefault(promise, self.example)
        if self.violation is None:
            self.violation = Violation(promise, message)

    def _record(self, kind: str, sid: str, t0m: float, call: Call, answer: Answer) -> None:
        """The operation in the history the chaos checker judges: a write
        answered 2xx is ``ok``, 503 ``info`` (it may have happened), else
        ``fail``; a read of a session ``ok``, 404 included (``absent``)."""
        ok = answer.status < 300
        absent = None
        if kind == "read":
            outcome = "ok" if ok or answer.status == 404 else "fail"
            if answer.status == 404:
                absent = "expired" if answer.code == "SessionExpired" else \
                    "deleted" if answer.deleted else "missing"
            kind = "stale-read" if answer.stale else kind
            state = {"w": answer.token} if ok else None
        else:
            outcome = "ok" if ok else "info" if answer.status == 503 else "fail"
            state = None if kind == "delete" else {"w": answer.token if kind == "touch" else call.token}
        version = answer.version
        if ok and version is None:  # a 204 carries none: the model knows it
            versions = {lf.version for lf in self.models[sid].lives} if sid in self.models else set()
            version = versions.pop() if len(versions) == 1 else None
            outcome = "ok" if version is not None else "info"
        self.history.add(Op(0, kind, sid, t0m, time.monotonic(), outcome,
                            version if ok else None, state, absent=absent, owner=call.owner,
                            ttl=call.ttl if ok and kind != "read" else None,
                            error=None if ok else f"{answer.status} {answer.code}"))

    def _send(self, kind: str, sid: str, call_args: dict[str, Any], method: str, path: str,
              body: Any = None, promise: str | None = None, **headers: str) -> Answer:
        t0m = time.monotonic()
        t0, t1, reply = self.world.call(method, path, body, other_tenant=self.other, **headers)
        call = Call(t0=t0, t1=t1, **call_args)
        answer = answer_of(reply)
        if sid in self._space():
            self._judge(sid, call, answer, promise)
            if answer.status == 200 and call.op == "get" and not answer.stale \
                    and answer.expires_at is not None and answer.expires_at + 0.05 < t0:
                # the answer's own lifetime, whatever the model's lives
                self._violate("tenants" if self.other else "lifetime",
                              f"{sid}: GET at {t0:.3f} answered 200 v{answer.version}, "
                              f"its expires_at {answer.expires_at:.3f} already past")
        if self.other:  # the history checker judges the example's sessions
            return answer
        self._record({"get": "read", "put": "update"}.get(call.op, call.op)
                     if not (call.op == "put" and call.precondition == "if-none-match-star") else "create",
                     sid, t0m, call, answer)
        return answer

    def all_ids(self) -> list[str]:
        """Every session of the example, judged or not (any more)."""
        return [*self.ids, *(f"{self.ids[0]}-late{k}" for k in range(1, self.late + 1))]

    def stored_ids(self) -> list[str]:
        """The ids the store holds: the example's and the other tenant's."""
        return [*self.all_ids(), *(tenants.prefix(OTHER_TENANT) + sid for sid in self.theirs)]

    def _believed(self, sid: str) -> int:
        """The version a client would send: the newest it may have seen (at least 1)."""
        lives = self._space().get(sid)
        return max((lf.version for lf in lives.lives), default=1) if lives else 1

    # -- operations ----------------------------------------------------------------

    @initialize(ttls=st.tuples(*[st.sampled_from(TTLS)] * (SESSIONS - 1)),
                owned=st.tuples(*[st.booleans()] * (SESSIONS - 1)), replica_lags=st.booleans())
    def start(self, ttls: tuple[int, ...] = (), owned: tuple[bool, ...] = (),
              replica_lags: bool = False) -> None:
        """A healed world whose buckets of this example's sessions have
        settled after the last failover (an example starts from a steady
        system), and the example's sessions but the last created (most
        operations need one that exists; the last starts absent); with
        ``replica_lags`` the replica copies nothing written after that."""
        self.world.heal()
        late = [f"{self.ids[0]}-late{k}" for k in range(1, 7)]
        self.world.settled([*self.ids, *late, *(tenants.prefix(OTHER_TENANT) + sid for sid in self.ids)])
        for i, (ttl, mine) in enumerate(zip(ttls, owned, strict=True)):
            self.create(i, ttl, mine, via_put=False)
        if replica_lags:
            self.world.stop_replication()

    @rule(i=st.integers(0, SESSIONS - 1), ttl=st.sampled_from(TTLS), owned=st.booleans(),
          via_put=st.booleans())
    def create(self, i: int, ttl: int, owned: bool, via_put: bool) -> None:
        sid, token = self.ids[i], self._token()
        owner = self.owner if owned else None
        body = {"state": {"w": token}, "ttl_seconds": ttl, **({"owner_id": owner} if owner else {})}
        if via_put:
            self._send("create", sid, dict(op="put", token=token, ttl=ttl, owner=owner,
                                           precondition="if-none-match-star"),
                       "PUT", f"/sessions/{sid}", body, **{"If-None-Match": "*"})
        else:
            self._send("create", sid, dict(op="create", token=token, ttl=ttl, owner=owner),
                       "POST", "/sessions", {"session_id": sid, **body})

    @rule(i=st.integers(0, SESSIONS - 1),
          precondition=st.sampled_from(["if-match", "body-version", "none"]),
          stale=st.booleans(), ttl=st.sampled_from([None, *TTLS]))
    def put(self, i: int, precondition: str, stale: bool, ttl: int | None) -> None:
        sid, token = self.ids[i], self._token()
        expected = max(1, self._believed(sid) - (1 if stale else 0))
        body: dict[str, Any] = {"state": {"w": token}, **({"ttl_seconds": ttl} if ttl else {})}
        headers = {}
        if precondition == "body-version":
            body["expected_version"] = expected
        elif precondition == "if-match":
            headers["If-Match"] = f'"{expected}"'
        self._send("update", sid, dict(op="put", token=token, ttl=ttl, precondition=precondition,
                                       expected=None if precondition == "none" else expected),
                   "PUT", f"/sessions/{sid}", body, **headers)

    @rule(i=st.integers(0, SESSIONS - 1), if_match=st.booleans(), stale=st.booleans())
    def patch(self, i: int, if_match: bool, stale: bool) -> None:
        sid, token = self.ids[i], self._token()
        expected = max(1, self._believed(sid) - (1 if stale else 0))
        headers = {"Content-Type": "application/merge-patch+json"}
        if if_match:
            headers["If-Match"] = f'"{expected}"'
        self._send("patch", sid, dict(op="patch", token=token, expected=expected if if_match else None,
                                      precondition="if-match" if if_match else "none"),
                   "PATCH", f"/sessions/{sid}", {"state": {"w": token}}, **headers)

    @rule(i=st.integers(0, SESSIONS - 1), ttl=st.sampled_from([None, *TTLS]))
    def touch(self, i: int, ttl: int | None) -> None:
        sid = self.ids[i]
        self._send("touch", sid, dict(op="touch", ttl=ttl), "POST", f"/sessions/{sid}/touch",
                   {"ttl_seconds": ttl} if ttl else None)

    @rule(i=st.integers(0, SESSIONS - 1), if_match=st.booleans(), stale=st.booleans())
    def delete(self, i: int, if_match: bool, stale: bool) -> None:
        sid = self.ids[i]
        expected = max(1, self._believed(sid) - (1 if stale else 0))
        headers = {"If-Match": f'"{expected}"'} if if_match else {}
        self._send("delete", sid, dict(op="delete", precondition="if-match" if if_match else "none",
                                       expected=expected if if_match else None),
                   "DELETE", f"/sessions/{sid}", **headers)

    @rule(i=st.integers(0, SESSIONS - 1), max_stale=st.booleans())
    def get(self, i: int, max_stale: bool) -> None:
        sid = self.ids[i]
        headers = {"Cache-Control": "max-stale"} if max_stale else {}
        self._send("read", sid, dict(op="get", max_stale=max_stale), "GET", f"/sessions/{sid}", **headers)

    @rule(i=st.integers(0, SESSIONS - 1))
    def history_page(self, i: int) -> None:
        sid = self.ids[i]
        t0, t1, reply = self.world.call("GET", f"/sessions/{sid}/events?limit=100", other_tenant=self.other)
        if sid in self._space():
            self._judge(sid, Call("history", t0, t1), answer_of(reply), "answers")

    @rule()
    def owner_listing(self) -> None:
        t0, t1, reply = self.world.call("GET", f"/owners/{self.owner}/sessions?limit=100",
                                        other_tenant=self.other)
        answer = answer_of(reply)
        if answer.status == 503 and answer.retry_after:
            return
        if answer.status != 200:
            self._violate("answers", f"owner listing answered {answer.status} {answer.code}")
            return
        for session in json.loads(reply.body)["sessions"]:
            sid = session["session_id"]
            model = self._space().get(sid)
            if model is None:
                if sid not in self.ids:
                    self._violate("tenants" if self.other else "answers",
                                  f"owner listing of {self.owner} shows {sid}, not its session")
                continue
            shown = (session["version"], (session.get("state") or {}).get("w"))
            if shown not in model.owned_live(self.owner, t0, t1):
                self._violate("tenants" if self.other else
                              "final" if not model.may_be_live(t0, t1) else "answers",
                              f"owner listing shows {sid} v{shown[0]} {shown[1]!r}; the model allows "
                              f"{sorted(model.owned_live(self.owner, t0, t1), key=str)}")

    def _revoke_observed(self, t0: float, t1: float, finished: bool) -> None:
        call = Call("revoke", t0, t1, owner=self.owner)
        for model in self._space().values():
            model.revoke(call, finished)

    @rule()
    def revoke_all(self) -> None:
        t0m = time.monotonic()
        t0, t1, reply = self.world.call("DELETE", f"/owners/{self.owner}/sessions", other_tenant=self.other)
        answer = answer_of(reply)
        remaining = json.loads(reply.body).get("remaining", True) if answer.status == 200 else True
        if answer.status not in (200, 503):
            self._violate("answers", f"revoke-all answered {answer.status} {answer.code}")
        self._revoke_observed(t0, t1, finished=not remaining)
        if self.other:
            return
        self.history.add(Op(0, "revoke", self.owner, t0m, time.monotonic(),
                            "ok" if answer.status == 200 else "info", state={"remaining": remaining}))

    @rule(n=st.integers(1, 2))
    def revoke_all_while_creating(self, n: int) -> None:
        """Creates that begin after a revoke-all began (run while it reads the
        owner's index) are not its business."""
        self.late += n
        later = [f"{self.ids[0]}-late{self.late - k}" for k in range(n)]
        store = self.world.stack.store
        done: list[bool] = []

        def create_later() -> None:
            if done:
                return
            done.append(True)
            for sid in later:
                self.models[sid] = Possibilities(sid)
                token = self._token()
                self._send("create", sid, dict(op="create", token=token, ttl=8, owner=self.owner),
                           "POST", "/sessions", {"session_id": sid, "state": {"w": token},
                                                 "ttl_seconds": 8, "owner_id": self.owner})

        real = store.owner_ids

        def owner_ids(*args: Any, **kwargs: Any) -> list[str]:
            ids = real(*args, **kwargs)
            create_later()
            return ids

        t0m, t0 = time.monotonic(), time.time()
        store.owner_ids = owner_ids  # type: ignore[method-assign]
        try:
            result = owners.revoke_all(self.world.stack.service, self.owner, budget_seconds=20)
            answer = None
        except errors.ServiceUnavailable as exc:
            result, answer = None, _answer_of_error(exc)
        finally:
            del store.owner_ids
        t1 = time.time()
        create_later()  # a revoke-all that never read the index: the creates follow it
        remaining = result.remaining if result else True
        # the late sessions were born after t0: the model keeps them as they are
        self._revoke_observed(t0, t1, finished=not remaining)
        self.history.add(Op(0, "revoke", self.owner, t0m, time.monotonic(),
                            "ok" if answer is None else "info", state={"remaining": remaining}))
        for sid in later:
            self._send("read", sid, dict(op="get"), "GET", f"/sessions/{sid}",
                       promise="revoke-spares-later")

    @rule()
    def revoke_until_done(self) -> None:
        """A revoke-all called again while it answers ``remaining``, each
        call as short as can be (one id a batch, no time budget): it must
        finish in calls bounded by the owner's sessions (a 503 is retried,
        and not counted, a bounded number of times)."""
        sessions = len(self.models)
        bound = 2 * sessions + 3
        # one id a batch, where the batch is a setting of the module
        saved = getattr(owners, "REVOKE_BATCH", None)
        if saved is not None:
            owners.REVOKE_BATCH = 1
        t0m, t0 = time.monotonic(), time.time()
        answers: list[str] = []
        finished = False
        try:
            for _ in range(bound + 10):
                if finished or len([a for a in answers if a != "503"]) >= bound:
                    break
                try:
                    result = owners.revoke_all(self.world.stack.service, self.owner, budget_seconds=0.0)
                    finished = not result.remaining
                    answers.append(f"deleted {result.deleted} blocked {result.blocked}")
                except errors.ServiceUnavailable:
                    answers.append("503")
                    time.sleep(0.3)
                if not finished:
                    # generous: whatever the pipeline had to persist, it has
                    self.world.drain(self.stored_ids())
        finally:
            if saved is not None:
                owners.REVOKE_BATCH = saved
        t1 = time.time()
        self._revoke_observed(t0, t1, finished=finished)
        self.history.add(Op(0, "revoke", self.owner, t0m, time.monotonic(),
                            "ok" if finished else "info", state={"remaining": not finished}))
        if not finished and len([a for a in answers if a != "503"]) >= bound:
            self._violate("revoke-ends", f"revoke-all of {self.owner} ({sessions} sessions) still "
                                         f"answered remaining after {len(answers)} calls: {answers}")

    # -- the other tenant -----------------------------------------------------------------

    #: each operation as the other tenant's client calls it: the rule and its
    #: arguments (those of a session: its index too)
    OTHER_TENANT_CALLS: ClassVar[dict[str, tuple[str, dict[str, Any] | None]]] = {
        "get": ("get", dict(max_stale=False)),
        "put-if-match": ("put", dict(precondition="if-match", stale=False, ttl=None)),
        "put-body-version": ("put", dict(precondition="body-version", stale=False, ttl=4)),
        "patch": ("patch", dict(if_match=False, stale=False)),
        "touch": ("touch", dict(ttl=None)),
        "delete": ("delete", dict(if_match=False, stale=False)),
        "history": ("history_page", {}),
        "create": ("create", dict(ttl=8, owned=True, via_put=False)),
        "create-via-put": ("create", dict(ttl=4, owned=True, via_put=True)),
        "owner-listing": ("owner_listing", None),
        "revoke-all": ("revoke_all", None),
    }

    @rule(i=st.integers(0, SESSIONS - 1), call=st.sampled_from(sorted(OTHER_TENANT_CALLS)))
    def other_tenant(self, i: int, call: str) -> None:
        """Another tenant's key calls the example's session ids and owner:
        it reaches sessions of its own, absent until it creates them (a read
        or a conditional write answers 404, a create makes a session the
        example's key never sees), judged in their own space; the example's
        sessions are what they were (the reads after every step)."""
        name, args = self.OTHER_TENANT_CALLS[call]
        with self._as_other_tenant():
            getattr(self, name)(**({} if args is None else {"i": i, **args}))
        self.after_other_tenant = True

    # -- time and the pipeline ----------------------------------------------------------

    @rule(seconds=st.sampled_from(PAUSES), memory_pressure=st.booleans())
    def time_passes(self, seconds: float, memory_pressure: bool = False) -> None:
        """Time passes lifetimes, and the scheduled expiry sweep runs (every
        minute in production: here after each pause).  Under memory
        pressure Redis evicts the sessions' keys meanwhile (volatile-*
        takes keys with a TTL: the sessions', never their markers)."""
        time.sleep(seconds)
        if memory_pressure:
            for sid in self.stored_ids():
                self.world.evict(sid)
        try:
            self.world.sweep()
        except errors.ServiceUnavailable:
            pass

    @rule()
    def pipeline_catches_up(self) -> None:
        self.world.drain(self.stored_ids())

    # -- faults ---------------------------------------------------------------------------
    # Two rules, each a table of faults, so that operations outnumber faults
    # whatever the number of faults (hypothesis picks a rule uniformly).

    @rule(kind=st.sampled_from(["sqs-down", "sqs-back", "consumer-killed", "second-consumer",
                                "relay-killed", "relay-started", "second-relay",
                                "reply-cut-after-the-script-ran"]))
    def pipeline_fault(self, kind: str) -> None:
        world = self.world
        if kind == "sqs-down" and not world.sqs_is_down:
            world.sqs_down()
        elif kind == "sqs-back" and world.sqs_is_down:
            world.sqs_back()
        elif kind == "consumer-killed":
            world.kill_consumer()
        elif kind == "second-consumer" and len(world.consumers) < 2:
            world.start_consumer()
        elif kind == "relay-killed":
            world.kill_relay()  # none ships until one is started (or the pipeline must catch up)
        elif kind == "relay-started" and not world.relays:
            world.start_relay()
        elif kind == "second-relay" and len(world.relays) < 2:
            world.start_relay()  # two at once: the lease lets one run
        elif kind == "reply-cut-after-the-script-ran":
            world.cut_next_write_reply()

    # A fault that makes Redis forget more than a key comes after the
    # pipeline drained: the settle time's assumption (world.SETTLE_SECONDS);
    # the loss of what never reached SQS is the chaos suite's subject.
    @rule(i=st.integers(0, SESSIONS - 1))
    def key_evicted(self, i: int) -> None:
        """What eviction takes (volatile-*: the session key, which has a TTL)."""
        self.world.evict(self.ids[i])

    @rule(kind=st.sampled_from(FORGETTING),
          i=st.integers(0, SESSIONS - 1))
    def redis_forgets(self, kind: str, i: int) -> None:
        """Redis forgets more than a key, after the pipeline drained.  A
        failover after the replica fell behind goes to one that lacks what
        was written since."""
        world = self.world
        # on a cluster, the node or shard is that of session i (world.REDIS_FAULTS)
        if kind == "replica-falls-behind":
            world.stop_replication(self.ids[i])
            return
        world.drain(self.stored_ids())
        if kind == "marker-evicted":
            # (lost before the session's first change was persisted, its id
            # could be created again: a documented limit, not tested here)
            world.evict(self.ids[i], marker=True)
        elif kind == "flush":
            world.flush()
        else:
            {"restart-without-persistence": world.restart, "failover": world.failover}[kind](self.ids[i])

    # -- after every step -------------------------------------------------------------------

    @invariant()
    def every_session_reads_as_the_model_allows(self) -> None:
        """A client reading each session after every step: a promise broken
        shows at the step that broke it, not only if a later rule reads."""
        # what the other tenant's key did changed none of them
        promise = "tenants" if self.after_other_tenant else None
        self.after_other_tenant = False
        for sid in list(self.models):
            self._send("read", sid, dict(op="get"), "GET", f"/sessions/{sid}", promise=promise)
        with self._as_other_tenant():  # and the other tenant's, once it created them
            for sid, lives in list(self.theirs.items()):
                if any(life.phase != ABSENT for life in lives.lives):
                    self._send("read", sid, dict(op="get"), "GET", f"/sessions/{sid}")

    # -- the end ---------------------------------------------------------------------------

    def teardown(self) -> None:
        world = self.world
        # drained first: healing a lagging replica fails over to it, which
        # would lose the example's last changes with their outbox entries
        world.drain(self.stored_ids())
        world.heal()
        errors_seen = Counter(op.error for op in self.history.ops if op.error)
        print(f"model example {self.example} ({time.monotonic() - self.began:.0f} s): "
              f"{self.history.summary()} {dict(errors_seen)}"
              f"{'; ' + str(self.violation) if self.violation else ''}")
        if self.violation is not None and not self.survey:
            raise self.violation
        if "history" not in self.promises:
            return
        ids = self.all_ids()
        world.drain(self.stored_ids())
        # the sessions whose lifetime ended get their session_expired row
        # (rule f counts an expired session as over only with it)
        try:
            world.sweep()
        except errors.ServiceUnavailable:
            pass
        world.drain(self.stored_ids())
        observed = world.stack.observe(ids)
        problems = check(self.history, observed)
        if problems and self.survey:
            accepted = sorted((sid, v) for sid, v, _ in world.stack.accepted if sid in ids)
            print(f"MODEL SURVEY example {self.example} diagnostics: persisted "
                  f"{world.persisted(ids)}; accepted by SQS {accepted}; dead letters "
                  f"{[letter.get('error_code') for letter in observed.dead_letters]}")
        if problems:
            self._violate("history", "\n".join(problems[:10]))
            if self.violation is not None and not self.survey:
                raise self.violation
