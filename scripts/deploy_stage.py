#!/usr/bin/env python3
"""A stage's deploy: check its parameters, package it, deploy it through a
change set (docs/deploy.md).

    deploy_stage.py check STAGE            the stage file against the template, in well under 5 s
    deploy_stage.py package STAGE          chalice package + the nested templates -> .deploy/STAGE/out
    deploy_stage.py deploy STAGE [--dry-run]   upload, create the change set, show it, execute it

The stage file is infra/stages/STAGE.toml (``--file`` for another): the
Chalice stage, the stack's name, the region, the artifact bucket and the
template's parameters.  ``check`` reads only that file, the merge template
(infra/chalice-merge.json: its Parameters and Rules are the root stack's)
and .chalice/config.json, with the standard library, before anything is
built: a missing or malformed value fails naming it.  ``package`` and
``deploy`` need the project's virtualenv (chalice, boto3).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

PROJECT = Path(__file__).resolve().parents[1]
MERGE_TEMPLATE = PROJECT / "infra" / "chalice-merge.json"
STACKS = PROJECT / "infra" / "stacks"
SCHEMA = PROJECT / "chalicelib" / "adapters" / "postgres" / "schema"
CHALICE_CONFIG = PROJECT / ".chalice" / "config.json"
# What the Lambda runtime provides beside the code (boto3 and its
# dependencies): requirements.txt leaves them out, so the package does not
# ship them; local runs install these versions (requirements-dev.txt).
RUNTIME_PROVIDED = PROJECT / "infra" / "lambda" / "runtime-provided.txt"
# Where Lambda unpacks the package: the path the bytecode names in tracebacks
TASK_ROOT = "/var/task"
# set by this script, never by the stage file
DERIVED = ("ApiStageName", "MigrationsChecksum")
# The runtime the packages are built for when the stage file names none: the
# merge template's LambdaRuntime Default, the one home of that setting.
RUNTIME_PARAMETER = "LambdaRuntime"
STACK_NAME = re.compile(r"^[a-z][a-z0-9-]{0,27}$")  # the nested stacks' NamePrefix
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StageError(Exception):
    """What is wrong with a stage file, naming the key."""


# --- the Lambda runtime ------------------------------------------------------------
#
# One setting: the merge template's LambdaRuntime (its Default; a stage file
# may choose another of its AllowedValues).  The rest follows from it: the
# interpreter that compiles the package's bytecode (and that the zip tier
# and the bench run the package with), the ABI and manylinux platforms of
# its binary wheels, and chalice's own idea of the runtime.

#: The glibc of the Amazon Linux each runtime runs on (python3.11: Amazon
#: Linux 2; python3.12 and later: Amazon Linux 2023): the newest manylinux
#: wheel its functions can load.  Its keys are the template's AllowedValues.
RUNTIME_GLIBC = {"python3.11": (2, 26), "python3.12": (2, 34), "python3.13": (2, 34)}
#: LambdaArchitecture -> the wheels' machine
MACHINES = {"x86_64": "x86_64", "arm64": "aarch64"}
#: Where `make lambda-wheels` keeps each runtime's binary wheels for the
#: offline builds (a directory per runtime and architecture).
LAMBDA_WHEELS = PROJECT / ".lambda-wheels"

# Run by the runtime's interpreter: what this module needs to know of it.
_PROBE = ("import importlib.util, json, sys; print(json.dumps({'executable': sys.executable, "
          "'version': sys.version_info[:2], 'magic': importlib.util.MAGIC_NUMBER.hex(), "
          "'cache_tag': sys.implementation.cache_tag, 'implementation': sys.implementation.name, "
          "'base_prefix': sys.base_prefix}))")


def default_runtime() -> str:
    """The runtime the functions run on unless a stage file chooses another."""
    return str(json.loads(MERGE_TEMPLATE.read_text())["Parameters"][RUNTIME_PARAMETER]["Default"])


def runtime_version(runtime: str) -> tuple[int, int]:
    found = re.fullmatch(r"python(\d+)\.(\d+)", runtime)
    if not found or runtime not in RUNTIME_GLIBC:
        raise StageError(f"{RUNTIME_PARAMETER}: {runtime!r} is not one this package can be built for "
                         f"({', '.join(RUNTIME_GLIBC)})")
    return int(found[1]), int(found[2])


def runtime_abi(runtime: str) -> str:
    """cp313 for python3.13: the ABI of the binary wheels the package needs."""
    major, minor = runtime_version(runtime)
    return f"cp{major}{minor}"


def wheel_platforms(runtime: str, architecture: str = "x86_64") -> list[str]:
    """The manylinux platforms a function of ``runtime`` on ``architecture``
    loads, newest first (pip takes each --platform literally)."""
    runtime_version(runtime)
    major, newest = RUNTIME_GLIBC[runtime]
    machine = MACHINES[architecture]
    return [f"manylinux_{major}_{minor}_{machine}" for minor in range(newest, 16, -1)] + \
        [f"manylinux2014_{machine}"]


class Interpreter(NamedTuple):
    """The CPython a runtime's package is compiled by and run with (a
    NamedTuple: the tests load this file without registering it as a module,
    which a dataclass needs)."""

    runtime: str
    executable: str
    version: tuple[int, int]
    magic: bytes
    cache_tag: str
    base_prefix: str  # its standard library's installation


def interpreter_variable(runtime: str) -> str:
    """The environment variable that names the runtime's interpreter when
    ``python3.X`` on PATH is not it: LAMBDA_PYTHON3_13 for python3.13."""
    return f"LAMBDA_{runtime.upper().replace('.', '_')}"


def _candidates(runtime: str) -> list[str]:
    """Where ``python3.X`` may be: PATH, then pyenv's installations of that
    version, newest first (pyenv's shim on PATH runs only the versions
    pyenv has selected)."""
    found = [p for p in [shutil.which(runtime)] if p]
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    version = ".".join(map(str, runtime_version(runtime)))

    def newest(path: Path) -> list[int]:
        return [int(n) for n in path.parents[1].name.split(".")]
    found += [str(p) for p in sorted((p for p in root.glob(f"versions/{version}.*/bin/{runtime}")
                                      if re.fullmatch(rf"{re.escape(version)}\.\d+", p.parents[1].name)),
                                     key=newest, reverse=True)]
    return found


def _probe(command: str) -> dict[str, Any] | None:
    try:
        probe = subprocess.run([command, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return json.loads(probe.stdout) if probe.returncode == 0 else None


def interpreter(runtime: str) -> Interpreter:
    """The runtime's interpreter: ``$LAMBDA_PYTHON3_13`` (for python3.13)
    if set, else ``python3.13`` on PATH, else pyenv's 3.13.x, resolved to
    the executable itself (a pyenv shim is a shell script that would add its
    own start to every cold start run with it).  Raises StageError naming
    what to install or set when there is none, or when it is another
    version: never a silent fallback to another interpreter."""
    version = runtime_version(runtime)
    variable = interpreter_variable(runtime)
    given = os.environ.get(variable)
    tried = [given] if given else _candidates(runtime)
    facts = next((f for f in map(_probe, tried) if f is not None), None)
    if facts is None:
        where = f"{variable}={given} does not run" if given else (
            f"tried {', '.join(tried)}: none runs" if tried else f"{runtime} is not on PATH")
        raise StageError(f"no interpreter for {RUNTIME_PARAMETER} {runtime} ({where}): install CPython "
                         f"{version[0]}.{version[1]}, or set {variable} to its path (the package's "
                         "bytecode is compiled by it, and the zip tier runs the package with it)")
    command = given or facts["executable"]
    found = tuple(facts["version"])
    if found != version or facts["implementation"] != "cpython":
        raise StageError(f"the interpreter for {runtime} ({command}) is {facts['implementation']} "
                         f"{found[0]}.{found[1]}, not CPython {version[0]}.{version[1]}")
    return Interpreter(runtime, facts["executable"], version, bytes.fromhex(facts["magic"]),
                       facts["cache_tag"], facts["base_prefix"])


# --- check ---------------------------------------------------------------------

def stage_file(stage: str, path: str | None = None) -> Path:
    return Path(path) if path else PROJECT / "infra" / "stages" / f"{stage}.toml"


def load_stage(stage: str, path: str | None = None) -> dict[str, Any]:
    file = stage_file(stage, path)
    if not file.is_file():
        known = sorted(p.stem for p in (PROJECT / "infra" / "stages").glob("*.toml"))
        raise StageError(f"no stage file {file} (stages: {', '.join(known)})")
    try:
        return tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise StageError(f"{file}: {exc}") from exc


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return str(value)


def _check_parameter(name: str, spec: dict[str, Any], value: str) -> list[str]:
    errors = []
    kind = spec["Type"]
    if kind == "Number":
        try:
            number = float(value)
        except ValueError:
            return [f"parameter {name}: {value!r} is not a number"]
        if "MinValue" in spec and number < float(spec["MinValue"]):
            errors.append(f"parameter {name}: {value} is below its minimum {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            errors.append(f"parameter {name}: {value} is above its maximum {spec['MaxValue']}")
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [_text(a) for a in allowed]:
        errors.append(f"parameter {name}: {value!r} is not one of {', '.join(_text(a) for a in allowed)}")
    pattern = spec.get("AllowedPattern")
    values = value.split(",") if kind == "CommaDelimitedList" else [value]
    if pattern and not all(re.fullmatch(pattern, v) for v in values):
        errors.append(f"parameter {name}: {value!r} does not match {pattern}")
    return errors


def _evaluate(expression: Any, values: dict[str, Any]) -> Any:
    """A Rules expression (the functions CloudFormation allows there that
    this template uses), on the parameters' values."""
    if isinstance(expression, dict):
        (function, argument), = expression.items()
        if function == "Ref":
            return values[argument]
        args = [_evaluate(a, values) for a in argument] if isinstance(argument, list) else argument
        if function == "Fn::Equals":
            return args[0] == args[1]
        if function == "Fn::Not":
            return not args[0]
        if function == "Fn::And":
            return all(args)
        if function == "Fn::Or":
            return any(args)
        if function == "Fn::EachMemberEquals":
            return all(member == args[1] for member in args[0])
        if function == "Fn::Contains":
            return args[1] in args[0]
        raise StageError(f"the template's Rules use {function}, which this check cannot evaluate")
    return expression


def check(stage: str, path: str | None = None) -> dict[str, Any]:
    """The stage, checked; returns it with its parameters as strings.
    Raises StageError listing every problem."""
    config = load_stage(stage, path)
    errors: list[str] = []
    stages = json.loads(CHALICE_CONFIG.read_text())["stages"]
    chalice_stage = config.get("chalice_stage")
    if chalice_stage not in stages or chalice_stage == "local":
        errors.append(f"chalice_stage: {chalice_stage!r} is not a deployable stage of .chalice/config.json "
                      f"({', '.join(s for s in stages if s != 'local')})")
    for key, pattern, what in (("stack_name", STACK_NAME, "a stack name of 1-28 lower-case letters, "
                                "digits and dashes"), ("region", REGION, "a region such as eu-west-1"),
                               ("artifact_bucket", BUCKET, "an S3 bucket name")):
        value = os.environ.get(f"DEPLOY_{key.upper()}") or config.get(key)
        if not value:
            errors.append(f"{key}: missing ({what}; set it in {stage_file(stage, path).name})")
        elif not pattern.fullmatch(str(value)):
            errors.append(f"{key}: {value!r} is not {what}")
        else:
            config[key] = str(value)
    template = json.loads(MERGE_TEMPLATE.read_text())
    specs = template["Parameters"]
    given = {k: _text(v) for k, v in (config.get("parameters") or {}).items()}
    for name in sorted(set(given) - set(specs)):
        errors.append(f"parameter {name}: not a parameter of the template")
    for name in sorted(set(given) & set(DERIVED)):
        errors.append(f"parameter {name}: set by the deploy, not by the stage file")
    for name, spec in specs.items():
        if name in DERIVED:
            continue
        if name not in given and "Default" not in spec:
            errors.append(f"parameter {name}: missing ({spec.get('Description', 'required')})")
        elif name in given:
            errors += _check_parameter(name, spec, given[name])
    if not errors:
        values: dict[str, Any] = {n: _text(s.get("Default", "")) for n, s in specs.items()}
        values.update(given)
        for name, spec in specs.items():
            if spec["Type"] == "CommaDelimitedList":
                values[name] = values[name].split(",")
        for rule_name, rule in template.get("Rules", {}).items():
            if "RuleCondition" in rule and not _evaluate(rule["RuleCondition"], values):
                continue
            for assertion in rule["Assertions"]:
                if not _evaluate(assertion["Assert"], values):
                    errors.append(f"rule {rule_name}: {assertion['AssertDescription']}")
        # the package is compiled by the runtime's interpreter: name a missing one now
        try:
            interpreter(given.get(RUNTIME_PARAMETER, default_runtime()))
        except StageError as exc:
            errors.append(f"parameter {RUNTIME_PARAMETER}: {exc}")
        architecture = given.get("LambdaArchitecture", "x86_64")
        chosen = stages.get(chalice_stage, {}).get("lambda_architecture", "x86_64")
        if architecture != chosen:
            errors.append(f"parameter LambdaArchitecture: {architecture} but the stage "
                          f"{chalice_stage}'s lambda_architecture in .chalice/config.json is {chosen} "
                          "(it chooses the wheels)")
    if errors:
        raise StageError("\n".join(errors))
    config["parameters"] = given
    return config


def migrations_checksum() -> str:
    """The release's migrations: the same digest as
    chalicelib.adapters.postgres.migrations.release_checksum (a unit test
    keeps them equal), computed without importing the package."""
    digest = hashlib.sha256()
    for path in sorted(SCHEMA.glob("*.sql")):
        digest.update(f"{path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def stage_runtime(config: dict[str, Any]) -> str:
    """The runtime a checked stage's package is built for."""
    return str(config["parameters"].get(RUNTIME_PARAMETER, default_runtime()))


def parameter_overrides(config: dict[str, Any]) -> dict[str, str]:
    stages = json.loads(CHALICE_CONFIG.read_text())["stages"]
    # the runtime always: the package is built for it, whatever the template's default becomes
    return {**config["parameters"], RUNTIME_PARAMETER: stage_runtime(config),
            "ApiStageName": stages[config["chalice_stage"]]["api_gateway_stage"],
            "MigrationsChecksum": migrations_checksum()}


# --- package ---------------------------------------------------------------------

def out_dir(stage: str) -> Path:
    return PROJECT / ".deploy" / stage / "out"


def package(stage: str, config: dict[str, Any]) -> Path:
    """`chalice package` with the merge template, afresh, into
    .deploy/STAGE/out (sam.json, deployment.zip with its bytecode), the
    nested templates beside it (stacks/) and the parameters the deploy will
    pass (parameters.json)."""
    out = out_dir(stage)
    shutil.rmtree(PROJECT / ".chalice" / "deployments", ignore_errors=True)
    shutil.rmtree(out.parent, ignore_errors=True)
    out.parent.mkdir(parents=True)
    env = {**os.environ, "AWS_DEFAULT_REGION": config["region"]}
    build(PROJECT, out, config["chalice_stage"], env=env, log=out.parent / "package.log",
          runtime=stage_runtime(config))
    shutil.copytree(STACKS, out / "stacks")
    (out / "parameters.json").write_text(json.dumps(parameter_overrides(config), indent=2) + "\n")
    return out


# `chalice package` for a runtime: chalice takes the runtime from the
# interpreter it runs in (its Config.lambda_python_version), and from it the
# ABI and glibc of the wheels it downloads and the functions' Runtime.  It
# runs in this virtualenv, told the stage's runtime instead; and its pip is
# told the runtime's Python version (PIP_PYTHON_VERSION: the dependencies'
# markers are evaluated for it, and its manylinux downloads, which name the
# ABI but not the version, match the runtime's wheels) and to take wheels
# only (PIP_ONLY_BINARY, which pip needs with it: an sdist would be built for
# this interpreter, not the runtime's).
CHALICE_FOR_RUNTIME = """
import sys
from chalice import config
runtime = sys.argv.pop(1)
config.Config.lambda_python_version = property(lambda self: runtime)
from chalice.cli import main
sys.exit(main())
"""


def build(project: Path, out: Path, chalice_stage: str, *, env: dict[str, str] | None = None,
          merge_template: Path | None = MERGE_TEMPLATE, log: Path | None = None,
          runtime: str | None = None) -> Path:
    """The Lambda package of ``project`` (app.py, chalicelib,
    requirements.txt, .chalice/) for ``runtime`` (default: the template's)
    into ``out``: `chalice package --stage CHALICE_STAGE --merge-template
    ...` (sam.json, deployment.zip), the template's runtime pinned to the
    one built for (``pin_runtime``), then the zip's bytecode, compiled by
    that runtime's interpreter (``compile_package``).  `make package` and
    the tests (offline, from a wheelhouse: ``env``) both build with this.
    Raises StageError when the runtime has no interpreter here, or with
    chalice's output when it fails or cannot install a dependency for
    Lambda's platform; ``log`` keeps chalice's output."""
    runtime = runtime or default_runtime()
    python = interpreter(runtime)  # before chalice's minute: a missing one fails now
    merge = ["--merge-template", str(merge_template)] if merge_template else []
    major, minor = python.version
    env = {**(os.environ if env is None else env), "PIP_PYTHON_VERSION": f"{major}.{minor}",
           "PIP_ONLY_BINARY": ":all:"}
    result = subprocess.run([sys.executable, "-c", CHALICE_FOR_RUNTIME, runtime,
                             "--project-dir", str(project), "package", "--stage", chalice_stage,
                             *merge, str(out)],
                            capture_output=True, text=True, env=env, timeout=900)
    output = result.stdout + result.stderr
    if log is not None:
        log.write_text(output)
    if result.returncode != 0:
        raise StageError(f"chalice package failed:\n{output}")
    # chalice only warns when it finds no wheel for Lambda's platform; the
    # function would then fail when it imports the module
    if "Could not install dependencies" in output:
        raise StageError(f"chalice package could not install a dependency for Lambda:\n{output}")
    if merge_template:
        pin_runtime(out / "sam.json", runtime)
    compile_package(out / "deployment.zip", python)
    return out


def pin_runtime(template_path: Path, runtime: str) -> None:
    """The packaged template's LambdaRuntime: this package's runtime, the
    only one it allows (its wheels and bytecode are that interpreter's)."""
    template = json.loads(template_path.read_text())
    parameter = template["Parameters"][RUNTIME_PARAMETER]
    parameter["Default"], parameter["AllowedValues"] = runtime, [runtime]
    template_path.write_text(json.dumps(template, indent=2) + "\n")


# Run by the runtime's interpreter on the unpacked package (argv: the
# directory, the path it is unpacked at on Lambda).
COMPILE = """
import compileall, py_compile, sys
root, task_root = sys.argv[1], sys.argv[2]
ok = compileall.compile_dir(root, quiet=1, workers=0, stripdir=root, prependdir=task_root,
                            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
sys.exit(0 if ok else 1)
"""


def compile_package(path: Path, python: Interpreter) -> int:
    """Add the bytecode of every module to the zip at ``path``; returns how
    many .pyc files it holds.

    Lambda's /var/task is read-only: a module without its .pyc is compiled
    again on every cold start (most of an import's time: docs/performance.md,
    "Cold start").  The .pyc files are ``unchecked-hash`` ones: the
    interpreter uses them without comparing them with the source's mtime,
    which unzipping does not keep to the second.  They are compiled by
    ``python``, the runtime's interpreter (another version's would be
    ignored and every module compiled again), and name /var/task/... in
    tracebacks.
    """
    with tempfile.TemporaryDirectory(prefix="sessionsync-package-") as tmp:
        root = Path(tmp)
        with zipfile.ZipFile(path) as package:
            # bytecode already there would be another interpreter's or checked
            entries = [(info, package.read(info)) for info in package.infolist()
                       if not info.filename.endswith(".pyc")]
        for info, data in entries:
            if not info.is_dir():
                target = root / info.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        result = subprocess.run([python.executable, "-I", "-c", COMPILE, str(root), TASK_ROOT],
                                capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise StageError(f"{python.runtime}'s compileall failed on a module of {path.name}:\n"
                             f"{(result.stdout + result.stderr)[-4000:]}")
        compiled = sorted(p for p in root.rglob("*.pyc"))
        replacement = path.with_suffix(".tmp")
        with zipfile.ZipFile(replacement, "w", zipfile.ZIP_DEFLATED) as package:
            for info, data in entries:
                package.writestr(info, data)
            for pyc in compiled:
                info = zipfile.ZipInfo(pyc.relative_to(root).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                package.writestr(info, pyc.read_bytes())
        replacement.replace(path)
    return len(compiled)


# --- offline builds: the tests' and the bench's packages ----------------------------
#
# Chalice pip-downloads requirements.txt to build the package.  The tests and
# the bench point its pip at a wheelhouse instead (PIP_NO_INDEX,
# PIP_FIND_LINKS: chalice runs pip in a subprocess with the environment
# given): the distributions requirements.txt needs, repacked from this
# virtualenv with the tags they were installed with (manylinux for hiredis
# and psycopg-binary, as on Lambda x86_64).  So they package exactly the
# pinned versions, without the network.  (They need the ``packaging`` library:
# the dev extra.)

def requirement_pins(path: Path) -> dict[str, Any]:
    """name -> Requirement of a requirements file's pins (``-r`` and ``-c``
    lines followed: a constraints file pins what it names)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith(("-r ", "-c ")):
            pins.update(requirement_pins(path.parent / line[3:].strip()))
        elif line:
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = requirement
    return pins


def closure(requirements: list[Any]) -> dict[str, Any]:
    """The installed distributions (importlib.metadata) these requirements
    need, dependencies included."""
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, Any] = {}
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


def repack(dist: Any, directory: Path) -> Path:
    """An installed distribution back into a wheel (files from its RECORD)."""
    from packaging.tags import sys_tags
    from packaging.utils import canonicalize_name

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


def binary_distributions(requirements_file: Path) -> dict[str, Any]:
    """name -> the installed distribution, of those in the requirements'
    closure that are not pure Python (hiredis, psycopg-binary): a runtime
    needs its own build of each."""
    return {name: dist for name, dist in closure(list(requirement_pins(requirements_file).values())).items()
            if "Root-Is-Purelib: false" in (dist.read_text("WHEEL") or "")}


def lambda_wheels_dir(runtime: str, architecture: str = "x86_64") -> Path:
    return LAMBDA_WHEELS / f"{runtime}-{architecture}"


def fetch_lambda_wheels(runtime: str, architecture: str = "x86_64",
                        requirements_file: Path = PROJECT / "requirements.txt") -> Path:
    """Download (PyPI, once) the runtime's build of each binary distribution
    the package needs, at this virtualenv's versions, for the platforms that
    runtime loads (``wheel_platforms``), into ``lambda_wheels_dir``: what
    the offline builds give chalice for that runtime (`make lambda-wheels`)."""
    directory = lambda_wheels_dir(runtime, architecture)
    directory.mkdir(parents=True, exist_ok=True)
    major, minor = runtime_version(runtime)
    for dist in binary_distributions(requirements_file).values():
        pin = f"{dist.metadata['Name']}=={dist.version}"
        if _runtime_wheel(directory, dist) is not None:
            continue
        platforms = [arg for platform in wheel_platforms(runtime, architecture)
                     for arg in ("--platform", platform)]
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "--implementation", "cp", "--python-version", f"{major}.{minor}",
             "--abi", runtime_abi(runtime), *platforms, "--dest", str(directory), pin],
            capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise StageError(f"no {runtime} wheel of {pin} for {architecture}:\n{result.stderr[-2000:]}")
    return directory


def _runtime_wheel(directory: Path, dist: Any) -> Path | None:
    from packaging.utils import canonicalize_name
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    return next(iter(sorted(directory.glob(f"{name}-{dist.version}-*.whl"))), None)


def wheelhouse(requirements_file: Path, directory: Path, runtime: str | None = None,
               architecture: str = "x86_64") -> Path:
    """The distributions the requirements need: the pure-Python ones
    repacked from this virtualenv, and the runtime's build of each binary
    one, from ``lambda_wheels_dir``."""
    runtime = runtime or default_runtime()
    directory.mkdir(parents=True, exist_ok=True)
    binary = binary_distributions(requirements_file)
    for name, dist in closure(list(requirement_pins(requirements_file).values())).items():
        if name not in binary:
            repack(dist, directory)
    for dist in binary.values():
        wheel = _runtime_wheel(lambda_wheels_dir(runtime, architecture), dist)
        if wheel is None:
            raise StageError(f"no {runtime} wheel of {dist.metadata['Name']} {dist.version} in "
                             f"{lambda_wheels_dir(runtime, architecture)}: run `make lambda-wheels` "
                             "(it downloads each runtime's, once)")
        shutil.copy(wheel, directory)
    return directory


def build_offline(project: Path, out: Path, workdir: Path, chalice_stage: str = "dev", *,
                  merge_template: Path | None = MERGE_TEMPLATE, runtime: str | None = None) -> Path:
    """``build`` of ``project`` for ``runtime`` (default: the template's)
    with pip pointed at a wheelhouse (in ``workdir``: ``wheelhouse``), fake
    credentials and no AWS_*, SESSION_*, REDIS_*, DATABASE_*, DB_* or PIP_*
    variables of ours."""
    runtime = runtime or default_runtime()
    wheels = wheelhouse(project / "requirements.txt", workdir / "wheels", runtime)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "SESSION_", "REDIS_", "DATABASE_", "DB_", "PIP_"))}
    # chalice needs a region even to write a template (infra/README.md)
    env.update(AWS_ACCESS_KEY_ID="fake", AWS_SECRET_ACCESS_KEY="fake", AWS_DEFAULT_REGION="us-east-1",
               PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_DISABLE_PIP_VERSION_CHECK="1")
    return build(project, out, chalice_stage, env=env, merge_template=merge_template, runtime=runtime)


def runtime_provided(directory: Path, runtime: str | None = None) -> Path:
    """What the Lambda runtime provides beside the code (/var/runtime:
    boto3 and its dependencies, RUNTIME_PROVIDED, pure Python), copied from
    this virtualenv's installed distributions into ``directory``, with their
    bytecode (as the runtime ships it) compiled by ``runtime``'s interpreter
    (default: the template's)."""
    from packaging.requirements import Requirement

    python = interpreter(runtime or default_runtime())
    for dist in closure([Requirement("boto3")]).values():
        for file in dist.files or []:
            # scripts, outside site-packages; bytecode: this interpreter's
            if file.parts[0] == ".." or file.suffix == ".pyc":
                continue
            target = directory / file.as_posix()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file.locate(), target)
    result = subprocess.run([python.executable, "-I", "-m", "compileall", "-q", "-j", "0", str(directory)],
                            capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise StageError(f"{python.runtime}'s compileall failed on the runtime's boto3:\n"
                         f"{(result.stdout + result.stderr)[-4000:]}")
    return directory


# --- deploy ----------------------------------------------------------------------

def _upload(s3: Any, bucket: str, path: Path, prefix: str) -> str:
    """Upload ``path`` under a content-addressed key; returns the key."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    key = f"{prefix}/{digest}/{path.name}"
    s3.upload_file(str(path), bucket, key)
    return key


def _url(s3: Any, bucket: str, key: str) -> str:
    return f"{s3.meta.endpoint_url}/{bucket}/{key}"


def upload(s3: Any, config: dict[str, Any], out: Path) -> str:
    """What `aws cloudformation package` does, for this template: the code
    and the nested templates to the artifact bucket, the root template
    rewritten to point at them; returns the root template's URL."""
    bucket, prefix = config["artifact_bucket"], config["stack_name"]
    template = json.loads((out / "sam.json").read_text())
    code_key = _upload(s3, bucket, out / "deployment.zip", prefix)
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function" and props.get("CodeUri") == "./deployment.zip":
            props["CodeUri"] = f"s3://{bucket}/{code_key}"
        elif resource["Type"] == "AWS::CloudFormation::Stack":
            props["TemplateURL"] = _url(s3, bucket, _upload(s3, bucket, out / props["TemplateURL"], prefix))
    packaged = out.parent / "packaged.json"
    packaged.write_text(json.dumps(template, indent=1))
    return _url(s3, bucket, _upload(s3, bucket, packaged, prefix))


def _wait(describe: Any, done: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        state = describe()
        if done(state):
            return state
        if time.monotonic() > deadline:
            raise StageError(f"{what}: still not done after {timeout:.0f} s")
        time.sleep(2)


def deploy(stage: str, config: dict[str, Any], *, dry_run: bool, timeout: float = 3600,
           out: Path | None = None) -> dict[str, Any]:
    """Upload the package in ``out`` (.deploy/STAGE/out), create a change
    set, print it, and unless ``dry_run`` execute it and wait."""
    import boto3
    from botocore.exceptions import ClientError

    out = out or out_dir(stage)
    if not (out / "sam.json").is_file():
        raise StageError(f"{out} has no package: run `make package STAGE={stage}` first")
    session = boto3.session.Session(region_name=config["region"])
    s3, cfn = session.client("s3"), session.client("cloudformation")
    template_url = upload(s3, config, out)
    name = config["stack_name"]
    try:
        status = cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]
        kind = "CREATE" if status == "REVIEW_IN_PROGRESS" else "UPDATE"
    except ClientError:
        kind = "CREATE"
    overrides = json.loads((out / "parameters.json").read_text())
    change_set = f"{name}-{time.strftime('%Y%m%d%H%M%S')}"
    cfn.create_change_set(
        StackName=name, ChangeSetName=change_set, ChangeSetType=kind, TemplateURL=template_url,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in overrides.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"], IncludeNestedStacks=True)
    described = _wait(lambda: cfn.describe_change_set(StackName=name, ChangeSetName=change_set),
                      lambda d: d["Status"] in ("CREATE_COMPLETE", "FAILED"), 600, "the change set")
    changes = [c["ResourceChange"] for c in described.get("Changes", [])]
    print(f"change set {change_set} ({kind}) of stack {name}: {len(changes)} change(s)")
    for change in changes:
        print(f"  {change.get('Action', '?'):8} {change['LogicalResourceId']:32} {change['ResourceType']}"
              f"{'  (replacement)' if change.get('Replacement') == 'True' else ''}")
    if described["Status"] == "FAILED":
        reason = described.get("StatusReason", "")
        if "didn't contain changes" in reason or "No updates" in reason:
            print("nothing to deploy")
            cfn.delete_change_set(StackName=name, ChangeSetName=change_set)
            return {"change_set": change_set, "changes": [], "executed": False}
        raise StageError(f"the change set failed: {reason}")
    if dry_run:
        print(f"dry run: not executed. Execute it with\n  aws cloudformation execute-change-set "
              f"--region {config['region']} --stack-name {name} --change-set-name {change_set}")
        return {"change_set": change_set, "changes": changes, "executed": False}
    cfn.execute_change_set(StackName=name, ChangeSetName=change_set)
    stack = _wait(lambda: cfn.describe_stacks(StackName=name)["Stacks"][0],
                  lambda s: not s["StackStatus"].endswith("_IN_PROGRESS"), timeout, f"stack {name}")
    print(f"stack {name}: {stack['StackStatus']}")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    for key, value in sorted(outputs.items()):
        print(f"  {key:20} {value}")
    if stack["StackStatus"] not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        failed = [f"  {e['LogicalResourceId']}: {e.get('ResourceStatusReason', '')}"
                  for e in cfn.describe_stack_events(StackName=stack["StackId"])["StackEvents"]
                  if e["ResourceStatus"].endswith("_FAILED")][:10]
        raise StageError(f"stack {name} ended {stack['StackStatus']}:\n" + "\n".join(failed))
    return {"change_set": change_set, "changes": changes, "executed": True, "outputs": outputs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check", "package", "deploy", "parameters", "wheels"])
    parser.add_argument("stage", nargs="?", help="the stage (wheels: none)")
    parser.add_argument("--file", help="the stage file (default infra/stages/STAGE.toml)")
    parser.add_argument("--dry-run", action="store_true", help="deploy: stop once the change set is shown")
    parser.add_argument("--runtime", action="append", choices=list(RUNTIME_GLIBC),
                        help="wheels: a runtime to fetch the binary wheels of (default: every one)")
    args = parser.parse_args(argv)
    if args.command == "wheels":
        try:
            for runtime in args.runtime or RUNTIME_GLIBC:
                print(f"{runtime}: {fetch_lambda_wheels(runtime).relative_to(PROJECT)}")
        except StageError as exc:
            print(f"wheels: {exc}", file=sys.stderr)
            return 2
        return 0
    if not args.stage:
        parser.error(f"{args.command} needs a stage")
    try:
        config = check(args.stage, args.file)
        if args.command == "check":
            print(f"stage {args.stage}: {stage_file(args.stage, args.file).name} is complete "
                  f"(stack {config['stack_name']} in {config['region']})")
        elif args.command == "parameters":
            print(json.dumps(parameter_overrides(config), indent=2))
        elif args.command == "package":
            out = package(args.stage, config)
            print(f"packaged into {out.relative_to(PROJECT)}: sam.json, deployment.zip, stacks/, "
                  "parameters.json")
        else:
            deploy(args.stage, config, dry_run=args.dry_run)
    except StageError as exc:
        print(f"deploy of stage {args.stage} refused:\n{exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
