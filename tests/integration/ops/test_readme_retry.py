"""The README's conflict retry loops, run as written against ``sessionsync
serve``: the plain-HTTP one and the one on ``retry_on_conflict``."""
from __future__ import annotations

import threading
import urllib.error
import uuid

import pytest

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


def race_once(readme: dict) -> list[int]:
    """Make ``call`` let another writer in between the loop's first read and
    its write; returns the HTTP error codes the loop met."""
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


@pytest.mark.parametrize("loop", ["add_item", "add_item_with_helper"])
def test_the_readme_loop_rereads_and_reapplies_after_losing_a_race(readme, loop):
    sid = new_cart(readme)
    errors = race_once(readme)

    result = readme[loop](sid, "ours")

    assert errors == [412]  # the first write (If-Match) lost, once
    assert result["version"] == 3
    assert result["state"] == {"items": ["theirs", "ours"]}  # both changes, none overwritten


@pytest.mark.parametrize("loop", ["add_item", "add_item_with_helper"])
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
        readme["add_item_with_helper"](f"readme-missing-{uuid.uuid4().hex[:8]}", "x")
    assert caught.value.code == 404
