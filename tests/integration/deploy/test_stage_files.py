"""`make deploy STAGE=...` checks the stage file before it builds anything:
a missing or malformed parameter fails fast, naming it."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from chalicelib.adapters.postgres import migrations
from tests.support.constants import PROJECT_DIR


def make(*args: str, **env: str) -> subprocess.CompletedProcess:
    # not a parent make's flags or variables (`make test STAGE=...`)
    clean = {k: v for k, v in os.environ.items()
             if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "STAGE", "DRY_RUN")
             and not k.startswith("DEPLOY_")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=PROJECT_DIR, capture_output=True,
                          text=True, timeout=60, env={**clean, **env})


def test_make_deploy_of_the_shipped_dev_stage_fails_at_once_naming_the_region_and_the_bucket():
    start = time.monotonic()
    result = make("deploy", "STAGE=dev", "DRY_RUN=1")
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "region: missing" in result.stderr and "artifact_bucket: missing" in result.stderr
    # nothing was built: no chalice, no virtualenv step, no download
    assert "chalice" not in result.stdout and "curl" not in result.stdout
    assert elapsed < 5, elapsed  # measured ~0.3 s; the promise is "under 5 s"


def test_make_deploy_without_a_stage_names_it():
    result = make("deploy")
    assert result.returncode != 0 and "needs STAGE=" in result.stderr


def test_make_package_checks_the_stage_first_too():
    result = make("package", "STAGE=nosuchstage")
    assert result.returncode != 0 and "no stage file" in result.stderr


@pytest.fixture
def stage_file(tmp_path):
    def write(text: str) -> str:
        path = tmp_path / "stage.toml"
        path.write_text('chalice_stage = "dev"\nstack_name = "ss-test"\nregion = "eu-west-1"\n'
                        'artifact_bucket = "my-artifacts"\n' + text)
        return str(path)
    return write


@pytest.mark.parametrize("parameters, named", [
    ('[parameters]\nVpcMode = "sideways"', "parameter VpcMode: 'sideways' is not one of new, existing, none"),
    ('[parameters]\nCacheShards = 0', "parameter CacheShards: 0 is below its minimum 1"),
    ('[parameters]\nCacheShards = "many"', "parameter CacheShards: 'many' is not a number"),
    ('[parameters]\nRedisEndpont = "x"', "parameter RedisEndpont: not a parameter of the template"),
    ('[parameters]\nMigrationsChecksum = "x"', "parameter MigrationsChecksum: set by the deploy"),
    ('[parameters]\nCacheMode = "external"', "rule ExternalCacheNeedsAnEndpoint: CacheMode external needs "
                                             "RedisEndpoint"),
    ('[parameters]\nVpcMode = "existing"', "rule ExistingVpcNeedsItsIds: VpcMode existing needs SubnetIds"),
    ('[parameters]\nVpcMode = "none"', "VpcMode none needs CacheMode external"),
    ('[parameters]\nDbSecretArn = "secret-7"', "parameter DbSecretArn: 'secret-7' does not match"),
    ('[parameters]\nLambdaRuntime = "python3.10"', "parameter LambdaRuntime: 'python3.10' is not one of "
                                                   "python3.11, python3.12, python3.13"),
    ('[parameters]\nLambdaArchitecture = "arm64"', "the stage dev's lambda_architecture in "
                                                   ".chalice/config.json is x86_64"),
])
def test_a_malformed_or_inconsistent_parameter_is_refused_by_name(deploy_stage, stage_file, parameters,
                                                                  named):
    with pytest.raises(deploy_stage.StageError) as refused:
        deploy_stage.check("t", stage_file(parameters))
    assert named in str(refused.value)


def test_a_runtime_without_its_interpreter_on_this_machine_is_refused_naming_what_to_install(
        deploy_stage, stage_file, monkeypatch, tmp_path):
    # the package's bytecode is compiled by the runtime's interpreter: none, no package
    monkeypatch.setenv("LAMBDA_PYTHON3_12", str(tmp_path / "no-python3.12"))
    with pytest.raises(deploy_stage.StageError) as refused:
        deploy_stage.check("t", stage_file('[parameters]\nLambdaRuntime = "python3.12"'))
    assert "parameter LambdaRuntime: no interpreter for LambdaRuntime python3.12" in str(refused.value)
    assert "install CPython 3.12, or set LAMBDA_PYTHON3_12" in str(refused.value)
    # nor another version standing in for it
    monkeypatch.setenv("LAMBDA_PYTHON3_12", deploy_stage.interpreter("python3.13").executable)
    with pytest.raises(deploy_stage.StageError) as refused:
        deploy_stage.check("t", stage_file('[parameters]\nLambdaRuntime = "python3.12"'))
    assert "is cpython 3.13, not CPython 3.12" in str(refused.value)


def test_a_stage_without_a_runtime_deploys_the_template_s_and_passes_it_to_the_stack(deploy_stage,
                                                                                       stage_file):
    config = deploy_stage.check("t", stage_file(""))
    assert deploy_stage.parameter_overrides(config)["LambdaRuntime"] == deploy_stage.default_runtime()
    chosen = deploy_stage.check("t", stage_file('[parameters]\nLambdaRuntime = "python3.11"'))
    assert deploy_stage.parameter_overrides(chosen)["LambdaRuntime"] == "python3.11"


def test_a_complete_stage_passes_with_the_derived_parameters(deploy_stage, stage_file):
    config = deploy_stage.check("t", stage_file('[parameters]\nCacheMode = "external"\n'
                                                'RedisEndpoint = "cache.example.com"\nCacheShards = 2'))
    overrides = deploy_stage.parameter_overrides(config)
    assert overrides["CacheShards"] == "2" and overrides["ApiStageName"] == "dev"
    # the deploy script's digest (no import) is the runner's, which the migration step compares
    assert overrides["MigrationsChecksum"] == migrations.release_checksum()


@pytest.mark.parametrize("stage", ["dev", "prod", "byo"])
def test_every_shipped_stage_file_is_complete_once_given_a_region_a_bucket_and_its_endpoints(
        deploy_stage, tmp_path, stage):
    text = (PROJECT_DIR / "infra" / "stages" / f"{stage}.toml").read_text()
    if stage == "byo":  # bring your own: the endpoints are yours to give
        text = text.replace("[parameters]", '[parameters]\nRedisEndpoint = "cache.example.com"\n'
                            'DbSecretArn = "arn:aws:secretsmanager:eu-west-1:1:secret:db"')
    filled = text.replace('# region = "eu-west-1"', 'region = "eu-west-1"').replace(
        '# artifact_bucket = "my-artifacts-eu-west-1"', 'artifact_bucket = "my-artifacts-eu-west-1"')
    (tmp_path / "stage.toml").write_text(filled)
    config = deploy_stage.check(stage, str(tmp_path / "stage.toml"))
    assert config["stack_name"] == f"sessionsync-{stage}"
