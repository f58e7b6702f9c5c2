"""clients/typescript (`@sessionsync/client`) against the live server this
folder's tests share: its own suite (`npm test`: the generated types checked
against docs/openapi.yaml, the ESM and CommonJS builds, then node:test over
every route, the error classes, a cut-off PATCH applied once, 32 concurrent
updates, the iterators, SyncKairosStateManager), a session shared with the
Python client both ways, and the npm tarball installed into a clean project
where the README's TypeScript example is compiled against it and run.

clients/typescript/node_modules comes from `npm ci` (the Makefile runs it
before the tests, from package-lock.json); the tests themselves stay on
loopback.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest
import sessionsync_client as ss

from tests.clients.utils import TYPESCRIPT_CLIENT, Served
from tests.support.constants import API_KEY
from tests.support.servers import TcpProxy, free_port

pytestmark = [pytest.mark.localstack, pytest.mark.slow]

NPM = shutil.which("npm")
NODE = shutil.which("node")
TSC = TYPESCRIPT_CLIENT / "node_modules" / "typescript" / "bin" / "tsc"


@pytest.fixture(scope="module")
def built() -> Path:
    """`npm test`'s preparation, once for this module: the generated types
    checked against docs/openapi.yaml, dist/ (ESM and CommonJS) and the
    compiled tests and example (the suite and `npm pack` then skip their
    scripts rather than build it all again)."""
    assert NPM and NODE, "node and npm are needed (Node 20): they build and test clients/typescript"
    installed = TYPESCRIPT_CLIENT / "node_modules" / ".package-lock.json"
    assert installed.exists(), ("clients/typescript/node_modules is missing: `make test` installs it "
                                "(cd clients/typescript && npm ci)")
    prepared = npm("run", "pretest", cwd=TYPESCRIPT_CLIENT)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    return TYPESCRIPT_CLIENT / "dist"


def npm(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) \
        -> subprocess.CompletedProcess:
    assert NPM
    return subprocess.run([NPM, *args, "--no-audit", "--no-fund", "--loglevel=error"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def tap_summary(path: Path) -> dict[str, int]:
    """The counts at the end of node:test's TAP report."""
    text = path.read_text()
    counts = re.findall(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", text, flags=re.M)
    return {name: int(count) for name, count in counts}


def test_the_typescript_suite_passes_against_the_server_and_shares_sessions_with_python(
        built, served: Served, unavailable: str):
    run = f"py-ts-{uuid.uuid4().hex[:8]}"
    from_python = f"{run}-from-py"
    cut_session = f"{run}-cut"
    with ss.Client(served.url, API_KEY) as python:
        python.create({"by": ["python"]}, session_id=from_python)
        proxy = TcpProxy(served.port)
        try:
            # the suite's first PATCH of cut_session gets through, and its answer is cut off
            proxy.cut_after_request(containing=[f"PATCH /sessions/{cut_session} ".encode()])
            env = {**os.environ, "SESSIONSYNC_URL": served.url, "SESSIONSYNC_API_KEY": API_KEY,
                   "SESSIONSYNC_CUT_URL": f"http://127.0.0.1:{proxy.port}",
                   "SESSIONSYNC_CUT_SESSION": cut_session, "SESSIONSYNC_UNAVAILABLE_URL": unavailable,
                   "SESSIONSYNC_CLOSED_URL": f"http://127.0.0.1:{free_port()}",
                   "SESSIONSYNC_FROM_PYTHON": from_python, "SESSIONSYNC_RUN": run}
            result = npm("test", "--ignore-scripts", cwd=TYPESCRIPT_CLIENT, env=env, timeout=400)
        finally:
            proxy.close()
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        counts = tap_summary(TYPESCRIPT_CLIENT / "build" / "results.tap")
        assert counts["fail"] == counts["cancelled"] == counts["skipped"] == counts["todo"] == 0, counts
        assert counts["pass"] == counts["tests"] >= 18, counts

        # the PATCH whose answer was cut: applied once (a second application would be version 3)
        assert python.get(cut_session).version == 2
        assert served.wait_for_events(cut_session, 2) == [1, 2]

        # made by Python, updated by TypeScript; made by TypeScript, updated by Python
        from_ts = f"{run}-from-ts"
        python.update(from_ts, lambda state: {"by": [*state["by"], "python"]})
        for sid, writers in ((from_python, ["python", "typescript"]), (from_ts, ["typescript", "python"])):
            served.wait_for_events(sid, 2)
            history = list(python.history(sid))
            assert [(e.version, e.event_type) for e in history] == [(2, "session_updated"),
                                                                    (1, "session_created")]
            assert [e.state["by"] for e in reversed(history)] == [writers[:1], writers]


# --- the npm tarball, installed as a user installs it ---------------------------------

CONSUMER_CJS = """\
import { SessionSyncClient, ConcurrencyError, SyncKairosStateManager } from "@sessionsync/client";

const client = new SessionSyncClient({ baseUrl: process.argv[2]!, apiKey: process.argv[3]! });
client.health().then((health) => {
  const error: ConcurrencyError = new ConcurrencyError("s", 1, 2);
  console.log(JSON.stringify({ status: health.status, name: error.name,
    manager: typeof SyncKairosStateManager }));
});
"""


@pytest.fixture(scope="module")
def tarball(built, tmp_path_factory) -> Path:
    destination = tmp_path_factory.mktemp("npm-pack")
    packed = npm("pack", "--ignore-scripts", "--pack-destination", str(destination), cwd=TYPESCRIPT_CLIENT)
    assert packed.returncode == 0, packed.stdout + packed.stderr
    (found,) = destination.glob("sessionsync-client-*.tgz")
    return found


def test_the_tarball_holds_both_builds_and_no_dependency(tarball: Path):
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
        manifest = json.load(archive.extractfile("package/package.json"))  # type: ignore[arg-type]
    for built in ("esm/index.js", "esm/index.d.ts", "cjs/index.js", "cjs/index.d.ts", "cjs/package.json",
                  "esm/synckairos.js", "cjs/synckairos.js"):
        assert f"package/dist/{built}" in names, built
    assert not [n for n in names if n.startswith(("package/src/", "package/test/", "package/node_modules/"))]
    assert manifest["name"] == "@sessionsync/client" and "dependencies" not in manifest
    assert manifest["exports"]["."]["import"]["default"] == "./dist/esm/index.js"
    assert manifest["exports"]["."]["require"]["default"] == "./dist/cjs/index.js"


def test_the_tarball_installs_into_a_clean_project_and_the_example_runs_against_the_server(
        tarball: Path, served: Served, tmp_path: Path):
    project = tmp_path / "consumer"
    project.mkdir()
    (project / "package.json").write_text(json.dumps({"name": "consumer", "private": True, "type": "module"}))
    # offline: the package has no dependency for npm to fetch
    installed = npm("install", "--offline", str(tarball), cwd=project)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert sorted(p.name for p in (project / "node_modules").iterdir() if not p.name.startswith(".")) \
        == ["@sessionsync"]

    shutil.copy(TYPESCRIPT_CLIENT / "examples" / "quickstart.ts", project / "quickstart.ts")
    (project / "consumer.cts").write_text(CONSUMER_CJS)
    # compiled against the installed package's declarations (ESM and CommonJS ones)
    assert NODE
    compiled = subprocess.run(
        [NODE, str(TSC), "--strict", "--target", "ES2022", "--module", "NodeNext", "--moduleResolution",
         "NodeNext", "--skipLibCheck", "--typeRoots", str(TYPESCRIPT_CLIENT / "node_modules" / "@types"),
         "--types", "node", "--outDir", "out", "quickstart.ts", "consumer.cts"],
        cwd=project, capture_output=True, text=True, timeout=180)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr

    env = {**os.environ, "SESSIONSYNC_URL": served.url, "SESSIONSYNC_API_KEY": API_KEY}
    example = subprocess.run([NODE, "out/quickstart.js"], cwd=project, env=env, capture_output=True,
                             text=True, timeout=60)
    assert example.returncode == 0, example.stdout + example.stderr
    assert json.loads(example.stdout) == {
        "cart": {"items": ["book"], "coupon": "SPRING"}, "version": 3,
        "conflict": "version 2 is stale: the session is at 3", "managed": "running", "startedAtIsDate": True}

    required = subprocess.run([NODE, "out/consumer.cjs", served.url, API_KEY], cwd=project,
                              capture_output=True, text=True, timeout=60)
    assert required.returncode == 0, required.stdout + required.stderr
    assert json.loads(required.stdout) == {"status": "ok", "name": "ConcurrencyError", "manager": "function"}
