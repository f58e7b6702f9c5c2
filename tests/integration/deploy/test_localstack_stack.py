"""The byo stage ("bring your own Redis and PostgreSQL endpoints") deployed
onto LocalStack's CloudFormation by scripts/deploy_stage.py's own upload and
change-set code: every resource LocalStack's free edition can create here,
the nested network, roles and monitoring stacks included, with its outputs
resolved.  What it cannot create is left out by type, with everything that
refers to it, and that list is the one docs/deploy.md gives with reasons.

A LocalStack of the test's own (the shared one runs SQS and Secrets
Manager only), started from the same virtualenv and stopped by PID.
"""
from __future__ import annotations

import json
import re
import uuid

import pytest

from chalicelib.adapters import aws
from chalicelib.config import Settings
from tests.integration.deploy.utils import LocalStack, wait_for_deletion
from tests.support.constants import PROJECT_DIR

SERVICES = "cloudformation,s3,sqs,secretsmanager,cloudwatch,ec2,iam,logs,sts,events"
# LocalStack 4.13.1 cannot create these here (docs/deploy.md, "What LocalStack cannot deploy")
UNSUPPORTED = {"AWS::Serverless::Function", "AWS::Lambda::Permission", "Custom::SchemaMigrations",
               "AWS::ElastiCache::ReplicationGroup", "AWS::RDS::DBInstance"}


def _references(node) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value.split(".")[0])
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found |= {name.split(".")[0] for name in re.findall(r"\$\{([^}!]+)\}", text)}
                if not isinstance(value, str):
                    found |= _references(value[1])
            else:
                found |= _references(value)
    elif isinstance(node, list):
        for item in node:
            found |= _references(item)
    return found


def without_unsupported(template: dict) -> tuple[dict, set[str]]:
    """The template less the resources of UNSUPPORTED types and, transitively,
    every resource and output that refers to one; returns it and the names
    left out."""
    resources = template["Resources"]
    out = {name for name, r in resources.items() if r["Type"] in UNSUPPORTED}
    while True:
        more = {name for name, r in resources.items() if name not in out
                and (_references(r) | set(r.get("DependsOn", []) if isinstance(r.get("DependsOn"), list)
                                          else [r["DependsOn"]] if "DependsOn" in r else [])) & out}
        if not more:
            break
        out |= more
    kept = {**template, "Resources": {n: r for n, r in resources.items() if n not in out},
            "Outputs": {n: o for n, o in template.get("Outputs", {}).items() if not _references(o) & out}}
    return kept, out


def documented_exclusions() -> set[str]:
    text = (PROJECT_DIR / "docs" / "deploy.md").read_text()
    section = text.split("<!-- localstack-exclusions -->")[1]
    return set(re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE))


@pytest.fixture(scope="module")
def localstack(tmp_path_factory, aws_test_environment):
    server = LocalStack(tmp_path_factory.mktemp("localstack-deploy"), SERVICES)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.localstack
def test_the_byo_stage_deploys_onto_localstack_with_its_nested_stacks_and_outputs(
        localstack, packaged_set, deploy_stage, tmp_path, monkeypatch):
    settings = Settings(aws_endpoint_url=localstack.url, aws_region="us-east-1")
    secrets = aws.client("secretsmanager", settings)
    s3 = aws.client("s3", settings)
    name = f"ss-{uuid.uuid4().hex[:8]}"
    bucket = f"{name}-artifacts"
    s3.create_bucket(Bucket=bucket)
    # the endpoints brought: the test's Redis and PostgreSQL stand behind them
    db_secret = secrets.create_secret(Name=f"{name}-db", SecretString=json.dumps(
        {"username": "postgres", "password": "x", "host": "127.0.0.1", "port": 5432,
         "dbname": "sessionsync", "sslmode": "disable"}))["ARN"]
    stage = tmp_path / "byo.toml"
    stage.write_text((PROJECT_DIR / "infra" / "stages" / "byo.toml").read_text()
                     .replace('stack_name = "sessionsync-byo"', f'stack_name = "{name}"')
                     .replace('# region = "eu-west-1"', 'region = "us-east-1"')
                     .replace('# artifact_bucket = "my-artifacts-eu-west-1"', f'artifact_bucket = "{bucket}"')
                     .replace('[parameters]', f'[parameters]\nRedisEndpoint = "127.0.0.1"\nDbSecretArn = '
                                              f'"{db_secret}"\n')
                     .replace("sessionsync-byo-events", f"{name}-events")
                     # LocalStack cannot run the migration function (no Lambda here)
                     .replace('MigrateOnDeploy = "true"', 'MigrateOnDeploy = "false"'))
    config = deploy_stage.check("byo", str(stage))
    out = tmp_path / "out"
    out.mkdir()
    template, left_out = without_unsupported(json.loads((packaged_set / "sam.json").read_text()))
    assert left_out == documented_exclusions(), "docs/deploy.md lists other exclusions"
    (out / "sam.json").write_text(json.dumps(template))
    (out / "deployment.zip").write_bytes((packaged_set / "deployment.zip").read_bytes())
    (out / "stacks").symlink_to(packaged_set / "stacks")
    overrides = deploy_stage.parameter_overrides(config)
    (out / "parameters.json").write_text(json.dumps(overrides))
    monkeypatch.setenv("AWS_ENDPOINT_URL", localstack.url)

    cfn = aws.client("cloudformation", settings, read_timeout=30)
    try:
        # the dry run: a change set shown, nothing created
        shown = deploy_stage.deploy("byo", config, dry_run=True, out=out)
        assert not shown["executed"]
        planned = {c["LogicalResourceId"] for c in shown["changes"]}
        assert {"SessionQueue", "NetworkStack", "RolesStack", "MonitoringStack", "ApiKeysSecret"} <= planned
        cfn.delete_change_set(StackName=name, ChangeSetName=shown["change_set"])

        done = deploy_stage.deploy("byo", config, dry_run=False, out=out, timeout=300)
        outputs = done["outputs"]
        assert outputs["RedisUrl"] == "rediss://127.0.0.1:6379"
        assert outputs["DbSecretArn"] == db_secret
        assert outputs["QueueUrl"].endswith(f"/{name}-events")
        assert outputs["ApiKeysSecretArn"].startswith("arn:aws:secretsmanager:")
        # the generated API key is a key: {"api_key": "..."}, 40 characters
        generated = json.loads(secrets.get_secret_value(SecretId=outputs["ApiKeysSecretArn"])["SecretString"])
        assert len(generated["api_key"]) == 40

        nested = {r["LogicalResourceId"]: r for r in
                  cfn.describe_stack_resources(StackName=name)["StackResources"]
                  if r["ResourceType"] == "AWS::CloudFormation::Stack"}
        assert set(nested) == {"NetworkStack", "RolesStack", "MonitoringStack"}  # byo: no cache, no database
        for resource in nested.values():
            child = cfn.describe_stacks(StackName=resource["PhysicalResourceId"])["Stacks"][0]
            assert child["StackStatus"] == "CREATE_COMPLETE", child.get("StackStatusReason")
        network = {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(
            StackName=nested["NetworkStack"]["PhysicalResourceId"])["Stacks"][0]["Outputs"]}
        ec2 = aws.client("ec2", settings)
        (vpc,) = ec2.describe_vpcs(VpcIds=[network["VpcId"]])["Vpcs"]
        assert vpc["CidrBlock"] == "10.42.0.0/16"
        assert len(network["SubnetIds"].split(",")) == 2
        endpoints = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc["VpcId"]]}])
        assert {e["ServiceName"].rsplit(".", 1)[1] for e in endpoints["VpcEndpoints"]} == {
            "sqs", "secretsmanager", "s3"}
        alarms = {a["AlarmName"] for a in aws.client("cloudwatch", settings).describe_alarms(
            AlarmNamePrefix=name)["MetricAlarms"]}
        assert {f"{name}-dlq-sends", f"{name}-api-5xx", f"{name}-relay-stalled",
                f"{name}-redis-went-back"} <= alarms
        assert not {a for a in alarms if "cache" in a or "db-" in a}  # byo: none of the created backends'
        # LocalStack 4.13.1 reports the dashboard created but serves no GetDashboard for it
        monitoring = cfn.describe_stack_resources(StackName=nested["MonitoringStack"]["PhysicalResourceId"])
        states = {r["LogicalResourceId"]: r["ResourceStatus"] for r in monitoring["StackResources"]}
        assert states["Dashboard"] == "CREATE_COMPLETE" and "CacheMemoryAlarm" not in states
        roles = {r["RoleName"] for r in aws.client("iam", settings).list_roles()["Roles"]}
        assert sum(1 for r in roles if "ApiRole" in r or "ConsumerRole" in r) >= 2
    finally:
        cfn.delete_stack(StackName=name)
        wait_for_deletion(cfn, name, timeout=300)
