"""The packaged template set (sam.json with infra/stacks/ beside it, as
`make package` leaves it) passes cfn-lint and checkov, and wires what the
stack promises."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml

from tests.support.constants import PROJECT_DIR

STACKS = PROJECT_DIR / "infra" / "stacks"


def cfn_lint(*paths: Path) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).parent / "cfn-lint"
    return subprocess.run([str(binary if binary.exists() else shutil.which("cfn-lint")), *map(str, paths)],
                          capture_output=True, text=True, timeout=180)


def test_the_packaged_template_and_every_nested_stack_pass_cfn_lint(packaged_set):
    result = cfn_lint(packaged_set / "sam.json", *sorted((packaged_set / "stacks").glob("*.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_checkov_finds_nothing_outside_the_justified_exceptions(packaged_set, tmp_path):
    scan = tmp_path / "scan"
    scan.mkdir()
    shutil.copy(packaged_set / "sam.json", scan)
    shutil.copytree(packaged_set / "stacks", scan / "stacks")
    result = subprocess.run([str(PROJECT_DIR / "scripts" / "policy.sh"), str(scan)], capture_output=True,
                            text=True, timeout=600, cwd=PROJECT_DIR)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Failed checks: 0" in result.stdout
    # it scanned the nested stacks too, not only the root
    passed = int(result.stdout.split("Passed checks: ")[1].split(",")[0])
    assert passed > 100, result.stdout


def _nested(packaged: dict) -> dict[str, dict]:
    return {name: r for name, r in packaged["Resources"].items() if r["Type"] == "AWS::CloudFormation::Stack"}


def test_every_nested_stack_gets_exactly_the_parameters_its_template_declares(packaged_set):
    packaged = json.loads((packaged_set / "sam.json").read_text())
    for name, stack in _nested(packaged).items():
        template = cfn_yaml.loads((packaged_set / stack["Properties"]["TemplateURL"]).read_text())
        declared = template["Parameters"]
        given = set(stack["Properties"]["Parameters"])
        required = {p for p, spec in declared.items() if "Default" not in spec}
        assert required <= given <= set(declared), name


def test_the_cache_is_a_tls_encrypted_cluster_with_failover_and_an_rbac_user_from_secrets_manager():
    cache = cfn_yaml.loads((STACKS / "cache.yaml").read_text())["Resources"]
    group = cache["ReplicationGroup"]["Properties"]
    assert group["AutomaticFailoverEnabled"] is True and group["MultiAZEnabled"] is True
    assert group["TransitEncryptionEnabled"] is True and group["TransitEncryptionMode"] == "required"
    assert group["AtRestEncryptionEnabled"] is True
    assert cache["Parameters"]["Properties"]["Properties"]["cluster-enabled"] == "yes"
    user = cache["AppUser"]["Properties"]
    assert "AuthSecret" in json.dumps(user["AuthenticationMode"]["Passwords"])
    assert cache["DefaultUser"]["Properties"]["AccessString"].startswith("off")


def test_the_database_is_encrypted_private_tls_only_and_behind_rds_proxy():
    database = cfn_yaml.loads((STACKS / "database.yaml").read_text())["Resources"]
    instance = database["Instance"]["Properties"]
    assert instance["StorageEncrypted"] is True and instance["PubliclyAccessible"] is False
    assert database["Parameters"]["Properties"]["Parameters"]["rds.force_ssl"] == "1"
    proxy = database["Proxy"]["Properties"]
    assert proxy["RequireTLS"] is True and proxy["EngineFamily"] == "POSTGRESQL"


def test_the_api_is_regional_traced_throttled_and_has_a_usage_plan(packaged_set):
    packaged = json.loads((packaged_set / "sam.json").read_text())
    api = packaged["Resources"]["RestAPI"]["Properties"]
    assert api["EndpointConfiguration"] == "REGIONAL" and api["TracingEnabled"] is True
    (settings,) = api["MethodSettings"]
    assert settings["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRateLimit"}
    plan = packaged["Resources"]["UsagePlan"]["Properties"]
    assert plan["ApiStages"] == [{"ApiId": {"Ref": "RestAPI"}, "Stage": {"Ref": "RestAPI.Stage"}}]
    assert plan["Throttle"]["RateLimit"] == {"Ref": "UsagePlanRateLimit"}
    for function in (r for r in packaged["Resources"].values() if r["Type"] == "AWS::Serverless::Function"):
        assert function["Properties"]["Tracing"] == "Active"
        assert function["Properties"]["Runtime"] == {"Ref": "LambdaRuntime"}
        assert function["Properties"]["Architectures"] == [{"Ref": "LambdaArchitecture"}]


def test_the_alarms_watch_every_loss_metric_the_code_emits():
    from chalicelib.observability import metrics

    monitoring = (STACKS / "monitoring.yaml").read_text()
    # the metrics that mean a change was lost, delayed or served from a fallback
    for name in ("DlqSends", "ShipFailures", "OutboxOldestAgeSeconds", "RedisEpochChanges",
                 "RedisRepairs", "StaleReads", "ApiKeyRefreshFailures"):
        assert name in metrics.CATALOGUE and f"MetricName: {name}" in monitoring, name
    for alarm in ("5XXError", "Latency", "Errors", "Throttles", "DatabaseMemoryUsagePercentage",
                  "Evictions", "ReplicationLag", "CPUUtilization", "DatabaseConnections"):
        assert f"MetricName: {alarm}" in monitoring, alarm
