"""clients/python against a live `sessionsync serve` with its pipeline: every
route, every error code a client can provoke (and the class of every code
the API documents), a write whose answer is cut off after the server ran it
(applied once), 32 concurrent ``update`` calls (none lost), the cursor
iterators across pages, stale reads while Redis is down, the retry budget,
and the same through ``AsyncClient``."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import pytest
import sessionsync_client as ss
import yaml
from sessionsync_client import errors
from sessionsync_client._protocol import CursorLoop

from tests.clients.utils import Served
from tests.support.constants import API_KEY, PROJECT_DIR
from tests.support.servers import TcpProxy, free_port

pytestmark = [pytest.mark.localstack, pytest.mark.slow]

# a short budget: the tests that exhaust it should not wait long
QUICK = ss.RetryPolicy(attempts=3, budget_seconds=5.0, backoff_base=0.05, backoff_cap=0.2)


@pytest.fixture
def client(served: Served):
    with ss.Client(served.url, API_KEY) as client:
        yield client


def count_sends(client: ss.Client) -> list[str]:
    """Record the method and path of every request the client sends."""
    sent: list[str] = []
    original = client._send

    def send(request):
        sent.append(f"{request.method} {request.path}")
        return original(request)
    client._send = send  # type: ignore[method-assign]
    return sent


# --- every route ----------------------------------------------------------------

def test_every_route_through_the_client(client: ss.Client, served: Served, sid: str):
    created = client.create({"items": []}, session_id=sid, ttl_seconds=600)
    assert (created.session_id, created.version, created.state) == (sid, 1, {"items": []})
    assert created.ttl_seconds == 600 and created.expires_at > created.updated_at
    assert created.etag == '"1"' and created.request_id

    read = client.get(sid)
    assert (read.version, read.state, read.created_at) == (1, {"items": []}, created.created_at)
    assert client.refresh(read) is read  # a 304: the copy held is current

    put = client.put(sid, {"items": ["book"]}, read.version)
    assert (put.version, put.state) == (2, {"items": ["book"]})
    assert client.refresh(read).version == 2
    with pytest.raises(ss.PreconditionFailedError) as lost:
        client.put(sid, {"items": ["pen"]}, read.version)
    assert (lost.value.expected_version, lost.value.actual_version) == (1, 2)
    assert isinstance(lost.value, ss.ConcurrencyError) and lost.value.status == 412

    patched = client.patch(sid, {"coupon": "SPRING"})
    assert (patched.version, patched.state) == (3, {"items": ["book"], "coupon": "SPRING"})
    removed = client.patch(sid, {"coupon": None}, version=3, ttl_seconds=900)
    assert (removed.version, removed.state, removed.ttl_seconds) == (4, {"items": ["book"]}, 900)

    touched = client.touch(sid, ttl_seconds=1200)
    assert (touched.version, touched.ttl_seconds, touched.state) == (5, 1200, {"items": ["book"]})

    other = f"{sid}-put"
    made = client.create_if_absent(other, {"n": 0}, owner_id=f"{sid}-owner")
    assert (made.version, made.owner_id) == (1, f"{sid}-owner")
    with pytest.raises(ss.PreconditionFailedError):
        client.create_if_absent(other, {"n": 0})

    events = served.wait_for_events(sid, 5)
    assert events == [1, 2, 3, 4, 5]
    history = list(client.history(sid))
    assert [(e.version, e.event_type) for e in history] == [
        (5, "session_touched"), (4, "session_updated"), (3, "session_updated"), (2, "session_updated"),
        (1, "session_created")]
    assert history[-1].state == {"items": []} and history[0].occurred_at <= history[0].persisted_at

    assert [s.session_id for s in client.owner_sessions(f"{sid}-owner")] == [other]

    client.delete(sid, version=5)
    with pytest.raises(ss.SessionNotFoundError) as gone:
        client.get(sid)
    assert gone.value.deleted and gone.value.status == 404 and gone.value.session_id == sid

    revoked = client.revoke_all(f"{sid}-owner")
    assert (revoked.deleted, revoked.calls) == (1, 1)
    assert list(client.owner_sessions(f"{sid}-owner")) == []

    health = client.health()
    assert health.ok and health.http_status == 200 and {"redis", "postgresql"} <= set(health.checks)


# --- errors -----------------------------------------------------------------------

def test_every_error_code_the_api_documents_has_its_own_class():
    spec = yaml.safe_load((PROJECT_DIR / "docs" / "openapi.yaml").read_text())
    documented = set(spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
                     ["code"]["enum"])
    assert documented == set(errors.BY_CODE)
    for code, cls in errors.BY_CODE.items():
        raised = errors.error_from_reply(
            418, {"x-request-id": "r-1"},
            b'{"type":"about:blank","title":"t","status":418,"detail":"d","code":"%s",'
            b'"error":{"code":"%s","message":"d","details":{"k":1}}}' % (code.encode(), code.encode()))
        assert type(raised) is cls
        assert (raised.code, raised.details, raised.request_id) == (code, {"k": 1}, "r-1")
    # the server's own tree: a client catching the parent catches the child
    assert issubclass(ss.PreconditionFailedError, ss.ConcurrencyError)
    assert issubclass(ss.SessionExpiredError, ss.SessionNotFoundError)
    assert issubclass(ss.RecoveryPendingError, ss.ServiceUnavailableError)
    assert issubclass(ss.PayloadTooLargeError, ss.ValidationError)
    # a code a later minor version adds, or an answer that is no problem
    # details (a proxy's): the base class, with the status
    later = errors.error_from_reply(409, {}, b'{"code":"SomethingNew","error":{"code":"SomethingNew"}}')
    assert type(later) is ss.SessionSyncError and later.status == 409 and later.code == "SomethingNew"
    gateway = errors.error_from_reply(502, {}, b"<html>Bad Gateway</html>")
    assert type(gateway) is ss.SessionSyncError and gateway.status == 502


def test_both_clients_have_the_api_s_major_version():
    spec = yaml.safe_load((PROJECT_DIR / "docs" / "openapi.yaml").read_text())
    package = json.loads((PROJECT_DIR / "clients" / "typescript" / "package.json").read_text())
    major = spec["info"]["version"].split(".")[0]
    assert ss.__version__.split(".")[0] == package["version"].split(".")[0] == major


def test_each_error_a_client_can_provoke_arrives_as_its_class(client: ss.Client, served: Served, sid: str):
    client.create({"n": 0}, session_id=sid)
    with pytest.raises(ss.ValidationError) as bad_id:
        client.get("no spaces allowed")
    assert bad_id.value.status == 400 and bad_id.value.details.get("field") == "session_id"
    with pytest.raises(ss.PayloadTooLargeError):
        client.put(sid, {"blob": "x" * (300 * 1024)}, 1)
    with pytest.raises(ss.PreconditionRequiredError):
        client.put(sid, {"n": 1}, None)
    with pytest.raises(ss.SessionExistsError) as exists:
        client.create({"n": 0}, session_id=sid)
    assert exists.value.session_id == sid and not exists.value.deleted
    with pytest.raises(ss.SessionNotFoundError) as missing:
        client.get(f"{sid}-never")
    assert type(missing.value) is ss.SessionNotFoundError and not missing.value.deleted
    client.put(sid, {"n": 1}, 1, idempotency_key=f"{sid}-key")
    with pytest.raises(ss.IdempotencyKeyReusedError):
        client.put(sid, {"n": 2}, 2, idempotency_key=f"{sid}-key")
    with ss.Client(served.url, None) as anonymous, pytest.raises(ss.UnauthorizedError):
        anonymous.get(sid)
    with ss.Client(served.url, "not-the-key-0123456789") as wrong, pytest.raises(ss.ForbiddenError):
        wrong.get(sid)
    with ss.Client(served.url + "/dev", API_KEY) as misrouted, pytest.raises(ss.RouteNotFoundError):
        misrouted.get(sid)

    short = client.create({"n": 0}, session_id=f"{sid}-short", ttl_seconds=1)
    # past its lifetime by the server's own clock (expires_at), with a margin
    time.sleep(max(0.0, (short.expires_at - short.updated_at).total_seconds()) + 1.0)
    with pytest.raises(ss.SessionExpiredError) as expired:
        client.get(short.session_id)
    assert expired.value.expires_at is not None


def test_a_503_is_retried_after_its_retry_after_within_the_budget_then_raised(unavailable: str):
    with ss.Client(unavailable, API_KEY, retry=ss.RetryPolicy(attempts=2, budget_seconds=30)) as client:
        sent = count_sends(client)
        with pytest.raises(ss.ServiceUnavailableError) as down:
            client.get("any")
    assert sent == ["GET /sessions/any", "GET /sessions/any"]
    assert down.value.retry_after is not None and down.value.retry_after >= 1
    assert down.value.dependency == "redis" and down.value.status == 503
    # a Retry-After past the budget is not waited for: one attempt, then the error
    with ss.Client(unavailable, API_KEY, retry=ss.RetryPolicy(attempts=5, budget_seconds=0.5)) as client:
        sent = count_sends(client)
        with pytest.raises(ss.ServiceUnavailableError):
            client.get("any")
    assert sent == ["GET /sessions/any"]


def test_no_answer_at_all_is_a_transport_error_after_the_attempts():
    with ss.Client(f"http://127.0.0.1:{free_port()}", API_KEY, retry=QUICK, timeout=2) as client:
        sent = count_sends(client)
        with pytest.raises(ss.TransportError) as refused:
            client.create({"n": 0})
    assert len(sent) == QUICK.attempts and refused.value.sent is False


# --- a reply cut off after the server wrote ------------------------------------------

@pytest.fixture
def cutting(served: Served):
    """A proxy in front of the server that can reset a connection after a
    request went through, before its answer reaches the client."""
    proxy = TcpProxy(served.port)
    yield proxy
    proxy.close()


def test_a_patch_whose_answer_was_cut_off_is_retried_and_applied_exactly_once(
        cutting: TcpProxy, served: Served, sid: str):
    with ss.Client(f"http://127.0.0.1:{cutting.port}", API_KEY, retry=QUICK) as client:
        client.create({"clicks": 0, "seen": []}, session_id=sid)
        sent = count_sends(client)
        # a merge patch without a version applies to whatever is current: sent
        # twice without its Idempotency-Key, it would be applied twice
        cutting.cut_after_request(containing=[f"PATCH /sessions/{sid} ".encode()])
        patched = client.patch(sid, {"seen": ["once"], "clicks": 1})
        assert sent == [f"PATCH /sessions/{sid}"] * 2  # cut, then retried
        assert patched.replayed and patched.version == 2
        assert client.get(sid).version == 2  # a second application would be version 3
    assert served.wait_for_events(sid, 2) == [1, 2]


def test_a_create_whose_answer_was_cut_off_is_retried_and_answered_as_created(
        cutting: TcpProxy, served: Served, sid: str):
    with ss.Client(f"http://127.0.0.1:{cutting.port}", API_KEY, retry=QUICK) as client:
        cutting.cut_after_request(containing=[b"POST /sessions "])
        # without the key the retry would be a 409 SessionExists for a create that worked
        created = client.create({"n": 1}, session_id=sid)
        assert created.replayed and created.version == 1
    assert served.wait_for_events(sid, 1) == [1]


def test_without_idempotency_keys_a_write_whose_answer_was_lost_is_not_sent_again(
        cutting: TcpProxy, sid: str):
    with ss.Client(f"http://127.0.0.1:{cutting.port}", API_KEY, retry=QUICK,
                   idempotency_keys=False) as client:
        client.create({"n": 0}, session_id=sid)
        sent = count_sends(client)
        cutting.cut_after_request(containing=[f"PATCH /sessions/{sid} ".encode()])
        with pytest.raises(ss.TransportError) as lost:
            client.patch(sid, {"n": 1})
        assert lost.value.sent is True and sent == [f"PATCH /sessions/{sid}"]
        assert client.get(sid).version == 2  # it was applied, once: the caller cannot know


# --- the conflict loop under contention --------------------------------------------

def test_32_concurrent_updates_from_threads_all_land(client: ss.Client, served: Served, sid: str):
    client.create({"items": []}, session_id=sid)
    failures: list[BaseException] = []
    start = threading.Barrier(32)

    def writer(n: int) -> None:
        try:
            start.wait(timeout=30)
            client.update(sid, lambda state: {"items": [*state["items"], n]}, attempts=100)
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[:3]
    final = client.get(sid)
    assert sorted(final.state["items"]) == list(range(32)) and final.version == 33
    assert served.wait_for_events(sid, 33) == list(range(1, 34))


def test_update_rereads_and_reapplies_after_losing_a_race(client: ss.Client, sid: str):
    client.create({"items": []}, session_id=sid)
    calls: list[list] = []

    def add_ours(state):
        calls.append(list(state["items"]))
        if len(calls) == 1:  # another writer gets in between the read and the write
            client.put(sid, {"items": ["theirs"]}, 1)
        state["items"].append("ours")  # in place: None returned

    result = client.update(sid, add_ours)
    assert calls == [[], ["theirs"]]
    assert (result.version, result.state) == (3, {"items": ["theirs", "ours"]})


# --- iterators ---------------------------------------------------------------------

def test_the_iterators_follow_the_cursor_across_pages(client: ss.Client, served: Served, sid: str):
    client.create({"v": 1}, session_id=sid)
    for version in range(1, 10):
        client.put(sid, {"v": version + 1}, version)
    served.wait_for_events(sid, 10)
    pages = []
    cursor = None
    for _ in range(10):  # bounded
        page = client.history_page(sid, cursor=cursor, limit=3)
        pages.append([e.version for e in page.events])
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == [[10, 9, 8], [7, 6, 5], [4, 3, 2], [1]]
    assert [e.version for e in client.history(sid, page_size=3)] == list(range(10, 0, -1))
    assert next(iter(client.history(sid, page_size=4))).state == {"v": 10}

    owner = f"{sid}-owner"
    ids = sorted(f"{sid}-{n}" for n in range(5))
    for session_id in ids:
        client.create({}, session_id=session_id, owner_id=owner)
    assert [s.session_id for s in client.owner_sessions(owner, page_size=2)] == ids
    first = client.owner_sessions_page(owner, limit=2)
    assert len(first.sessions) == 2 and first.next_cursor is not None


def test_an_iterator_stops_on_a_cursor_the_server_repeats():
    loop = CursorLoop()
    assert loop.follow("a") and loop.follow("b") and not loop.follow(None)
    with pytest.raises(ss.SessionSyncError, match="twice"):
        loop.follow("a")


# --- stale reads, correlation ---------------------------------------------------------

def test_max_stale_serves_postgresql_s_copy_while_redis_is_down(client: ss.Client, served: Served,
                                                                 sid: str):
    client.create({"n": 1}, session_id=sid)
    served.wait_for_events(sid, 1)
    assert client.get(sid, max_stale=300).source == "redis"
    served.redis.pause()
    try:
        with ss.Client(served.url, API_KEY, retry=ss.RetryPolicy(attempts=1)) as once:
            stale = once.get(sid, max_stale=300)
            with pytest.raises(ss.ServiceUnavailableError):
                once.get(sid)
    finally:
        served.redis.resume()
    assert (stale.source, stale.state, stale.version) == ("postgresql", {"n": 1}, 1)
    assert stale.age is not None and stale.age >= 0


def test_a_request_id_and_a_traceparent_given_to_the_client_come_back(client: ss.Client, sid: str):
    traceparent = f"00-{uuid.uuid4().hex}-00f067aa0ba902b7-01"
    traced = client.with_headers({"X-Request-Id": f"{sid}-req", "traceparent": traceparent})
    assert traced.create({}, session_id=sid).request_id == f"{sid}-req"
    with pytest.raises(ss.SessionNotFoundError) as missing:
        traced.get(f"{sid}-never")
    assert missing.value.request_id == f"{sid}-req"


# --- the async client ----------------------------------------------------------------

def test_the_async_client_runs_the_routes_and_32_concurrent_updates(served: Served, sid: str):
    async def scenario() -> None:
        async with ss.AsyncClient(served.url, API_KEY) as client:
            created = await client.create({"items": []}, session_id=sid, owner_id=f"{sid}-owner")
            assert created.version == 1
            assert await client.refresh(created) is created

            async def add(n: int) -> None:
                async def change(state):  # a coroutine function works too
                    await asyncio.sleep(0)
                    return {"items": [*state["items"], n]}
                await client.update(sid, change, attempts=100)

            await asyncio.gather(*(add(n) for n in range(32)))
            final = await client.get(sid)
            assert sorted(final.state["items"]) == list(range(32)) and final.version == 33

            patched = await client.patch(sid, {"done": True})
            touched = await client.touch(sid, ttl_seconds=600)
            assert (patched.version, touched.version, touched.state["done"]) == (34, 35, True)
            with pytest.raises(ss.PreconditionFailedError):
                await client.put(sid, {}, 1)
            assert [s.session_id async for s in client.owner_sessions(f"{sid}-owner")] == [sid]
            served.wait_for_events(sid, 35)
            versions = [e.version async for e in client.history(sid, page_size=10)]
            assert versions == list(range(35, 0, -1))
            await client.delete(sid)
            with pytest.raises(ss.SessionNotFoundError):
                await client.get(sid)
            assert (await client.revoke_all(f"{sid}-owner")).deleted == 0
            assert (await client.health()).ok

    asyncio.run(scenario())


def test_the_async_client_retries_a_cut_answer_once(cutting: TcpProxy, served: Served, sid: str):
    async def scenario():
        async with ss.AsyncClient(f"http://127.0.0.1:{cutting.port}", API_KEY, retry=QUICK) as client:
            await client.create({"n": 0}, session_id=sid)
            cutting.cut_after_request(containing=[f"PATCH /sessions/{sid} ".encode()])
            return await client.patch(sid, {"n": 1})

    patched = asyncio.run(scenario())
    assert patched.replayed and patched.version == 2
    assert served.wait_for_events(sid, 2) == [1, 2]
