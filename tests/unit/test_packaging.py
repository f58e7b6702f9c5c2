"""What is declared and what ships: pyproject.toml's dependencies and extras
against the pinned requirements files and against what the code imports, and
the Lambda deployment package `chalice package` builds (the Lambda code and
its runtime dependencies, none of the tools)."""
from __future__ import annotations

import ast
import sys
import tomllib
import zipfile
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sessionsync import cli, project
from tests.support.packaging import PROJECT_DIR, closure, load_deploy_stage, requirement_pins

PYPROJECT = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in PYPROJECT["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs] for name, reqs in PYPROJECT["optional-dependencies"].items()}
LAMBDA_PINS = requirement_pins(PROJECT_DIR / "requirements.txt")
DEV_PINS = requirement_pins(PROJECT_DIR / "requirements-dev.txt")
# `chalice package` puts its own runtime (chalice/app.py) into the deployment
# package: chalice is pinned with the tools, in requirements-dev.txt.
SHIPPED_BY_CHALICE = {"chalice"}
# The Lambda runtime provides boto3 and its dependencies: requirements.txt
# leaves them out of the package, and local runs pin them from this file.
RUNTIME_CONSTRAINTS = PROJECT_DIR / "infra" / "lambda" / "runtime-provided.txt"
PROVIDED_BY_RUNTIME = requirement_pins(RUNTIME_CONSTRAINTS)
# scripts/ import each other as top-level modules (their directory is on sys.path)
FIRST_PARTY = {"app", "chalicelib", "sessionsync", "tests", "sessionsync_client"} | {
    script.stem for script in (PROJECT_DIR / "scripts").glob("*.py")}
# clients/python: a package of its own, with its own pyproject.toml
CLIENT = tomllib.loads((PROJECT_DIR / "clients" / "python" / "pyproject.toml").read_text())["project"]
CLIENT_RUNTIME = [Requirement(r) for r in CLIENT["dependencies"]]
CLIENT_EXTRAS = {name: [Requirement(r) for r in reqs]
                 for name, reqs in CLIENT["optional-dependencies"].items()}


def names(requirements: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements}


def assert_pinned_within_range(requirement: Requirement, pins: dict[str, Requirement]) -> None:
    pin = pins.get(canonicalize_name(requirement.name))
    assert pin is not None, f"{requirement.name} is not pinned"
    (version,) = [s.version for s in pin.specifier if s.operator == "=="]
    assert requirement.specifier.contains(version), f"{pin} is outside pyproject's {requirement}"
    assert pin.extras == requirement.extras, f"{pin} and pyproject's {requirement} ask for other extras"


def test_requirements_txt_pins_exactly_pyproject_s_runtime_dependencies_within_their_ranges():
    for requirement in RUNTIME:
        name = canonicalize_name(requirement.name)
        assert_pinned_within_range(requirement, DEV_PINS if name in SHIPPED_BY_CHALICE
                                   else PROVIDED_BY_RUNTIME if name in PROVIDED_BY_RUNTIME
                                   else LAMBDA_PINS)
    assert set(LAMBDA_PINS) == names(RUNTIME) - SHIPPED_BY_CHALICE - set(PROVIDED_BY_RUNTIME)


def test_the_runtime_constraints_pin_boto3_s_whole_closure_as_installed_and_nothing_the_package_needs():
    # what the zip tier puts on the runtime's path is what this virtualenv has
    provided = closure([Requirement("boto3")])
    assert set(PROVIDED_BY_RUNTIME) == set(provided)
    for name, dist in provided.items():
        assert PROVIDED_BY_RUNTIME[name].specifier.contains(dist.version), (name, dist.version)
    # a package of requirements.txt depending on one of them would put it back into the zip
    assert not set(closure(list(LAMBDA_PINS.values()))) & set(PROVIDED_BY_RUNTIME)
    # local runs follow them
    assert f"-c {RUNTIME_CONSTRAINTS.relative_to(PROJECT_DIR)}" in \
        (PROJECT_DIR / "requirements-dev.txt").read_text().splitlines()


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_requirements_dev_txt_pins_every_extra_within_its_range(extra):
    for requirement in EXTRAS[extra]:
        assert_pinned_within_range(requirement, DEV_PINS)


def imported_distributions(*roots: str) -> dict[str, set[str]]:
    """distribution -> the files that import it, for every third-party import
    (at any depth: lazy imports inside functions count) under ``roots``."""
    modules = metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for root in roots:
        path = PROJECT_DIR / root
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            where = str(file.relative_to(PROJECT_DIR))
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    tops = [alias.name.split(".")[0] for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    tops = [node.module.split(".")[0]]
                else:
                    continue
                for top in tops:
                    if top in FIRST_PARTY or top in sys.stdlib_module_names:
                        continue
                    for dist in modules.get(top, [top]):
                        found.setdefault(canonicalize_name(dist), set()).add(where)
    return found


@pytest.mark.parametrize("roots, declared_in", [
    (("app.py", "chalicelib"), ()),
    (("sessionsync",), ("cli", "bench")),
    (("tests", "scripts"), ("cli", "bench", "dev")),
], ids=["lambda-code-runtime-only", "tools-cli-and-bench", "tests-every-extra"])
def test_every_third_party_package_the_code_imports_is_declared(roots, declared_in):
    declared = names(RUNTIME).union(*(names(EXTRAS[extra]) for extra in declared_in))
    undeclared = {dist: files for dist, files in imported_distributions(*roots).items()
                  if dist not in declared}
    assert not undeclared, f"imported but not in pyproject.toml ({declared_in or 'runtime'}): {undeclared}"


@pytest.mark.slow
def test_the_lambda_package_holds_app_chalicelib_and_the_pinned_dependencies_and_no_tool(chalice_packaged):
    with zipfile.ZipFile(chalice_packaged / "deployment.zip") as deployment:
        shipped = set(deployment.namelist())

    assert "app.py" in shipped
    assert "chalice/app.py" in shipped  # the runtime `chalice package` adds
    # the Lua scripts too: chalicelib reads them as package data
    sources = {p.relative_to(PROJECT_DIR).as_posix() for p in (PROJECT_DIR / "chalicelib").rglob("*")
               if p.suffix in (".py", ".lua")}
    assert any(s.endswith(".lua") for s in sources)
    assert sources <= shipped, sorted(sources - shipped)
    for name, dist in closure(list(LAMBDA_PINS.values())).items():
        dist_info = f"{name.replace('-', '_')}-{dist.version}.dist-info/METADATA"
        assert dist_info in shipped, f"{name} {dist.version} is not in the deployment package"
    tops = {name.split("/")[0] for name in shipped}
    assert {"redis", "hiredis", "psycopg", "psycopg_binary"} <= tops
    # the runtime's own copy serves: infra/lambda/runtime-provided.txt
    assert not tops & {"boto3", "botocore", "s3transfer", "urllib3", "dateutil", "jmespath"}
    # the bytecode of every module, for the runtime's interpreter (not this
    # one: the tests may run on another Python), checked by nothing
    runtime = _packaged_runtime(chalice_packaged)
    assert runtime == load_deploy_stage().default_runtime()
    python = load_deploy_stage().interpreter(runtime)
    sources = [n for n in shipped if n.endswith(".py")]
    tag = python.cache_tag
    for source in sources:
        folder, _, name = source.rpartition("/")
        pyc = f"{folder + '/' if folder else ''}__pycache__/{name[:-3]}.{tag}.pyc"
        assert pyc in shipped, pyc
    assert len([n for n in shipped if n.endswith(".pyc")]) == len(sources)
    with zipfile.ZipFile(chalice_packaged / "deployment.zip") as deployment:
        headers = {n: deployment.read(n)[:16] for n in shipped if n.endswith(".pyc")}
    # compiled by that interpreter (its magic number), hash-based and unchecked
    wrong = {n: (h[:4], int.from_bytes(h[4:8], "little")) for n, h in headers.items()
             if h[:4] != python.magic or int.from_bytes(h[4:8], "little") != 0b01}
    assert not wrong, sorted(wrong.items())[:5]
    # the binary wheels are the runtime's ABI (hiredis, psycopg-binary)
    extensions = [n for n in shipped if n.endswith(".so") and ".cpython-" in n]
    assert extensions and all(f".cpython-{python.version[0]}{python.version[1]}-" in n
                              for n in extensions), extensions
    tools = {"sessionsync", "tests", "docs", "infra", "scripts", "bench-results", "click", "matplotlib",
             "pytest", "moto"}
    assert not tops & tools, sorted(tops & tools)
    assert not [n for n in shipped if "bench" in n.split("/") or n.startswith("sessionsync")]


def test_a_runtime_s_wheels_are_its_abi_for_the_platforms_its_amazon_linux_loads():
    stage = load_deploy_stage()
    assert stage.runtime_abi("python3.13") == "cp313" and stage.runtime_abi("python3.11") == "cp311"
    # Amazon Linux 2023 (glibc 2.34) for python3.12 and later, Amazon Linux 2 (2.26) for python3.11
    assert stage.wheel_platforms("python3.13")[0] == "manylinux_2_34_x86_64"
    assert stage.wheel_platforms("python3.11")[0] == "manylinux_2_26_x86_64"
    assert stage.wheel_platforms("python3.13", "arm64")[0] == "manylinux_2_34_aarch64"
    for runtime in stage.RUNTIME_GLIBC:
        platforms = stage.wheel_platforms(runtime)
        # every glibc down to manylinux2014's (pip takes each --platform literally)
        assert platforms[-2:] == ["manylinux_2_17_x86_64", "manylinux2014_x86_64"], platforms
        assert len(platforms) == stage.RUNTIME_GLIBC[runtime][1] - 17 + 2
    with pytest.raises(stage.StageError, match=r"python3\.10"):
        stage.runtime_abi("python3.10")


def test_a_runtime_whose_interpreter_is_missing_fails_naming_it_and_the_zip_tier_fails_not_skips(
        monkeypatch, tmp_path):
    from tests.support import lambda_runtime

    stage = load_deploy_stage()
    # nothing on PATH, no pyenv, no variable: nowhere to find python3.13
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.delenv("LAMBDA_PYTHON3_13", raising=False)
    with pytest.raises(stage.StageError) as missing:
        stage.interpreter("python3.13")
    assert "python3.13 is not on PATH" in str(missing.value)
    assert "install CPython 3.13, or set LAMBDA_PYTHON3_13" in str(missing.value)
    # the zip tier's function refuses to start on anything else: an assertion, not a skip
    spec = lambda_runtime.FunctionSpec("APIHandler", "app.app", 30, 512, {}, "python3.13")
    function = lambda_runtime.LambdaFunction(spec, tmp_path, tmp_path, {}, tmp_path / "log")
    with pytest.raises(AssertionError, match=r"no interpreter for LambdaRuntime python3\.13"):
        function.start()
    assert function.proc is None


def _packaged_runtime(packaged) -> str:
    """The runtime the packaged template says the functions run on."""
    import json
    return json.loads((packaged / "sam.json").read_text())["Parameters"]["LambdaRuntime"]["Default"]


def test_the_python_client_imports_only_what_its_own_pyproject_declares_and_no_server_package():
    declared = names(CLIENT_RUNTIME).union(*(names(reqs) for reqs in CLIENT_EXTRAS.values()))
    imported = imported_distributions("clients/python")
    undeclared = {dist: files for dist, files in imported.items() if dist not in declared}
    assert not undeclared, f"imported but not in clients/python/pyproject.toml: {undeclared}"
    server_side = {"chalice", "redis", "hiredis", "psycopg", "psycopg-binary", "boto3", "botocore"}
    assert not declared & server_side and not set(imported) & server_side
    client_files = [f for f in (PROJECT_DIR / "clients" / "python").rglob("*.py")]
    for file in client_files:
        tree = ast.parse(file.read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m.split(".")[0] for m in modules} & {"chalicelib", "sessionsync", "app"}, file
    # the synchronous client never loads httpx: only the async module imports it
    src = PROJECT_DIR / "clients" / "python" / "src"
    assert imported_distributions("clients/python/src").get("httpx") == {
        "clients/python/src/sessionsync_client/aio.py"}
    assert src.joinpath("sessionsync_client", "aio.py").exists()


def test_requirements_dev_txt_pins_the_python_client_s_dependencies_within_their_ranges():
    for requirement in CLIENT_RUNTIME + [r for reqs in CLIENT_EXTRAS.values() for r in reqs]:
        assert_pinned_within_range(requirement, DEV_PINS)


def test_the_project_directory_is_the_variable_s_else_the_checkout_else_the_cwd(monkeypatch, tmp_path):
    monkeypatch.setenv(project.PROJECT_DIR_ENV, str(tmp_path))
    assert project.project_dir() == tmp_path.resolve()
    monkeypatch.delenv(project.PROJECT_DIR_ENV)
    assert project.project_dir() == PROJECT_DIR
    # installed from a wheel: the package's parent is site-packages, without app.py
    monkeypatch.setattr(project, "_CHECKOUT", tmp_path / "site-packages")
    monkeypatch.chdir(tmp_path)
    assert project.project_dir() == tmp_path


def test_the_version_says_so_when_the_package_is_not_installed(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert cli.version() == "unknown (not installed)"
