"""The README's walk-through with the Python client, run as written against
the live server (its ids made unique for the run, as a reader's would be
their own)."""
from __future__ import annotations

import contextlib
import io
import re
import uuid

import pytest
import sessionsync_client as ss

from tests.clients.utils import Served
from tests.support.constants import API_KEY, PROJECT_DIR

pytestmark = [pytest.mark.localstack, pytest.mark.slow]

SECTION = "## Walk-through"


def walk_through_block() -> str:
    text = (PROJECT_DIR / "README.md").read_text()
    assert SECTION in text, f"the README lost its section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the walk-through has no Python block"
    return blocks[0]


def test_the_readme_walk_through_runs_with_the_python_client(served: Served, monkeypatch):
    run = uuid.uuid4().hex[:8]
    ids = {"cart-42": f"cart-42-{run}", "web-1": f"web-1-{run}", "user-7": f"user-7-{run}"}
    block = walk_through_block()
    for name, unique in ids.items():
        assert f'"{name}"' in block, name
        block = block.replace(f'"{name}"', f'"{unique}"')
    monkeypatch.setenv("SESSIONSYNC_URL", served.url)
    monkeypatch.setenv("KEY", API_KEY)
    namespace: dict = {"__name__": "readme"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "README.md walk-through", "exec"), namespace)

    lines = printed.getvalue().splitlines()
    assert lines[0] == "now at version 2" and lines[-1] == "ok", lines
    cart = namespace["cart"]
    assert (cart.version, cart.ttl_seconds) == (5, 7200)
    assert cart.state == {"items": ["book", "pen", "ink"], "coupon": "SPRING"}
    assert namespace["owned"] == [ids["web-1"]] and namespace["revoked"].deleted == 1
    with ss.Client(served.url, API_KEY) as client:
        with pytest.raises(ss.SessionNotFoundError) as gone:
            client.get(ids["cart-42"])
        assert gone.value.deleted
        # every write of the walk-through, persisted once, and the deletion after them
        assert served.wait_for_events(ids["cart-42"], 6) == [1, 2, 3, 4, 5, 6]
