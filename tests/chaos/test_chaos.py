"""The fault-injection suite: a workload of concurrent clients, one fault at a
time (and some combined), with real servers, then the history checker
(tests/chaos/history.py) over everything the system left once drained.

Each scenario runs the workload for a few seconds while its nemesis injects
the fault, heals everything, drains the pipeline and checks the rules:
(a) acknowledged writes persisted exactly once with their content, (b) no
stale read, (c) no resurrection, (d) one content per (session, version)
everywhere, (e) whatever is not persisted is in the DLQ with its reason,
(f) nothing an owner created before a finished revoke-all survives it.
(g) a session ends when its lifetime ends, and only then.
Where a fault makes a loss unavoidable by design, the checker asserts that
the system reported it.  docs/guarantees.md maps each fault to its test.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

import pytest
import redis

from chalicelib.adapters.redis.scripts import CREATE_SCRIPT, DELETE_SCRIPT, UPDATE_SCRIPT
from sessionsync import provisioning
from tests.chaos.history import (
    History,
    Op,
    check,
    check_acknowledged_persisted,
    never_sent,
    revoke_tombstones,
)
from tests.chaos.stack import ChaosStack
from tests.chaos.workload import Workload
from tests.support.servers import RedisServer, TcpProxy

pytestmark = [pytest.mark.chaos, pytest.mark.localstack]

WORKLOAD_SECONDS = 8.0


def run(stack: ChaosStack, nemesis: Callable[[threading.Event], None] | None = None, *,
        seconds: float = WORKLOAD_SECONDS, clients: int = 4,
        keyed_every: int = 2) -> tuple[History, Workload]:
    """Set up, run the workload with ``nemesis(stop)`` beside it (``stop`` is
    set when the workload ends: a looping nemesis stops then), drain, and
    return the history (the caller checks it)."""
    history = History()
    workload = Workload(lambda: stack.service, history, prefix=f"ch-{uuid.uuid4().hex[:6]}",
                        clients=clients, keyed_every=keyed_every)
    workload.setup()
    stop = threading.Event()
    fault = threading.Thread(target=nemesis, args=(stop,), daemon=True) if nemesis else None
    if fault:
        fault.start()
    try:
        workload.run(seconds=seconds)
    finally:
        stop.set()
        if fault:
            fault.join(timeout=120)
    assert not (fault and fault.is_alive()), "the nemesis hung"
    stack.drain(workload.ids)
    return history, workload


def unsent(stack: ChaosStack, history: History, since: float = float("-inf")) -> set[tuple[str, int]]:
    """What of the history's writes since ``since`` SQS never accepted
    (history.never_sent)."""
    return never_sent(history, stack.accepted, since)


def assert_clean(stack: ChaosStack, history: History, workload: Workload, *,
                 forgets_from: float | None = None, forgot_at: float | None = None,
                 reported: bool = True) -> None:
    """Every rule holds.  ``forgets_from``: Redis forgot what was written
    from then on (the workload's writes and the revoke-all's tombstones); of
    that, only what never reached SQS may be lost, and (``reported``) only
    with the jump back in time reported.  ``forgot_at``: when it forgot (a
    restart, a failover to a replica that lacked them): rule (f) excuses a
    revoke-all's tombstone lost then, not one lost before the revoke-all."""
    if forgot_at is not None:
        history.add(Op(0, "forget", "redis", forgot_at, forgot_at, "ok"))
    observed = stack.observe(workload.ids)
    lost = unsent(stack, history, forgets_from) if forgets_from is not None else set()
    if lost and reported:
        assert any("went back in time" in r["message"] for r in observed.reported), observed.reported
    violations = check(history, observed, allow_lost=lost)
    acknowledged = len(history.acknowledged_writes())
    print(f"history: {history.summary()}; rows {len(observed.rows)}, published "
          f"{len(observed.published)}, dead letters {len(observed.dead_letters)}, "
          f"reports {len(observed.reported)}")
    assert acknowledged >= 20, f"the workload hardly wrote: {history.summary()}"
    assert not violations, "\n".join([str(history.summary()), *violations[:30]])


def later(*steps: tuple[float, Callable[[], None]]) -> Callable[[threading.Event], None]:
    """A nemesis: each step runs ``delay`` seconds after the previous one."""
    def nemesis(stop: threading.Event) -> None:
        for delay, action in steps:
            time.sleep(delay)
            action()
    return nemesis


# -- no fault, and the relay's sweeps racing its wake-ups ------------------------------

@pytest.mark.parametrize("report_batch_item_failures", [True, False],
                         ids=["ReportBatchItemFailures", "plain-mapping"])
def test_without_faults_every_rule_holds(make_stack, throwaway_redis, pg_test_dsn,
                                         report_batch_item_failures):
    stack = make_stack(redis_url=throwaway_redis.url, pg_dsn=pg_test_dsn,
                       report_batch_item_failures=report_batch_item_failures)
    assert_clean(stack, *run(stack))


def test_sweeps_racing_every_wake_up_make_no_duplicate_row_and_lose_nothing(
        make_stack, throwaway_redis, pg_test_dsn):
    # age 0: each sweep (every second) sends what the wake-ups are sending too
    stack = make_stack(redis_url=throwaway_redis.url, pg_dsn=pg_test_dsn, relay_age=0.0,
                       consumers=2)
    assert_clean(stack, *run(stack))


# -- SQS (the relay is its only client: a write never waits for it) ---------------------

def test_sqs_down_for_seconds_delays_changes_and_loses_none(make_stack, throwaway_redis, pg_test_dsn):
    stack = make_stack(redis_url=throwaway_redis.url, pg_dsn=pg_test_dsn)
    assert_clean(stack, *run(stack, later((2.0, stack.sqs_down), (4.0, stack.sqs_back))))


def test_sqs_hung_for_seconds_delays_changes_and_loses_none(make_stack, throwaway_redis, pg_test_dsn):
    stack = make_stack(redis_url=throwaway_redis.url, pg_dsn=pg_test_dsn)
    assert_clean(stack, *run(stack, later((2.0, stack.sqs_hung), (4.0, stack.sqs_back))))


# -- PostgreSQL -----------------------------------------------------------------------

@pytest.fixture
def chaos_postgres(throwaway_postgres) -> str:
    dsn = throwaway_postgres.dsn("chaos")
    provisioning.ensure_database(dsn)
    provisioning.migrate(dsn)
    return dsn


@pytest.mark.parametrize("report_batch_item_failures", [True, False],
                         ids=["ReportBatchItemFailures", "plain-mapping"])
def test_postgresql_stopped_for_seconds_loses_nothing_whatever_the_mapping(
        make_stack, throwaway_redis, throwaway_postgres, chaos_postgres, report_batch_item_failures):
    stack = make_stack(redis_url=throwaway_redis.url, pg_dsn=chaos_postgres,
                       report_batch_item_failures=report_batch_item_failures)
    assert_clean(stack, *run(stack, later((2.0, throwaway_postgres.stop),
                                          (4.0, throwaway_postgres.start))))


# -- relays ---------------------------------------------------------------------------

_RELAY_PROCESS = r"""
import sys
from tests.chaos.stack import relay_process_main
relay_process_main(sys.argv[1:])
"""


def test_a_relay_killed_mid_run_is_taken_over_by_the_next_run_and_nothing_is_lost(
        make_stack, throwaway_redis, pg_test_dsn):
    """The only relay, in a process of its own, is SIGKILLed under the
    workload (its lease left held, its sends in flight cut); the next
    scheduled run waits for the lease to expire, takes over and ships what
    was committed meanwhile."""
    stack = make_stack(redis_url=throwaway_redis.url, pg_dsn=pg_test_dsn, relays=0)
    proc = subprocess.Popen([sys.executable, "-c", _RELAY_PROCESS, throwaway_redis.url, stack.queues.url,
                             stack.localstack_url, stack.channel, str(stack.relay_lease)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lease = stack.relay().lease
    holders: list[str | None] = []
    try:
        holders.append(wait_for(lease.holder, timeout=30, what="the relay process's lease"))

        def nemesis(stop: threading.Event) -> None:
            time.sleep(2.0)
            proc.kill()
            proc.wait(10)
            time.sleep(0.5)
            stack.add_relay()  # the next scheduled run
            holders.append(wait_for(lambda: lease.holder() not in (None, holders[0]) and lease.holder(),
                                    timeout=30, what="the next run to take over"))
        history, workload = run(stack, nemesis)
    finally:
        proc.kill()
        proc.wait(10)
    assert len(holders) == 2 and holders[0] != holders[1], holders
    assert_clean(stack, history, workload)


def test_two_relays_at_once_hand_over_again_and_again_and_nothing_is_lost(
        make_stack, throwaway_redis, pg_test_dsn):
    """Two relay schedules against one Redis, each starting a run every
    1.5 s: runs wait for the lease, hand over, take over, all under the
    workload."""
    stack = make_stack(redis_url=throwaway_redis.url, pg_dsn=pg_test_dsn, relays=2, relay_period=1.5)
    lease = stack.relay().lease
    seen: set[str] = set()

    def watch(stop: threading.Event) -> None:
        while not stop.is_set():
            holder = lease.holder()
            if holder:
                seen.add(holder)
            stop.wait(0.1)
    assert_clean(stack, *run(stack, watch))
    # a run each 1.5 s per schedule, each taking the lease over
    assert len(seen) >= 4, seen


def wait_for(predicate: Callable[[], object], *, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- consumers ------------------------------------------------------------------------

_CONSUMER_PROCESS = r"""
import sys, threading
from tests.chaos.stack import consumer_process_main
consumer_process_main(sys.argv[1:])
"""


@pytest.mark.parametrize("report_batch_item_failures", [True, False],
                         ids=["ReportBatchItemFailures", "plain-mapping"])
def test_consumers_killed_mid_batch_and_two_at_once_leave_one_row_per_version(
        make_stack, throwaway_redis, pg_test_dsn, report_batch_item_failures):
    """Two consumer processes at once beside the stack's own, killed with
    SIGKILL every second or so (mid-batch: between commit and delete, or
    before the commit) and started again."""
    stack = make_stack(redis_url=throwaway_redis.url, pg_dsn=pg_test_dsn,
                       report_batch_item_failures=report_batch_item_failures)
    args = [stack.queues.url, stack.queues.dlq_url, pg_test_dsn, stack.localstack_url,
            "1" if report_batch_item_failures else "0"]
    procs: list[subprocess.Popen] = []
    kills = []

    def killer(stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                while len(procs) < 2:
                    procs.append(subprocess.Popen([sys.executable, "-c", _CONSUMER_PROCESS, *args],
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                stop.wait(1.2)
                victim = procs.pop(0)
                victim.kill()
                victim.wait(10)
                kills.append(time.monotonic())
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(10)

    history, workload = run(stack, killer)
    assert len(kills) >= 3
    assert_clean(stack, history, workload)


# -- answers lost after the commit -------------------------------------------------------

@pytest.fixture
def cutting_proxy(throwaway_redis):
    """A proxy in front of the test's Redis (set up before the stack, so
    torn down after it)."""
    proxy = TcpProxy(throwaway_redis.port)
    yield proxy
    proxy.close()


def test_answers_cut_off_after_the_script_ran_are_replayed_to_keyed_retries(
        cutting_proxy, make_stack, pg_test_dsn):
    """Ten times a second, the reply to the next write script (create,
    update, delete) is cut off by a connection reset: the script ran (the
    write committed, or was refused) and the client got a 503.  Every write
    carries an Idempotency-Key and retries a 503 with it: a retry of a
    committed write finds its record and gets the original outcome; each
    write is persisted once (rules a, d), and replays did happen."""
    stack = make_stack(redis_url=f"redis://127.0.0.1:{cutting_proxy.port}/0", pg_dsn=pg_test_dsn)
    scripts = [hashlib.sha1(script.encode()).hexdigest().encode()
               for script in (CREATE_SCRIPT, UPDATE_SCRIPT, DELETE_SCRIPT)]

    def cuts(stop: threading.Event) -> None:
        # the workload has ended when ``stop`` is set: no write script runs
        # after it, so a cut still armed then cuts nothing
        while not stop.wait(0.1):
            cutting_proxy.cut_after_request(containing=scripts)

    history, workload = run(stack, cuts, keyed_every=1)
    assert_clean(stack, history, workload)
    replays = {name: count for name, count in history.summary().items() if name.endswith(":replayed")}
    assert sum(replays.values()) > 0, history.summary()


# -- Redis forgetting -----------------------------------------------------------------

def test_a_failover_to_a_replica_that_lacked_the_last_writes_never_forks_a_session(
        make_stack, replicated_redis, pg_test_dsn):
    stack = make_stack(redis_url=replicated_redis.proxy_url, pg_dsn=pg_test_dsn)
    unreplicated: dict[str, float] = {}

    def stop_replication() -> None:
        unreplicated["from"] = time.monotonic()
        replicated_redis.stop_replication()

    def lose_unreplicated() -> None:
        replicated_redis.failover(lose_unreplicated=True)
        # the old primary is a replica of the new one now: what it held
        # alone is gone (a revoke-all's tombstones too)
        unreplicated["forgot"] = time.monotonic()

    history, workload = run(stack, later(
        (2.0, stop_replication),
        (1.5, lose_unreplicated),
        (3.0, lambda: replicated_redis.failover())))
    assert replicated_redis.failovers == 2
    assert_clean(stack, history, workload, forgets_from=unreplicated["from"],
                 forgot_at=unreplicated["forgot"])
    # the second failover lost nothing, and the demoted node proved it: values
    # of the epoch it continued were trusted without the settle time
    assert stack.store.continuity_proven > 0


def test_redis_restarted_without_persistence_never_forks_a_session(make_stack, tmp_path, pg_test_dsn):
    server = RedisServer(tmp_path / "redis").start()
    try:
        stack = make_stack(redis_url=server.url, pg_dsn=pg_test_dsn)

        restarted: dict[str, float] = {}

        def restart() -> None:
            server.stop()
            restarted["at"] = time.monotonic()
            server.start()
        # a restart without persistence forgets everything written before it
        assert_clean(stack, *run(stack, later((3.0, restart))), forgets_from=float("-inf"),
                     forgot_at=restarted["at"])
    finally:
        server.stop()


def test_session_keys_lost_at_random_never_fork_a_session(make_stack, throwaway_redis, pg_test_dsn):
    """A third of the session keys deleted every 0.4 s, as eviction takes
    them (markers have no TTL: volatile-* never takes them; the loss of a
    marker too is tested in test_redis_forgets.py and by the restart
    scenarios)."""
    stack = make_stack(redis_url=throwaway_redis.url, pg_dsn=pg_test_dsn)
    admin = redis.Redis.from_url(throwaway_redis.url)

    def forget(stop: threading.Event) -> None:
        while not stop.wait(0.4):
            doomed = list(admin.scan_iter("ss:*:s:*", count=1000))[::3]
            if doomed:
                admin.delete(*doomed)

    try:
        history, workload = run(stack, forget)
    finally:
        admin.close()
    assert_clean(stack, history, workload)


@pytest.mark.parametrize("policy", ["noeviction", "allkeys-lru", "volatile-lru", "volatile-ttl"])
def test_eviction_under_maxmemory_never_forks_a_session(make_stack, throwaway_redis, pg_test_dsn, policy):
    """Filler keys (half with a TTL) keep Redis at its maxmemory, so the
    policy evicts, or refuses writes (noeviction: a 503, never a loss)."""
    admin = redis.Redis.from_url(throwaway_redis.url)
    used = admin.info("memory")["used_memory"]
    admin.config_set("maxmemory", used + 3 * 1024 * 1024)
    admin.config_set("maxmemory-policy", policy)
    stack = make_stack(redis_url=throwaway_redis.url, pg_dsn=pg_test_dsn)

    def fill(stop: threading.Event) -> None:
        n = 0
        while not stop.wait(0.02):
            n += 1
            try:
                admin.set(f"filler:{n}", "x" * 20_000, ex=600 if n % 2 else None)
            except redis.ResponseError:  # OOM under noeviction
                pass

    try:
        history, workload = run(stack, fill)
    finally:
        evicted = admin.info("stats")["evicted_keys"]
        admin.close()
    if policy != "noeviction":
        assert evicted > 0, "nothing was evicted: the test proved nothing"
    # allkeys-* may evict an outbox entry whose send failed (under load):
    # the documented limit that `sessionsync diagnose` fails the policy for
    forgets = float("-inf") if policy.startswith("allkeys") else None
    assert_clean(stack, history, workload, forgets_from=forgets, reported=False)


# -- a loss by design: detected and reported ------------------------------------------

def test_redis_restarted_without_persistence_while_sqs_is_down_loses_only_what_it_reports(
        make_stack, tmp_path, pg_test_dsn):
    """The changes acknowledged while SQS was down live only in Redis's
    outbox; a restart without persistence loses them (only AOF, or WAIT on
    a replica, would keep them).  The system cannot prevent that; it must
    say so: the first sight of Redis's new epoch is logged as an error.
    Everything else holds, and nothing acknowledged outside that window is
    lost."""
    server = RedisServer(tmp_path / "redis").start()
    window: dict[str, float] = {}

    def down() -> None:
        window["down"] = time.monotonic()
        stack.sqs_down()

    def restart() -> None:
        server.stop()
        window["restart"] = time.monotonic()
        server.start()

    try:
        stack = make_stack(redis_url=server.url, pg_dsn=pg_test_dsn)
        history, workload = run(stack, later((2.0, down), (2.5, restart), (1.0, stack.sqs_back)))
        observed = stack.observe(workload.ids)
    finally:
        server.stop()

    # lost: not persisted as acknowledged (absent, or its version taken by a
    # write made after Redis forgot the session)
    lost_ops = [op for op in history.acknowledged_writes()
                if check_acknowledged_persisted(History([op]), observed, set())]
    lost = {(op.session_id, op.version) for op in lost_ops}
    # or acknowledged before it with an event SQS never accepted (its inline
    # send failed on a busy machine and the relay had not run before SQS
    # went down): it too lived only in the outbox, the same limit
    unsent_writes = unsent(stack, history)
    unexplained = [op for op in lost_ops
                   if not (op.end >= window["down"] and op.start <= window["restart"])
                   and (op.session_id, op.version) not in unsent_writes]
    assert not unexplained, f"lost outside the outage window {window}: {unexplained[:10]}"
    # so are the tombstones a revoke-all wrote (its deletions and blocked
    # ids: writes of the server's, not the workload's), each from its
    # script to its send: those not persisted must be of the window too, or
    # never have reached SQS (the same limit as the writes above)
    lost_tombstones = [(sid, version, start, end) for sid, version, start, end
                       in revoke_tombstones(history)
                       if (observed.rows.get((sid, version)) or ("",))[0] != "session_deleted"]
    unexplained_tombstones = [t for t in lost_tombstones
                              if not (t[3] >= window["down"] and t[2] <= window["restart"])
                              and (t[0], t[1]) not in unsent_writes]
    assert not unexplained_tombstones, \
        f"revoke-all tombstones lost outside the outage window: {unexplained_tombstones[:10]}"
    lost |= {(sid, version) for sid, version, _start, _end in lost_tombstones}
    # when Redis forgot them (rule f: a revoke-all that saw a tombstone
    # Redis then forgot is excused; one begun after it is not)
    history.add(Op(0, "forget", "redis", window["restart"], window["restart"], "ok"))
    assert lost, "nothing was lost: the scenario did not make the loss it is about"
    assert any("went back in time" in r["message"] for r in observed.reported), observed.reported
    violations = check(history, observed, allow_lost=lost)
    assert not violations, "\n".join([str(history.summary()), *violations[:30]])


def test_a_pipeline_slower_than_the_settle_time_makes_forks_that_are_dead_lettered_and_reported(
        make_stack, replicated_redis, pg_test_dsn):
    """The settle time assumes the pipeline's lag is shorter.  Here nothing
    consumes during the run (lag: the whole run) and the settle time is
    short: after a failover that lost writes, PostgreSQL vouches for stale
    versions and second writes under the same versions are accepted.  Both
    reach the queue; the consumer keeps one and dead-letters the other as a
    version_conflict, and Redis's jump back in time is logged: a loss by
    design, detected and reported, never silent."""
    stack = make_stack(redis_url=replicated_redis.proxy_url, pg_dsn=pg_test_dsn, consumers=0,
                       settle_seconds=0.3)
    history = History()
    workload = Workload(lambda: stack.service, history, prefix=f"ch-{uuid.uuid4().hex[:6]}")
    workload.setup()
    replicated_redis.stop_replication()
    unreplicated_from = time.monotonic()
    workload.run(seconds=2.0)
    replicated_redis.failover(lose_unreplicated=True)
    workload.run(seconds=3.0)
    stack.add_consumer()
    stack.drain(workload.ids)
    observed = stack.observe(workload.ids)

    # what Redis lost: acknowledged while the replica no longer copied
    lost = {(op.session_id, op.version) for op in history.acknowledged_writes()
            if op.start >= unreplicated_from}
    dead = {_key(letter) for letter in observed.dead_letters
            if letter.get("error_code") == "version_conflict"}
    assert dead, "no fork: the scenario did not make the loss it is about"
    # never silent: an acknowledged write that reached SQS and is not
    # persisted as acknowledged is in the DLQ.  (One whose send failed lived
    # only in the outbox the failover lost: the limit that the jump back in
    # time, logged below, reports.)
    unsent_writes = unsent(stack, history)
    silent = [op for op in history.acknowledged_writes()
              if (op.session_id, op.version) in lost and (op.session_id, op.version) not in dead
              and (op.session_id, op.version) not in unsent_writes
              and check_acknowledged_persisted(History([op]), observed, set())]
    assert not silent, silent[:5]
    assert any("went back in time" in r["message"] for r in observed.reported), observed.reported
    violations = check(history, observed, allow_lost=lost)
    assert not violations, "\n".join([str(history.summary()), *violations[:30]])


def _key(letter) -> tuple[str, int]:
    event = json.loads(letter["body"])
    return event["session_id"], event["version"]


# -- lifetimes: sessions expire under the workload, two sweeps beside it ----------------

@pytest.fixture
def lifetime_dsn(empty_dsn) -> str:
    """A database of the scenario's own: a sweep walks every session of its
    database, and must not expire another test's."""
    provisioning.migrate(empty_dsn)
    return empty_dsn


@pytest.mark.parametrize("slide_on_read", [False, True], ids=["writes-only", "slide-on-read-and-eviction"])
def test_sessions_expiring_under_the_workload_end_once_and_only_when_due(
        make_stack, throwaway_redis, lifetime_dsn, slide_on_read):
    """A TTL of 1 s, so that sessions the workload leaves alone for a second
    expire while it runs (and all of them after it); two expiry sweeps run
    at once, over and over, beside it.  With SESSION_SLIDE_ON_READ, reads
    keep keys alive past their written lifetime and a third of the session
    keys is deleted every 0.4 s, as eviction takes them: a session kept alive
    only by reads then ends.  Rule (f) judges every expiry against the
    acknowledged writes; exactly one session_expired per session."""
    from chalicelib.adapters.postgres.database import Database
    from chalicelib.pipeline.expiry import ExpirySweep

    stack = make_stack(redis_url=throwaway_redis.url, pg_dsn=lifetime_dsn)
    stack.service.default_ttl = 1
    stack.service.slide_on_read = slide_on_read
    sweeps = [ExpirySweep(stack.store, Database.from_dsn(lifetime_dsn), settle_seconds=stack.settle_seconds,
                          grace_seconds=0.0, batch=4) for _ in range(2)]
    admin = redis.Redis.from_url(throwaway_redis.url)

    def both_sweeps() -> None:
        threads = [threading.Thread(target=s.run, kwargs={"budget_seconds": 10}) for s in sweeps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

    def nemesis(stop: threading.Event) -> None:
        while not stop.wait(0.4):
            both_sweeps()
            if slide_on_read:
                doomed = list(admin.scan_iter("ss:*:s:*", count=1000))[::3]
                if doomed:
                    admin.delete(*doomed)

    try:
        history, workload = run(stack, nemesis)
        stack.drain(workload.ids)
        time.sleep(1.5)  # every lifetime has ended now
        both_sweeps()
        both_sweeps()
        stack.drain(workload.ids)
    finally:
        admin.close()
        for sweep in sweeps:
            sweep.durable.close()
    assert_clean(stack, history, workload)
    expired = [(sid, v) for (sid, v), (t, _) in stack.observe(workload.ids).rows.items()
               if t == "session_expired"]
    per_session = {sid: [v for s, v in expired if s == sid] for sid, _ in expired}
    assert expired and all(len(versions) == 1 for versions in per_session.values()), per_session
    print(f"expired: {len(expired)} sessions; reads answered expired: "
          f"{sum(1 for op in history.ops if op.absent == 'expired')}")


# -- an upgrade of the data format under the workload ---------------------------------

# What a process of the previous release does to every marker it writes: a
# key of its own, no TTL; here each bucket's hash is moved into such keys in
# one step (one script: a write of this release never interleaves with it)
_AS_THE_PREVIOUS_RELEASE = """
local ids = redis.call('HKEYS', KEYS[1])
for _, id in ipairs(ids) do
  redis.call('SET', KEYS[1] .. ':' .. id, redis.call('HGET', KEYS[1], id))
end
redis.call('DEL', KEYS[1])
return #ids
"""


def test_markers_migrated_while_the_workload_runs_never_fork_a_session(
        make_stack, throwaway_redis, pg_test_dsn):
    """The dataset starts in the previous format and the previous release
    keeps writing it for the first seconds (every marker moved back into a
    key of its own, again and again), while session keys are lost at random
    (so that recovery leans on the markers in either form); then
    ``migrate-markers`` runs in small batches in the middle of the run, the
    workload going on.  No version older than an acknowledged one is served,
    no deleted session comes back, and no marker key is left."""
    from sessionsync import marker_migration

    stack = make_stack(redis_url=throwaway_redis.url, pg_dsn=pg_test_dsn)
    admin = redis.Redis.from_url(throwaway_redis.url)
    as_previous = admin.register_script(_AS_THE_PREVIOUS_RELEASE)
    done: dict[str, object] = {"moved_back": 0, "evicted": 0}

    def upgrade(stop: threading.Event) -> None:
        started = time.monotonic()
        while not stop.wait(0.1):
            if time.monotonic() - started < 3.0:  # the previous release still writes
                for markers in admin.scan_iter(match="ss:{????}:m", count=1000):
                    done["moved_back"] = int(done["moved_back"]) + int(as_previous(keys=[markers]))
            elif "migration" not in done:
                done["migration"] = marker_migration.migrate(admin, batch=2)
            doomed = list(admin.scan_iter(match="ss:*:s:*", count=1000))[::4]
            if doomed:
                done["evicted"] = int(done["evicted"]) + admin.delete(*doomed)

    try:
        history, workload = run(stack, upgrade, seconds=WORKLOAD_SECONDS)
        left = sorted(admin.scan_iter(match="ss:{????}:m:*", count=1000))
    finally:
        admin.close()
    migration = done.get("migration")
    assert isinstance(migration, marker_migration.MigrationProgress), done
    print(f"moved back {done['moved_back']}, evicted {done['evicted']}, migration {migration.to_dict()}")
    assert int(done["moved_back"]) > 0 and int(done["evicted"]) > 0, done  # else it proved nothing
    assert migration.moved > 0 and migration.batches > 1 and migration.remaining == 0
    assert left == []
    assert_clean(stack, history, workload)
