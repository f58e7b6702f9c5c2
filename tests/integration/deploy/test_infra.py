"""The deploy templates: cfn-lint on infra/ and on what `chalice package`
produces with infra/chalice-merge.json, and the settings that matter
checked in the packaged template itself (not in the merge file: the merge
could silently not apply)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cfnlint.decode import cfn_yaml

from chalicelib import config, constants
from sessionsync import provisioning
from tests.support.constants import PROJECT_DIR

INFRA = PROJECT_DIR / "infra"
QUEUES_TEMPLATE = INFRA / "cloudformation" / "queues.yaml"
MERGE_TEMPLATE = INFRA / "chalice-merge.json"
BIN = Path(sys.executable).parent
QUEUE_RESOURCES = ("SessionQueue", "SessionDeadLetterQueue", "DeadLetterQueueNotEmptyAlarm", "QueueAgeAlarm")


def tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed (requirements-dev.txt)"
    return found


def cfn_lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("cfn-lint"), str(path)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def packaged_path(chalice_packaged) -> Path:
    return chalice_packaged / "sam.json"


@pytest.fixture(scope="module")
def packaged(packaged_path) -> dict:
    return json.loads(packaged_path.read_text())


@pytest.fixture(scope="module")
def queues_template() -> dict:
    return cfn_yaml.loads(QUEUES_TEMPLATE.read_text())


def functions(template: dict) -> dict[str, dict]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


def default(template: dict, parameter: str):
    return template["Parameters"][parameter]["Default"]


def test_the_queue_template_passes_cfn_lint():
    result = cfn_lint(QUEUES_TEMPLATE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_chalice_package_with_the_merge_template_passes_cfn_lint(packaged_path):
    result = cfn_lint(packaged_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_packaged_consumer_reports_batch_item_failures_from_the_template_s_queue(packaged):
    consumer = packaged["Resources"]["PersistChanges"]["Properties"]
    (source,) = consumer["Events"].values()
    assert source["Type"] == "SQS"
    assert source["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # the merged Fn::Sub replaced Chalice's name-based ARN: one key, the template's queue
    assert source["Properties"]["Queue"] == {"Fn::Sub": "${SessionQueue.Arn}"}
    assert source["Properties"]["BatchSize"] == constants.CONSUMER_BATCH_SIZE


def test_the_consumer_cannot_open_more_database_connections_than_its_cap(packaged):
    consumer = packaged["Resources"]["PersistChanges"]["Properties"]
    (source,) = consumer["Events"].values()
    assert source["Properties"]["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "ConsumerMaxConcurrency"}}
    cap = default(packaged, "ConsumerMaxConcurrency")
    assert cap == constants.CONSUMER_MAX_CONCURRENCY
    assert 2 <= cap <= consumer["ReservedConcurrentExecutions"]


def test_the_packaged_queue_redrives_to_the_dlq_after_five_receives_and_hides_for_six_timeouts(packaged):
    resources = packaged["Resources"]
    queue = resources["SessionQueue"]["Properties"]
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["SessionDeadLetterQueue", "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"}}
    assert default(packaged, "MaxReceiveCount") == 5
    assert packaged["Parameters"]["MaxReceiveCount"]["MinValue"] == 5
    consumer_timeout = resources["PersistChanges"]["Properties"]["Timeout"]
    assert queue["VisibilityTimeout"] == {"Ref": "VisibilityTimeoutSeconds"}
    assert packaged["Parameters"]["VisibilityTimeoutSeconds"]["MinValue"] >= 6 * consumer_timeout
    for name in ("SessionQueue", "SessionDeadLetterQueue"):
        assert resources[name]["Properties"]["MaximumMessageSize"] == 1048576
    dlq = resources["SessionDeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] > queue["MessageRetentionPeriod"]


def test_alarms_fire_on_any_dlq_message_and_on_an_old_message_in_the_queue(packaged):
    resources = packaged["Resources"]
    dlq_alarm = resources["DeadLetterQueueNotEmptyAlarm"]["Properties"]
    assert (dlq_alarm["MetricName"], dlq_alarm["ComparisonOperator"], dlq_alarm["Threshold"]) == (
        "ApproximateNumberOfMessagesVisible", "GreaterThanThreshold", 0)
    assert dlq_alarm["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["SessionDeadLetterQueue", "QueueName"]}
    age_alarm = resources["QueueAgeAlarm"]["Properties"]
    assert age_alarm["MetricName"] == "ApproximateAgeOfOldestMessage"
    assert age_alarm["Dimensions"][0]["Value"] == {"Fn::GetAtt": ["SessionQueue", "QueueName"]}
    assert age_alarm["Threshold"] == {"Ref": "QueueAgeAlarmSeconds"}


def test_the_relay_s_schedule_timeout_and_concurrency_agree_with_its_design(packaged):
    # a run every minute holds the lease until the next takes over, or until
    # shortly before its timeout: the timeout outlasts missed schedules, and
    # two runs overlap for the hand-over (chalicelib.pipeline.outbox)
    chalice = json.loads((PROJECT_DIR / ".chalice" / "config.json").read_text())
    for stage in ("dev", "prod"):
        relay = chalice["stages"][stage]["lambda_functions"]["relay_outbox"]
        assert relay["lambda_timeout"] == constants.RELAY_TIMEOUT_SECONDS, stage
        assert relay["reserved_concurrency"] == constants.RELAY_RESERVED_CONCURRENCY >= 2, stage
    assert constants.RELAY_TIMEOUT_SECONDS >= 2 * constants.RELAY_SCHEDULE_SECONDS
    resources = packaged["Resources"]
    assert resources["RelayOutbox"]["Properties"]["Timeout"] == constants.RELAY_TIMEOUT_SECONDS
    events = resources["RelayOutbox"]["Properties"]["Events"].values()
    schedules = [e["Properties"]["Schedule"] for e in events if e["Type"] == "Schedule"]
    assert schedules == [f"rate({constants.RELAY_SCHEDULE_SECONDS // 60} minute)"], schedules
    # its lag alarm: no data (no relay running) is breaching
    alarm = cfn_yaml.loads((PROJECT_DIR / "infra" / "stacks" / "monitoring.yaml").read_text())[
        "Resources"]["PersistenceLagAlarm"]["Properties"]
    assert (alarm["MetricName"], alarm["TreatMissingData"]) == ("OutboxOldestAgeSeconds", "breaching")


def test_every_function_gets_tls_redis_the_secrets_the_queue_urls_and_the_vpc(packaged):
    found = functions(packaged)
    assert set(found) >= {"APIHandler", "Authorizer", "PersistChanges", "RelayOutbox", "SweepExpired",
                          "PurgeSyncEvents", "RunMigrations"}
    for name, function in found.items():
        props = function["Properties"]
        variables = props["Environment"]["Variables"]
        # named <stack>-<function>: the alarms, the dashboard and the roles name them
        assert props["FunctionName"]["Fn::Sub"].startswith("${AWS::StackName}-"), name
        assert variables["SESSIONSYNC_API_KEYS_SECRET_ARN"]["Fn::If"][0] == "CreateApiKeysSecret", name
        if name == "Authorizer":
            # the authorizer reads the API keys and nothing else, outside the VPC
            assert not set(variables) & {"REDIS_URL", "REDIS_SECRET_ARN", "DB_SECRET_ARN", "DB_HOST",
                                         "SESSION_QUEUE_URL", "SESSION_DLQ_URL"}
            assert props["VpcConfig"] == {"Ref": "AWS::NoValue"}
            continue
        # no password in the URL: the functions read REDIS_SECRET_ARN when they connect
        created, given = variables["REDIS_URL"]["Fn::If"][1:]
        assert created == {"Fn::Sub": "rediss://${CacheStack.Outputs.Endpoint}:${CacheStack.Outputs.Port}"}
        assert given == {"Fn::Sub": "rediss://${RedisEndpoint}:${RedisPort}"}, name
        assert variables["REDIS_SECRET_ARN"]["Fn::If"][0] == "HasRedisAuth", name
        assert variables["DB_SECRET_ARN"]["Fn::If"][1:] == [
            {"Fn::GetAtt": ["DatabaseStack", "Outputs.SecretArn"]}, {"Ref": "DbSecretArn"}], name
        assert variables["SESSION_QUEUE_URL"] == {"Ref": "SessionQueue"}, name
        assert variables["SESSION_DLQ_URL"] == {"Ref": "SessionDeadLetterQueue"}, name
        assert props["VpcConfig"]["Fn::If"][0] == "HasVpc", name
        # RDS Proxy for the functions; the instance itself for the migrations
        if name == "RunMigrations":
            assert variables["DB_HOST"] == "", name
        else:
            proxy = {"Fn::GetAtt": ["DatabaseStack", "Outputs.ProxyEndpoint"]}
            assert variables["DB_HOST"]["Fn::If"][1] == proxy, name
            # ordered after the migration step (when the deploy runs it)
            assert variables["SESSIONSYNC_SCHEMA_VERSION"]["Fn::If"][:2] == [
                "Migrate", {"Fn::GetAtt": ["SchemaMigrations", "Version"]}], name
        assert props["Role"]["Fn::GetAtt"][0] == "RolesStack", name


def _gateway_responses(packaged: dict) -> dict:
    body = packaged["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]
    return body["x-amazon-apigateway-gateway-responses"]


def test_the_gateway_answers_an_unknown_route_with_a_404_that_echoes_nothing(packaged):
    responses = _gateway_responses(packaged)
    for response_type, (status, code) in {"MISSING_AUTHENTICATION_TOKEN": ("404", "RouteNotFound"),
                                          "UNAUTHORIZED": ("401", "Unauthorized"),
                                          "ACCESS_DENIED": ("403", "Forbidden")}.items():
        response = responses[response_type]
        assert response["statusCode"] == status
        template = response["responseTemplates"]["application/json"]
        # only the request id may be substituted: never the message API Gateway
        # builds (it can quote the Authorization header), the input or headers
        assert re.findall(r"\$[a-zA-Z.]+", template) == ["$context.requestId"], template
        problem = json.loads(template.replace("$context.requestId", "r-1"))
        assert problem["status"] == int(status) and problem["code"] == code
        assert problem["error"]["code"] == code and problem["error"]["message"] == problem["detail"]
    for response in responses.values():
        template = response["responseTemplates"]["application/json"]
        assert "$context.error.message" not in template and "$input" not in template
        assert "header" not in template
        # the API's error shape: problem details (RFC 9457) that keep `error`
        problem = json.loads(re.sub(r"\$[a-zA-Z.]+", "x", template))
        assert problem["type"] == "about:blank" and problem["error"]["code"] == problem["code"]
        assert response["responseParameters"]["gatewayresponse.header.Content-Type"] == \
            "'application/problem+json'"


def test_the_standalone_queue_template_defines_the_same_queues_and_alarms(queues_template, packaged):
    for name in QUEUE_RESOURCES:
        assert queues_template["Resources"][name] == packaged["Resources"][name], name
    for name, parameter in queues_template["Parameters"].items():
        assert packaged["Parameters"][name] == parameter, name


def test_the_queue_settings_agree_with_bootstrap_and_the_chalice_config(queues_template):
    chalice = json.loads((PROJECT_DIR / ".chalice" / "config.json").read_text())
    for stage in ("dev", "prod"):
        assert chalice["stages"][stage]["lambda_functions"]["persist_changes"]["lambda_timeout"] == \
            constants.CONSUMER_TIMEOUT_SECONDS, stage
    resources = queues_template["Resources"]
    assert default(queues_template, "VisibilityTimeoutSeconds") == constants.QUEUE_VISIBILITY_TIMEOUT
    assert constants.QUEUE_VISIBILITY_TIMEOUT >= 6 * constants.CONSUMER_TIMEOUT_SECONDS
    assert default(queues_template, "MaxReceiveCount") == constants.QUEUE_MAX_RECEIVE_COUNT
    assert resources["SessionQueue"]["Properties"]["MaximumMessageSize"] == provisioning.MAX_MESSAGE_SIZE
    assert resources["SessionQueue"]["Properties"]["MessageRetentionPeriod"] == \
        provisioning.MAIN_RETENTION_SECONDS
    assert resources["SessionDeadLetterQueue"]["Properties"]["MessageRetentionPeriod"] == \
        provisioning.DLQ_RETENTION_SECONDS
    assert default(queues_template, "QueueName") == constants.DEFAULT_QUEUE_NAME
    assert default(queues_template, "DeadLetterQueueName") == \
        provisioning.dlq_name_for(constants.DEFAULT_QUEUE_NAME)


def test_localstack_compose_parses_and_serves_the_local_stage_ports():
    compose = yaml.safe_load((PROJECT_DIR / "localstack-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"localstack", "redis", "postgres"}
    ports = {name: [p.rsplit(":", 1)[-1] for p in service["ports"]] for name, service in services.items()}
    assert ports == {"localstack": ["4566"], "redis": ["6379"], "postgres": ["5432"]}
    lock = (INFRA / "localstack" / "requirements-py311.lock").read_text()
    version = re.search(r"^localstack-core==(\S+)", lock, re.MULTILINE).group(1)
    assert services["localstack"]["image"] == f"localstack/localstack:{version}"
    assert {"sqs", "secretsmanager"} <= set(services["localstack"]["environment"]["SERVICES"].split(","))
    local = json.loads((PROJECT_DIR / ".chalice" / "config.json").read_text())["stages"]["local"]
    assert local["environment_variables"]["REDIS_URL"].startswith("redis://127.0.0.1:6379")
    assert "@127.0.0.1:5432/" + services["postgres"]["environment"]["POSTGRES_DB"] in \
        local["environment_variables"]["DATABASE_URL"]
    assert all("healthcheck" in service for service in services.values())


# The deploy path (make deploy, the stage files): tests/integration/deploy/.


def test_the_chalice_config_holds_no_secrets_no_account_and_no_unread_settings():
    text = (PROJECT_DIR / ".chalice" / "config.json").read_text()
    for absent in ("CHANGE_ME", "123456789012", "arn:aws", "POWERTOOLS_", "rediss://"):
        assert absent not in text, absent
    chalice = json.loads(text)
    for stage in ("dev", "prod"):
        variables = chalice["stages"][stage]["environment_variables"]
        # connection settings and secrets come from the template's parameters
        assert not set(variables) & {"REDIS_URL", "REDIS_CLUSTER", "REDIS_SECRET_ARN", "DB_SECRET_ARN",
                                     "DATABASE_URL", config.API_KEYS_SECRET_ARN, config.API_KEYS}, stage


def test_only_the_api_the_consumer_and_the_relay_reserve_concurrency(packaged):
    found = functions(packaged)
    reserved = {name: f["Properties"].get("ReservedConcurrentExecutions") for name, f in found.items()}
    # the relay: one run holds the lease while the next scheduled run starts
    # and takes over; the authorizer draws from the account's unreserved pool
    assert reserved["RelayOutbox"] == constants.RELAY_RESERVED_CONCURRENCY
    assert reserved["Authorizer"] is None
    stages = json.loads((PROJECT_DIR / ".chalice" / "config.json").read_text())["stages"]
    assert reserved["APIHandler"] == stages["dev"]["lambda_functions"]["api_handler"]["reserved_concurrency"]
    assert reserved["PersistChanges"] >= default(packaged, "ConsumerMaxConcurrency")
    for stage in ("dev", "prod"):
        assert "reserved_concurrency" not in stages[stage], stage


def test_every_function_s_log_group_is_kept_for_the_stage_s_retention_and_names_the_function(packaged):
    stages = json.loads((PROJECT_DIR / ".chalice" / "config.json").read_text())["stages"]
    groups = {name: r["Properties"] for name, r in packaged["Resources"].items()
              if r["Type"] == "AWS::Logs::LogGroup"}
    named = {props["LogGroupName"]["Fn::Sub"] for name, props in groups.items()
             if name != "ApiAccessLogGroup"}
    assert named == {"/aws/lambda/" + f["Properties"]["FunctionName"]["Fn::Sub"]
                     for f in functions(packaged).values()}
    groups.pop("ApiAccessLogGroup")
    assert {props["RetentionInDays"] for props in groups.values()} == {stages["dev"]["log_retention_in_days"]}
    assert stages["prod"]["log_retention_in_days"] >= stages["dev"]["log_retention_in_days"]


def test_the_packaged_template_names_no_region(packaged_path):
    # chalice package needs a region (AWS_DEFAULT_REGION) but, with the merge
    # template's queue ARN, writes none: the template deploys to any region
    # of the partition
    assert "us-east-1" not in packaged_path.read_text()


def test_every_session_route_is_guarded_by_the_authorizer_function_and_health_by_nothing(packaged):
    # API Gateway calls the authorizer with the Authorization header (a
    # TOKEN authorizer) and caches its answer per token for 300 s; the
    # security definition must be the custom one, not API Gateway's own
    # usage-plan key check that Chalice writes under the name "api_key"
    body = packaged["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]
    (name,) = body["securityDefinitions"]
    definition = body["securityDefinitions"][name]
    assert definition["x-amazon-apigateway-authtype"] == "custom"
    assert (definition["type"], definition["in"], definition["name"]) == ("apiKey", "header", "Authorization")
    authorizer = definition["x-amazon-apigateway-authorizer"]
    assert authorizer["type"] == "token" and authorizer["authorizerResultTtlInSeconds"] == 300
    assert "${Authorizer.Arn}" in authorizer["authorizerUri"]["Fn::Sub"]
    assert functions(packaged)["Authorizer"]["Properties"]["Handler"] == "app.authorizer"
    for path, methods in body["paths"].items():
        for method, operation in methods.items():
            expected = [] if path == "/health" else [{name: []}]
            assert operation.get("security", []) == expected, (method, path)


def test_the_functions_behind_rds_proxy_are_pooled_and_the_proxy_sets_their_session_settings(packaged):
    from chalicelib.adapters.postgres import connection

    for name, function in functions(packaged).items():
        variables = function["Properties"]["Environment"]["Variables"]
        if "DB_HOST" in variables and variables["DB_HOST"] != "":
            # wherever DB_HOST names RDS Proxy (or the operator's pooler)
            assert variables["DB_POOLED"] == {"Fn::If": ["UsesDbProxy", "true", "false"]}, name
            assert variables["DB_HOST"]["Fn::If"][0] == "CreateDatabase", name
        else:
            assert "DB_POOLED" not in variables, name
    assert packaged["Conditions"]["UsesDbProxy"]["Fn::Or"][0] == {"Condition": "CreateDatabase"}
    stack = cfn_yaml.loads((INFRA / "stacks" / "database.yaml").read_text())
    pool = stack["Resources"]["ProxyTargets"]["Properties"]["ConnectionPoolConfigurationInfo"]
    assert pool["InitQuery"] == (f"SET statement_timeout = {connection.STATEMENT_TIMEOUT_MS}; "
                                 f"SET lock_timeout = {connection.LOCK_TIMEOUT_MS}; SET TimeZone = 'UTC'")
