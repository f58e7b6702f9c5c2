"""clients/python as a user gets it: a wheel built from the sources, installed
with its declared dependencies (and nothing else: no chalice, redis or
psycopg) into a fresh virtualenv, away from the checkout, talking to the
live server; with the ``async`` extra, the asyncio client too.

Offline: the wheel is built with this virtualenv's setuptools (no build
isolation), and pip resolves the dependencies from a wheelhouse of this
virtualenv's own distributions, repacked (tests/packaging_support.py), so
the install proves that what pyproject.toml declares is enough.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.clients.utils import PYTHON_CLIENT, Served
from tests.support.constants import API_KEY
from tests.support.packaging import closure, repack

pytestmark = pytest.mark.slow

PYPROJECT = tomllib.loads((PYTHON_CLIENT / "pyproject.toml").read_text())["project"]


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("client-wheel")
    source = work / "source"
    shutil.copytree(PYTHON_CLIENT, source, ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "build", "dist"))
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                "--wheel-dir", work / "dist", source, cwd=work)
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = (work / "dist").glob("sessionsync_client-*.whl")
    return found


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """Every distribution the package and its ``async`` extra need, repacked."""
    directory = tmp_path_factory.mktemp("client-wheelhouse")
    needed = [Requirement(r) for r in PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["async"]]
    for dist in closure(needed).values():
        repack(dist, directory)
    return directory


def fresh_venv(where: Path) -> Path:
    created = run(sys.executable, "-m", "venv", "--without-pip", where, cwd=where.parent)
    assert created.returncode == 0, created.stderr
    return where / "bin" / "python"


def install(python: Path, wheel: Path, wheelhouse: Path, extra: str = "") -> None:
    done = run(sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--find-links",
               wheelhouse, f"{wheel}{extra}", cwd=wheel.parent)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def elsewhere(tmp_path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


SYNC_SCRIPT = """
import importlib.util, sys, uuid
import sessionsync_client as ss
assert ss.__version__ == sys.argv[3], ss.__version__
for server_side in ("chalice", "redis", "psycopg", "boto3", "chalicelib", "sessionsync", "httpx"):
    assert importlib.util.find_spec(server_side) is None, server_side
with ss.Client(sys.argv[1], sys.argv[2]) as client:
    sid = "wheel-" + uuid.uuid4().hex[:8]
    client.create({"n": 0}, session_id=sid)
    print(client.update(sid, lambda s: {"n": s["n"] + 1}).version)
print(ss.__file__)
"""

ASYNC_SCRIPT = """
import asyncio, sys, uuid
import sessionsync_client as ss
async def main():
    async with ss.AsyncClient(sys.argv[1], sys.argv[2]) as client:
        sid = "wheel-async-" + uuid.uuid4().hex[:8]
        await client.create({"n": 0}, session_id=sid)
        print((await client.update(sid, lambda s: {"n": s["n"] + 1})).version)
asyncio.run(main())
"""


def test_the_wheel_installs_with_urllib3_alone_and_calls_the_api(wheel, wheelhouse, served: Served,
                                                                tmp_path, elsewhere):
    python = fresh_venv(tmp_path / "venv")
    install(python, wheel, wheelhouse)
    installed = run(sys.executable, "-m", "pip", "--python", python, "list", "--format=freeze",
                    cwd=tmp_path, env=elsewhere)
    assert installed.returncode == 0, installed.stderr
    names = sorted(line.split("==")[0].lower() for line in installed.stdout.split())
    assert names == ["sessionsync-client", "urllib3"], names  # urllib3 alone, as declared
    version = re.search(r'__version__ = "([^"]+)"',
                        (PYTHON_CLIENT / "src" / "sessionsync_client" / "_version.py").read_text())[1]
    result = run(python, "-c", SYNC_SCRIPT, served.url, API_KEY, version, cwd=tmp_path, env=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    printed_version, module_file = result.stdout.split()
    assert printed_version == "2" and module_file.startswith(str(tmp_path / "venv"))
    # the async client needs its extra: a clear ImportError naming httpx without it
    missing = run(python, "-c", "from sessionsync_client import AsyncClient", cwd=tmp_path, env=elsewhere)
    assert missing.returncode != 0 and "httpx" in missing.stderr


def test_the_wheel_with_its_async_extra_runs_the_async_client(wheel, wheelhouse, served: Served,
                                                              tmp_path, elsewhere):
    python = fresh_venv(tmp_path / "venv")
    install(python, wheel, wheelhouse, "[async]")
    result = run(python, "-c", ASYNC_SCRIPT, served.url, API_KEY, cwd=tmp_path, env=elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["2"]
