"""infra/cloudformation/queues.yaml applied by CloudFormation on LocalStack:
the stack creates, and the queue it creates dead-letters a message after
five receives.

The shared LocalStack runs SQS and Secrets Manager only; this test starts a
LocalStack of its own (the same virtual environment, another port and
directory) with CloudFormation and CloudWatch, and stops it by PID.
"""
from __future__ import annotations

import json
import uuid

import pytest

from chalicelib.adapters import aws
from chalicelib.config import Settings
from tests.integration.deploy.utils import LocalStack, wait_for_deletion, wait_for_stack
from tests.support.constants import PROJECT_DIR

TEMPLATE = PROJECT_DIR / "infra" / "cloudformation" / "queues.yaml"




@pytest.fixture(scope="module")
def localstack_with_cloudformation(tmp_path_factory, aws_test_environment):
    server = LocalStack(tmp_path_factory.mktemp("localstack-cfn"), "cloudformation,sqs,cloudwatch")
    try:
        yield server.start()
    finally:
        server.stop()




def test_the_queue_template_creates_a_queue_that_dead_letters_after_five_receives(
        localstack_with_cloudformation):
    settings = Settings(aws_endpoint_url=localstack_with_cloudformation.url, aws_region="us-east-1")
    cfn = aws.client("cloudformation", settings, read_timeout=30)
    sqs = aws.client("sqs", settings)
    cloudwatch = aws.client("cloudwatch", settings)
    name = f"sessionsync-cfn-{uuid.uuid4().hex[:8]}"
    cfn.create_stack(StackName=name, TemplateBody=TEMPLATE.read_text(), Parameters=[
        {"ParameterKey": "QueueName", "ParameterValue": name},
        {"ParameterKey": "DeadLetterQueueName", "ParameterValue": f"{name}-dlq"}])
    try:
        stack = wait_for_stack(cfn, name)
        assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}

        attributes = sqs.get_queue_attributes(QueueUrl=outputs["QueueUrl"],
                                              AttributeNames=["All"])["Attributes"]
        assert attributes["VisibilityTimeout"] == "180"
        assert attributes["MaximumMessageSize"] == "1048576"
        redrive = json.loads(attributes["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == outputs["DeadLetterQueueArn"]
        assert int(redrive["maxReceiveCount"]) == 5
        alarms = {a["MetricName"]: a for a in cloudwatch.describe_alarms()["MetricAlarms"]
                  if a["AlarmName"].startswith(name)}
        assert set(alarms) == {"ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage"}
        assert alarms["ApproximateNumberOfMessagesVisible"]["Dimensions"] == [
            {"Name": "QueueName", "Value": f"{name}-dlq"}]

        # the redrive policy at work: five failed receives, then the DLQ
        sqs.send_message(QueueUrl=outputs["QueueUrl"], MessageBody='{"poison":true}')
        receives = 0
        for _ in range(10):
            reply = sqs.receive_message(QueueUrl=outputs["QueueUrl"], VisibilityTimeout=0,
                                        WaitTimeSeconds=0, MaxNumberOfMessages=1)
            if not reply.get("Messages"):
                break
            receives += 1
        assert receives == 5
        moved = sqs.receive_message(QueueUrl=outputs["DeadLetterQueueUrl"], WaitTimeSeconds=1)
        assert [m["Body"] for m in moved["Messages"]] == ['{"poison":true}']
    finally:
        cfn.delete_stack(StackName=name)
        wait_for_deletion(cfn, name)
