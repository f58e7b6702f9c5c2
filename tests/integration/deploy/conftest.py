"""The deploy's tests: the stage files, the packaged template set (cfn-lint,
checkov), the migration step, and the stack on LocalStack's CloudFormation.

``packaged_set`` is what `make package STAGE=dev` leaves in
.deploy/dev/out/ (sam.json, deployment.zip, stacks/, parameters.json),
built here from a copy of the project and offline (the session's
``chalice_packaged`` fixture, tests/fixtures/packaging.py), so the
repository's own .deploy/ and CA bundle are never touched.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from tests.support.constants import PROJECT_DIR
from tests.support.packaging import load_deploy_stage


@pytest.fixture(scope="session")
def deploy_stage() -> ModuleType:
    return load_deploy_stage()


@pytest.fixture(scope="session")
def packaged_set(chalice_packaged, tmp_path_factory, deploy_stage) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "out"
    shutil.copytree(chalice_packaged, out)
    shutil.copytree(PROJECT_DIR / "infra" / "stacks", out / "stacks")
    config = {"chalice_stage": "dev", "parameters": {}}
    (out / "parameters.json").write_text(json.dumps(deploy_stage.parameter_overrides(config)))
    return out
