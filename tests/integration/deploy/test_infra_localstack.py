"""infra/cloudformation/queues.yaml applied by CloudFormation on LocalStack:
the stack creates, and the queue it creates dead-letters a message after
five receives.

The shared LocalStack runs SQS and Secrets Manager only; this test starts a
LocalStack of its own (the same virtual environment, another port and
directory) with CloudFormation and CloudWatch, and stops it by PID.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from chalicelib.adapters import aws
from chalicelib.config import Settings
from tests.support.constants import PROJECT_DIR
from tests.support.servers import free_port, wait_for

TEMPLATE = PROJECT_DIR / "infra" / "cloudformation" / "queues.yaml"


class LocalStack:
    """A LocalStack process of the test's own on 127.0.0.1:<free port>."""

    def __init__(self, workdir: Path, services: str) -> None:
        self.venv = Path(os.environ.get("LOCALSTACK_VENV", PROJECT_DIR / ".localstack-venv"))
        self.port = free_port()
        self.workdir = workdir
        self.services = services
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalStack:
        python = self.venv / "bin" / "python"
        if not python.exists():
            pytest.fail(f"LocalStack's virtual environment is missing at {self.venv} "
                        "(scripts/localstack.sh creates it)")
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GATEWAY_LISTEN": f"127.0.0.1:{self.port}", "SERVICES": self.services,
               "DNS_ADDRESS": "0", "SQS_ENDPOINT_STRATEGY": "path",
               "LOCALSTACK_HOST": f"127.0.0.1:{self.port}", "DISABLE_EVENTS": "1",
               "SKIP_SSL_CERT_DOWNLOAD": "1", "FILESYSTEM_ROOT": str(self.workdir / "fs"),
               "TMPDIR": str(self.workdir / "tmp")}
        log = (self.workdir / "localstack.log").open("wb")
        # its own session: stop() signals this process group and nothing else
        self.proc = subprocess.Popen([str(python), "-m", "localstack.runtime.main"], env=env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def ready() -> bool:
            import urllib.request
            assert self.proc is not None and self.proc.poll() is None, "LocalStack exited"
            with urllib.request.urlopen(f"{self.url}/_localstack/health", timeout=1) as reply:
                return json.load(reply)["services"].get("cloudformation") in ("available", "running")
        try:
            wait_for(ready, 180, f"LocalStack on {self.port}", interval=0.2)  # a busy machine
        except TimeoutError:
            self.stop()
            tail = (self.workdir / "localstack.log").read_text(errors="replace")[-2000:]
            pytest.fail(f"LocalStack did not start: {tail}")
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture(scope="module")
def localstack_with_cloudformation(tmp_path_factory, aws_test_environment):
    server = LocalStack(tmp_path_factory.mktemp("localstack-cfn"), "cloudformation,sqs,cloudwatch")
    try:
        yield server.start()
    finally:
        server.stop()


def wait_for_stack(cfn, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return stack
        if time.monotonic() > deadline:
            raise AssertionError(f"stack {name} still {stack['StackStatus']} after {timeout}s")
        time.sleep(0.2)


def wait_for_deletion(cfn, name: str, timeout: float = 120) -> None:
    from botocore.exceptions import ClientError

    def gone() -> bool:
        try:
            return wait_for_stack(cfn, name, timeout)["StackStatus"] == "DELETE_COMPLETE"
        except ClientError as exc:  # a deleted stack is no longer described by name
            return "does not exist" in str(exc)
    wait_for(gone, timeout, f"stack {name} deleted")


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
