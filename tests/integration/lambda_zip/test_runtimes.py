"""Every runtime the template allows builds, not only its default: an
operator who has not moved sets LambdaRuntime in the stage file and gets a
package for that runtime (scripts/deploy_stage.py, "the Lambda runtime").

The default runtime's package is the rest of the zip tier's subject (every
function, every event); here each other runtime's package is built the same
way, offline, and its interpreter imports every handler and loads the binary
wheels from the unpacked zip, with that runtime's boto3 beside it.
"""
from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.support.lambda_runtime import template_functions
from tests.support.packaging import (
    chalice_package,
    default_runtime,
    interpreter,
    load_deploy_stage,
    runtime_provided,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

RUNTIMES = list(load_deploy_stage().RUNTIME_GLIBC)

# Run by the runtime's interpreter on the unpacked package: every handler
# imported, the C extensions loaded (psycopg's binary implementation, hiredis'
# parser), what was imported and whether its bytecode was the package's.
IMPORTS = r"""
import importlib, json, os, sys
task_root, runtime_dir, handlers = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[:0] = [task_root, runtime_dir]
for handler in handlers:
    module, _, function = handler.rpartition(".")
    assert callable(getattr(importlib.import_module(module), function)), handler
import hiredis, psycopg
from redis.utils import HIREDIS_AVAILABLE
print(json.dumps({"psycopg_impl": psycopg.pq.__impl__, "hiredis": HIREDIS_AVAILABLE,
                  "hiredis_file": hiredis.hiredis.__file__,
                  "uncached": sorted(name for name, m in list(sys.modules.items())
                                     if (getattr(m, "__file__", None) or "").startswith(task_root)
                                     and m.__file__.endswith(".py")
                                     and not os.path.exists(m.__cached__ or ""))}))
"""


def test_the_template_allows_exactly_the_runtimes_the_packager_knows_and_defaults_to_one_of_them():
    template = json.loads(load_deploy_stage().MERGE_TEMPLATE.read_text())
    parameter = template["Parameters"]["LambdaRuntime"]
    assert parameter["AllowedValues"] == RUNTIMES
    assert parameter["Default"] == default_runtime() in RUNTIMES


@pytest.mark.parametrize("runtime", [r for r in RUNTIMES if r != default_runtime()])
def test_another_runtime_s_package_holds_its_bytecode_and_wheels_and_its_interpreter_runs_every_handler(
        runtime, tmp_path):
    python = interpreter(runtime)  # fails, never skips, on a machine without it
    out = chalice_package(tmp_path / "out", tmp_path / "work", runtime=runtime)
    template = json.loads((out / "sam.json").read_text())
    # the packaged template allows only the runtime the package is for
    assert template["Parameters"]["LambdaRuntime"]["Default"] == runtime
    assert template["Parameters"]["LambdaRuntime"]["AllowedValues"] == [runtime]
    specs = template_functions(template)
    assert {spec.runtime for spec in specs.values()} == {runtime}

    with zipfile.ZipFile(out / "deployment.zip") as package:
        names = package.namelist()
        magics = {package.read(n)[:4] for n in names if n.endswith(".pyc")}
        package.extractall(tmp_path / "task")
    assert magics == {python.magic}
    assert not [n for n in names if n.endswith(".pyc") and f".{python.cache_tag}." not in n]
    abi = f"cpython-{python.version[0]}{python.version[1]}-"
    extensions = [n for n in names if n.endswith(".so") and ".cpython-" in n]
    assert extensions and all(abi in n for n in extensions), extensions

    runtime_dir = runtime_provided(tmp_path / "runtime", runtime)
    handlers = sorted({spec.handler for spec in specs.values()})
    result = subprocess.run([python.executable, "-I", "-S", "-B", "-c", IMPORTS, str(tmp_path / "task"),
                             str(runtime_dir), *handlers],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path / "task",
                            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                                 "AWS_DEFAULT_REGION": "us-east-1"})
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["psycopg_impl"] == "binary" and loaded["hiredis"], loaded
    assert Path(loaded["hiredis_file"]).is_relative_to(tmp_path / "task") and abi in loaded["hiredis_file"]
    assert loaded["uncached"] == []  # the package's bytecode, not compiled at start
