"""`chalice package` without the network.

Chalice pip-downloads requirements.txt to build the deployment package.  The
tests point its pip at a wheelhouse of their own instead (PIP_NO_INDEX,
PIP_FIND_LINKS: chalice runs pip in a subprocess with our environment): the
distributions requirements.txt needs, repacked from this virtualenv, with the
tags they were installed with (manylinux for hiredis and psycopg-binary, as
on Lambda).  So the test packages exactly the pinned versions, offline.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from types import ModuleType

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name

PROJECT_DIR = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def requirement_pins(path: Path) -> dict[str, Requirement]:
    """name -> Requirement of a requirements file's pins (``-r`` and ``-c``
    lines followed: a constraints file pins what it names)."""
    pins: dict[str, Requirement] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith(("-r ", "-c ")):
            pins.update(requirement_pins(path.parent / line[3:].strip()))
        elif line:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = requirement
    return pins


def closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """The installed distributions these requirements need, dependencies included."""
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, str]] = set()
    pending = list(requirements)
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        dist = found.setdefault(name, metadata.distribution(name))
        # its own dependencies ("" : no extra), then those of each extra asked for
        for extra in ("", *requirement.extras):
            if (name, extra) not in seen:
                seen.add((name, extra))
                environment = {**default_environment(), "extra": extra}
                pending += [child for child in map(Requirement, dist.requires or [])
                            if child.marker is None or child.marker.evaluate(environment)]
    return found


def _repack(dist: metadata.Distribution, directory: Path) -> Path:
    """An installed distribution back into a wheel (files from its RECORD)."""
    wheel_info = dist.read_text("WHEEL") or ""
    installed_tags = re.findall(r"^Tag: (\S+)$", wheel_info, re.M)
    ours = {str(t) for t in sys_tags()}
    tag = next((t for t in installed_tags if t in ours), installed_tags[0])
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    path = directory / f"{name}-{dist.version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as wheel:
        for file in dist.files or []:
            # scripts live outside site-packages; bytecode is rebuilt where installed
            if file.parts[0] == ".." or file.suffix == ".pyc":
                continue
            wheel.write(file.locate(), file.as_posix())
    return path


def wheelhouse(requirements_file: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for dist in closure(list(requirement_pins(requirements_file).values())).values():
        _repack(dist, directory)
    return directory


def load_deploy_stage() -> ModuleType:
    """scripts/deploy_stage.py as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("deploy_stage", PROJECT_DIR / "scripts" / "deploy_stage.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chalice_package(out: Path, workdir: Path, chalice_stage: str = "dev") -> Path:
    """What `make package STAGE=<stage>` builds (scripts/deploy_stage.py's
    ``build``: `chalice package` with the merge template, then the zip's
    bytecode) into ``out``, for a copy of the project (app.py, chalicelib,
    requirements.txt, .chalice/config.json: the repository's .chalice/ stays
    untouched), with fake credentials and no network; returns ``out``."""
    project = workdir / "project"
    project.mkdir(parents=True)
    shutil.copy(PROJECT_DIR / "app.py", project)
    shutil.copy(PROJECT_DIR / "requirements.txt", project)
    shutil.copytree(PROJECT_DIR / "chalicelib", project / "chalicelib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".chalice").mkdir()
    shutil.copy(PROJECT_DIR / ".chalice" / "config.json", project / ".chalice")
    wheels = wheelhouse(project / "requirements.txt", workdir / "wheels")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "SESSION_", "REDIS_", "DATABASE_", "DB_", "PIP_"))}
    # chalice needs a region even to write a template (infra/README.md)
    env.update(AWS_ACCESS_KEY_ID="fake", AWS_SECRET_ACCESS_KEY="fake", AWS_DEFAULT_REGION="us-east-1",
               PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_DISABLE_PIP_VERSION_CHECK="1")
    deploy_stage = load_deploy_stage()
    try:
        return deploy_stage.build(project, out, chalice_stage, env=env)
    except deploy_stage.StageError as exc:
        raise AssertionError(str(exc)) from None


def runtime_provided(directory: Path) -> Path:
    """What the Lambda runtime provides beside the code (/var/runtime:
    boto3 and its dependencies, infra/lambda/python3.11-runtime.txt), copied
    from this virtualenv's installed distributions into ``directory``, with
    their bytecode (as the runtime ships it)."""
    for dist in closure([Requirement("boto3")]).values():
        for file in dist.files or []:
            if file.parts[0] == "..":  # scripts, outside site-packages
                continue
            target = directory / file.as_posix()
            target.parent.mkdir(parents=True, exist_ok=True)
            # copy2 keeps the mtime the .pyc files were checked against
            shutil.copy2(file.locate(), target)
    return directory
