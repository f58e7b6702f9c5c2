"""The Lambda package, built as `make package` builds it, without the network
(scripts/deploy_stage.py: ``build_offline``, its wheelhouse repacked from
this virtualenv), and what the Lambda runtime provides beside it."""
from __future__ import annotations

import functools
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parents[2]


def load_deploy_stage() -> ModuleType:
    """scripts/deploy_stage.py as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("deploy_stage", PROJECT_DIR / "scripts" / "deploy_stage.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_deploy_stage = load_deploy_stage()


def requirement_pins(path: Path) -> dict[str, Any]:
    return _deploy_stage.requirement_pins(path)


def closure(requirements: list[Any]) -> dict[str, Any]:
    return _deploy_stage.closure(requirements)


def repack(dist: Any, directory: Path) -> Path:
    """An installed distribution back into a wheel (an offline wheelhouse)."""
    return _deploy_stage.repack(dist, directory)


def runtime_provided(directory: Path, runtime: str | None = None) -> Path:
    """boto3 and its dependencies, with ``runtime``'s bytecode (default: the template's)."""
    return _deploy_stage.runtime_provided(directory, runtime)


def default_runtime() -> str:
    """The runtime the package is built for unless a stage chooses another."""
    return _deploy_stage.default_runtime()


def interpreter(runtime: str) -> Any:
    """The runtime's interpreter (executable, version, magic, cache_tag);
    AssertionError naming what to install when this machine has none: the
    zip tier fails, it does not skip."""
    import os
    return _interpreter(runtime, os.environ.get(_deploy_stage.interpreter_variable(runtime)),
                        os.environ.get("PATH"), os.environ.get("PYENV_ROOT"))


@functools.cache
def _interpreter(runtime: str, *where: str | None) -> Any:
    """Probed once per runtime and per environment that finds it (``where``)."""
    try:
        return _deploy_stage.interpreter(runtime)
    except _deploy_stage.StageError as exc:
        raise AssertionError(str(exc)) from None


def chalice_package(out: Path, workdir: Path, chalice_stage: str = "dev", runtime: str | None = None) -> Path:
    """What `make package STAGE=<stage>` builds (``build``: `chalice package`
    with the merge template, then the zip's bytecode) for ``runtime``
    (default: the template's) into ``out``, for a copy of the project
    (app.py, chalicelib, requirements.txt, .chalice/config.json: the
    repository's .chalice/ stays untouched), offline; returns ``out``."""
    project = workdir / "project"
    project.mkdir(parents=True)
    shutil.copy(PROJECT_DIR / "app.py", project)
    shutil.copy(PROJECT_DIR / "requirements.txt", project)
    shutil.copytree(PROJECT_DIR / "chalicelib", project / "chalicelib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".chalice").mkdir()
    shutil.copy(PROJECT_DIR / ".chalice" / "config.json", project / ".chalice")
    try:
        return _deploy_stage.build_offline(project, out, workdir, chalice_stage, runtime=runtime)
    except _deploy_stage.StageError as exc:
        raise AssertionError(str(exc)) from None
