"""Installed from a wheel (not editable), away from the checkout, the
``sessionsync`` command works: version, help, and ``migrate`` reads its SQL
from the installed package; there is no top-level ``app`` module."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.support.packaging import PROJECT_DIR

pytestmark = pytest.mark.slow  # builds a wheel and a virtualenv


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with the project's wheel installed; returns its bin/.

    Offline: the wheel is built with this virtualenv's setuptools and wheel
    (chalice depends on both; no build isolation) from a copy of the sources, and the dependencies are this
    virtualenv's site-packages, put on the new one's path by a .pth line (a
    directory listed there is not scanned for .pth files, so the editable
    install of the checkout stays out)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    ignore = shutil.ignore_patterns("__pycache__")
    for package in ("chalicelib", "sessionsync"):
        shutil.copytree(PROJECT_DIR / package, source / package, ignore=ignore)
    shutil.copy(PROJECT_DIR / "pyproject.toml", source)
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                "--wheel-dir", work / "dist", source, cwd=work)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("sessionsync-*.whl")

    venv = work / "venv"
    created = run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    done = run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel,
               cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    site_packages = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=work)
    Path(site_packages.stdout.strip(), "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


@pytest.fixture
def elsewhere(tmp_path) -> dict[str, str]:
    """The environment of a shell outside the checkout: no PYTHONPATH, no
    project directory, no stage defaults."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "SESSIONSYNC_PROJECT_DIR", "SESSIONSYNC_STAGE")}


def test_the_installed_command_reports_the_version_of_pyproject(installed, tmp_path, elsewhere):
    version = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]["version"]
    result = run(installed / "sessionsync", "--version", cwd=tmp_path, env=elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sessionsync, version {version}"
    help_text = run(installed / "sessionsync", "--help", cwd=tmp_path, env=elsewhere)
    assert help_text.returncode == 0, help_text.stderr
    assert "migrate" in help_text.stdout and "--project-dir" in help_text.stdout


def test_the_installed_package_comes_from_the_venv_and_has_no_app_module(installed, tmp_path, elsewhere):
    probe = ("import importlib.util, sessionsync, chalicelib; "
             "print(sessionsync.__file__); print(chalicelib.__file__); "
             "print(importlib.util.find_spec('app'))")
    result = run(installed / "python", "-c", probe, cwd=tmp_path, env=elsewhere)
    assert result.returncode == 0, result.stderr
    sessionsync_file, chalicelib_file, app_spec = result.stdout.split()
    venv = str(installed.parent)
    assert sessionsync_file.startswith(venv) and chalicelib_file.startswith(venv)
    assert app_spec == "None"


def test_the_installed_package_ships_the_lua_scripts_as_package_data(installed, tmp_path, elsewhere):
    shipped = sorted(p.name for p in (PROJECT_DIR / "chalicelib/adapters/redis/scripts").glob("*.lua"))
    probe = ("from importlib.resources import files; "
             "print(' '.join(sorted(p.name for p in files('chalicelib.adapters.redis.scripts').iterdir() "
             "if p.name.endswith('.lua')))); "
             "from chalicelib.adapters.redis import scripts; print(len(scripts.UPDATE_SCRIPT))")
    result = run(installed / "python", "-c", probe, cwd=tmp_path, env=elsewhere)
    assert result.returncode == 0, result.stderr
    names, length = result.stdout.split("\n")[:2]
    assert names.split() == shipped and len(shipped) >= 10
    assert int(length) > 0


def test_the_installed_command_applies_the_migrations_it_ships(installed, tmp_path, elsewhere, empty_dsn):
    shipped = sorted(p.name for p in (PROJECT_DIR / "sessionsync" / "sql").glob("*.sql"))
    result = run(installed / "sessionsync", "migrate", cwd=tmp_path,
                 env={**elsewhere, "DATABASE_URL": empty_dsn})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"applied: {', '.join(shipped)}"
