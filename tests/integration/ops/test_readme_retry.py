"""The README's conflict retry loops, run as written against ``sessionsync
serve``: the Python client's ``update`` and the plain-HTTP one."""
from __future__ import annotations

import json
import threading
import urllib.error
import uuid

import pytest
import sessionsync_client as ss

from tests.integration.ops.utils import readme_blocks
from tests.support.constants import API_KEY
from tests.support.ops import cli_env
from tests.support.servers import serve_process


@pytest.fixture
def served(app_settings, tmp_path):
    with serve_process(cli_env(app_settings), tmp_path, "--no-pipeline") as (port, _log):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def readme(served, monkeypatch) -> dict:
    """The README's blocks executed in one namespace, as a reader pastes them."""
    monkeypatch.setenv("SESSIONSYNC_URL", served)
    monkeypatch.setenv("KEY", API_KEY)
    blocks = readme_blocks()
    assert len(blocks) == 2, blocks
    namespace: dict = {"__name__": "readme"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"README.md conflicts block {number}", "exec"), namespace)
    return namespace


def new_cart(readme: dict) -> str:
    sid = f"readme-{uuid.uuid4().hex[:10]}"
    readme["call"]("POST", "/sessions", {"session_id": sid, "state": {"items": []}})
    return sid


def race_once(readme: dict, loop: str) -> list[int]:
    """Let another writer in between the loop's first read and its write;
    returns the HTTP error codes the loop met."""
    if loop == "add_item":
        return race_the_client_once(readme)
    original, raced, errors = readme["call"], [], []

    def call(method, path, body=None, headers=None):
        try:
            reply = original(method, path, body, headers)
        except urllib.error.HTTPError as exc:
            errors.append(exc.code)
            raise
        if method == "GET" and not raced:
            raced.append(reply["version"])
            original("PUT", path, {"state": {"items": [*reply["state"]["items"], "theirs"]}},
                     {"If-Match": f'"{reply["version"]}"'})
        return reply
    readme["call"] = call
    return errors


def race_the_client_once(readme: dict) -> list[int]:
    """``race_once`` for the client block: the competing write goes in after
    the client's first GET got its answer."""
    sessions, errors, raced = readme["sessions"], [], []
    original = sessions._send

    def send(request):
        reply = original(request)
        if reply.status >= 400:
            errors.append(reply.status)
        if request.method == "GET" and not raced:
            raced.append(request.path)
            read = json.loads(reply.body)
            readme["call"]("PUT", request.path, {"state": {"items": [*read["state"]["items"], "theirs"]}},
                           {"If-Match": f'"{read["version"]}"'})
        return reply
    sessions._send = send
    return errors


def version_and_state(result) -> tuple[int, dict]:
    """What a loop returned: the client's Session, or the plain loop's JSON."""
    if isinstance(result, ss.Session):
        return result.version, result.state
    return result["version"], result["state"]


@pytest.mark.parametrize("loop", ["add_item", "add_item_over_http"])
def test_the_readme_loop_rereads_and_reapplies_after_losing_a_race(readme, loop):
    sid = new_cart(readme)
    errors = race_once(readme, loop)

    result = readme[loop](sid, "ours")

    assert errors == [412]  # the first write (If-Match) lost, once
    # both changes, none overwritten
    assert version_and_state(result) == (3, {"items": ["theirs", "ours"]})


@pytest.mark.parametrize("loop", ["add_item", "add_item_over_http"])
def test_the_readme_loop_loses_no_item_among_concurrent_writers(readme, loop):
    sid = new_cart(readme)
    writers, each = 4, 5
    failures: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(each):
                readme[loop](sid, f"{n}-{i}", attempts=100)
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures
    session = readme["call"]("GET", f"/sessions/{sid}")
    expected = sorted(f"{n}-{i}" for n in range(writers) for i in range(each))
    assert sorted(session["state"]["items"]) == expected
    assert session["version"] == 1 + writers * each


def test_the_readme_loop_does_not_retry_what_is_not_a_conflict(readme):
    with pytest.raises(urllib.error.HTTPError) as caught:
        readme["add_item_over_http"](f"readme-missing-{uuid.uuid4().hex[:8]}", "x")
    assert caught.value.code == 404
    missing = f"readme-missing-{uuid.uuid4().hex[:8]}"
    sent = []
    original = readme["sessions"]._send
    readme["sessions"]._send = lambda request: sent.append(request.method) or original(request)
    with pytest.raises(ss.SessionNotFoundError):
        readme["add_item"](missing, "x")
    assert sent == ["GET"]
