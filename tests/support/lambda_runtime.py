"""A stand-in for the Lambda runtime: each function of the deployment package
in a process of its own, from the unpacked zip, in a bare interpreter.

What it keeps of Lambda's execution environment:

* the code is the unpacked ``deployment.zip`` (read-only, as /var/task is:
  ``-B``, no bytecode written, a module without its .pyc compiles each time),
  found first on ``sys.path``; what the runtime provides (boto3 and its
  dependencies, /var/runtime) on a path of its own after it; then the
  standard library, and nothing else: the interpreter runs with ``-I -S``
  (no site-packages, no user site, no PYTHON* variables, no script
  directory), so nothing of the test's virtualenv can be imported;
* the handler named by the function's ``Handler`` in the packaged
  template, imported once (the cold start, timed); then one invocation at
  a time, each with a context object like the runtime's (its request id,
  deadline, and ``memory_limit_in_mb`` a string, as the runtime gives it);
* the function's ``Environment`` from the template (resolved by
  ``resolve``), plus the variables the runtime sets (AWS_REGION,
  AWS_LAMBDA_FUNCTION_NAME, _HANDLER, LAMBDA_TASK_ROOT, TZ...);
* an error escaping the handler is the invocation's error (errorType,
  errorMessage, stackTrace), a result that is not JSON a marshalling error,
  and the process lives on, warm, as Lambda's does.

The process is long-lived, so a test can freeze it between invocations
(SIGSTOP, as Lambda freezes an idle environment), act on its connections
meanwhile (``tcp_ports``: which ports its sockets use), and thaw it.
Requests and replies travel on two pipes of their own (JSON lines); the
function's stdout and stderr (its logs) go to a file.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.packaging import interpreter

ACCOUNT = "123456789012"
REGION = "us-east-1"

# Runs in the bare interpreter: the standard library only.  argv: the task
# root, the runtime's directory, the request pipe, the reply pipe.
BOOTSTRAP = r"""
import sys
task_root, runtime_dir, requests_fd, replies_fd = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
# Lambda's order: /var/task, (layers), /var/runtime, then the standard library
sys.path[:0] = [task_root, runtime_dir]
import importlib, json, os, time, traceback
os.chdir(task_root)
requests, replies = os.fdopen(requests_fd, "r"), os.fdopen(replies_fd, "w")

def reply(message):
    replies.write(json.dumps(message) + "\n")
    replies.flush()

def loaded():
    modules = {}
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin:
            cached = getattr(module, "__cached__", None)
            modules[name] = [origin, bool(cached) and os.path.exists(cached)]
    return modules

class LambdaContext:
    # what the runtime's context offers (awslambdaric's LambdaContext)
    def __init__(self, request):
        self.aws_request_id = request["request_id"]
        self.invoked_function_arn = request["function_arn"]
        self.function_name = os.environ["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = os.environ["AWS_LAMBDA_FUNCTION_VERSION"]
        self.memory_limit_in_mb = os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]
        self.log_group_name = os.environ["AWS_LAMBDA_LOG_GROUP_NAME"]
        self.log_stream_name = os.environ["AWS_LAMBDA_LOG_STREAM_NAME"]
        self.identity = None
        self.client_context = None
        self._deadline_ms = request["deadline_ms"]
    def get_remaining_time_in_millis(self):
        return max(0, self._deadline_ms - int(time.time() * 1000))

module_name, _, function_name = os.environ["_HANDLER"].rpartition(".")
started = time.perf_counter()
try:
    handler = getattr(importlib.import_module(module_name), function_name)
except Exception as exc:
    reply({"init_error": {"errorType": type(exc).__name__, "errorMessage": str(exc),
                          "stackTrace": traceback.format_exc().splitlines()}})
    sys.exit(1)
reply({"init_ms": (time.perf_counter() - started) * 1000, "sys_path": sys.path, "modules": loaded(),
       "executable": sys.executable, "flags": {"isolated": sys.flags.isolated,
                                               "no_site": sys.flags.no_site}})
for line in requests:
    request = json.loads(line)
    if request.get("probe"):
        reply({"modules": loaded()})
        continue
    os.environ["_X_AMZN_TRACE_ID"] = request["trace_id"]
    started = time.perf_counter()
    try:
        message = {"result": handler(request["event"], LambdaContext(request))}
        try:
            json.dumps(message)
        except (TypeError, ValueError) as exc:
            message = {"error": {"errorType": "Runtime.MarshalError", "errorMessage": str(exc)}}
    except Exception as exc:
        message = {"error": {"errorType": type(exc).__name__, "errorMessage": str(exc),
                             "stackTrace": traceback.format_exc().splitlines()}}
    message["duration_ms"] = (time.perf_counter() - started) * 1000
    reply(message)
"""


class FunctionFailed(AssertionError):
    """The function process died, did not start, or did not answer in time."""


@dataclass
class Invocation:
    """One invocation's outcome: ``result`` or ``error`` (errorType,
    errorMessage, stackTrace), as Lambda reports it."""

    result: Any = None
    error: dict[str, Any] | None = None
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class FunctionSpec:
    """A function of the packaged template."""

    logical_id: str
    handler: str
    timeout: int
    memory: int
    environment: dict[str, Any]
    runtime: str  # python3.13: the interpreter it runs on


def template_functions(template: dict[str, Any]) -> dict[str, FunctionSpec]:
    """logical id -> FunctionSpec of every AWS::Serverless::Function (its
    Runtime as the template's parameters default it: the packaged template
    allows only the runtime the package was built for)."""
    defaults = {name: spec.get("Default") for name, spec in template.get("Parameters", {}).items()}
    found = {}
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        found[logical_id] = FunctionSpec(logical_id, props["Handler"], int(props["Timeout"]),
                                         int(props["MemorySize"]),
                                         dict(props.get("Environment", {}).get("Variables", {})),
                                         str(resolve(props["Runtime"], template, defaults)))
    return found


class Unresolved(KeyError):
    """A Ref or GetAtt the stand-ins do not name."""


def resolve(value: Any, template: dict[str, Any], refs: dict[str, str]) -> Any:
    """``value`` with CloudFormation's intrinsic functions applied, as the
    stack would resolve it: Ref and Fn::GetAtt from ``refs`` (the
    parameters' values, and stand-ins for resources: "SessionQueue",
    "DatabaseStack.Outputs.SecretArn"...), Fn::If on the template's
    Conditions, Fn::Sub, Fn::Equals/Not/And/Or."""
    def condition(name: str) -> bool:
        return bool(resolve(template["Conditions"][name], template, refs))

    if isinstance(value, list):
        return [resolve(v, template, refs) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        return {k: resolve(v, template, refs) for k, v in value.items()}
    (function, argument), = value.items()
    if function == "Ref":
        if argument not in refs:
            raise Unresolved(argument)
        return refs[argument]
    if function == "Fn::GetAtt":
        name = ".".join(argument) if isinstance(argument, list) else argument
        if name not in refs:
            raise Unresolved(name)
        return refs[name]
    if function == "Condition":
        return condition(argument)
    if function == "Fn::If":
        name, when_true, when_false = argument
        return resolve(when_true if condition(name) else when_false, template, refs)
    if function == "Fn::Equals":
        left, right = (resolve(a, template, refs) for a in argument)
        return left == right
    if function == "Fn::Not":
        return not resolve(argument[0], template, refs)
    if function == "Fn::And":
        return all(resolve(a, template, refs) for a in argument)
    if function == "Fn::Or":
        return any(resolve(a, template, refs) for a in argument)
    if function == "Fn::Sub":
        import re
        text = argument if isinstance(argument, str) else argument[0]

        def substitute(match: re.Match) -> str:
            name = match.group(1)
            if name not in refs:
                raise Unresolved(name)
            return str(refs[name])
        return re.sub(r"\$\{([^}]+)\}", substitute, text)
    return {function: resolve(argument, template, refs)}


def function_environment(spec: FunctionSpec, template: dict[str, Any],
                         refs: dict[str, str]) -> dict[str, str]:
    """The function's environment variables as the stack would set them."""
    return {name: str(resolve(value, template, refs)) for name, value in spec.environment.items()}


class LambdaFunction:
    """One function's execution environment: a process that imports the
    handler once and serves invocations until stopped."""

    def __init__(self, spec: FunctionSpec, task_root: Path, runtime_dir: Path, environment: dict[str, str],
                 log_path: Path, *, stack_name: str = "sessionsync-zip") -> None:
        self.spec = spec
        self.task_root = task_root
        self.runtime_dir = runtime_dir
        self.log_path = log_path
        self.name = f"{stack_name}-{spec.logical_id}"
        self.arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.name}"
        self.environment = {
            # what the runtime sets (the function's own variables come after and may not override these)
            "PATH": "/usr/local/bin:/usr/bin/:/bin", "LANG": "en_US.UTF-8", "TZ": ":UTC",
            "LAMBDA_TASK_ROOT": str(task_root), "LAMBDA_RUNTIME_DIR": str(runtime_dir),
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}", "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_LAMBDA_FUNCTION_NAME": self.name, "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"2026/01/01/[$LATEST]{uuid.uuid4().hex}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            # the execution role's credentials (LocalStack takes any)
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_SESSION_TOKEN": "test",
            "_HANDLER": spec.handler,
            **environment,
        }
        self.proc: subprocess.Popen | None = None
        self.init: dict[str, Any] = {}
        self._requests: Any = None
        self._replies: Any = None
        self._frozen = False

    # -- lifecycle ------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> dict[str, Any]:
        """Start the process and import the handler (the cold start);
        returns the init report (init_ms, sys_path, modules)."""
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        # the runtime's interpreter, not this test's: AssertionError if the machine has none
        python = interpreter(self.spec.runtime).executable
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                # -B: /var/task is read-only, a module without its .pyc is compiled on every start
                [python, "-I", "-S", "-B", "-c", BOOTSTRAP, str(self.task_root), str(self.runtime_dir),
                 str(request_read), str(reply_write)],
                env=self.environment, cwd=self.task_root, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, pass_fds=(request_read, reply_write), start_new_session=True)
        finally:
            log.close()
            os.close(request_read)
            os.close(reply_write)
        self._requests = os.fdopen(request_write, "w")
        self._replies = os.fdopen(reply_read, "r")
        message = self._read(timeout, "its cold start")
        if "init_error" in message:
            self.stop()
            raise FunctionFailed(f"{self.name} failed to start: {message['init_error']}\n{self.logs()}")
        self.init = message
        return message

    def stop(self) -> None:
        """End the process (by its PID, thawed first if frozen)."""
        proc = self.proc
        if proc is None:
            return
        if self._frozen:
            self.thaw()
        for stream in (self._requests, self._replies):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.proc = None

    def freeze(self) -> None:
        """Stop the process as Lambda freezes an idle execution environment."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self._frozen = False

    # -- invocations ------------------------------------------------------------

    def invoke(self, event: Any, *, timeout: float | None = None) -> Invocation:
        """One invocation with ``event``; a wait past the function's own
        timeout (plus a margin for this busy machine) fails the test."""
        assert self.proc is not None, "start() first"
        budget = self.spec.timeout if timeout is None else timeout
        now_ms = int(time.time() * 1000)
        request = {"event": event, "request_id": str(uuid.uuid4()), "function_arn": self.arn,
                   "deadline_ms": now_ms + budget * 1000,
                   "trace_id": f"Root=1-{now_ms // 1000:08x}-{uuid.uuid4().hex[:24]};Sampled=0"}
        self._send(request)
        message = self._read(budget + 30, "an invocation")
        return Invocation(message.get("result"), message.get("error"), message.get("duration_ms", 0.0))

    def loaded_modules(self) -> dict[str, tuple[str, bool]]:
        """name -> (file, whether its bytecode file exists) of every module
        the process has imported so far."""
        self._send({"probe": True})
        modules = self._read(30, "a probe")["modules"]
        return {name: (origin, cached) for name, (origin, cached) in modules.items()}

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._requests.write(json.dumps(message) + "\n")
            self._requests.flush()
        except BrokenPipeError:
            raise FunctionFailed(f"{self.name} exited ({self._exit()})\n{self.logs()}") from None

    def _read(self, timeout: float, what: str) -> dict[str, Any]:
        ready, _, _ = select.select([self._replies], [], [], timeout)
        line = self._replies.readline() if ready else ""
        if not line:
            state = "did not answer" if not ready else f"exited ({self._exit()})"
            raise FunctionFailed(f"{self.name} {state} during {what} (within {timeout:.0f} s)\n{self.logs()}")
        return json.loads(line)

    def _exit(self) -> str:
        assert self.proc is not None
        try:
            return f"status {self.proc.wait(5)}"
        except subprocess.TimeoutExpired:
            return "still running"

    # -- inspection ------------------------------------------------------------

    def logs(self, tail: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail:]

    def tcp_connections(self) -> set[tuple[int, int]]:
        """(local port, remote port) of each of the process's established
        TCP connections (from /proc: its sockets' inodes, looked up in its
        network namespace's tables).  One the server closed is in
        CLOSE_WAIT until the process notices: not established."""
        assert self.proc is not None
        pid = self.proc.pid
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed meanwhile
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
        found = set()
        for table in ("tcp", "tcp6"):
            path = Path(f"/proc/{pid}/net/{table}")
            if not path.exists():
                continue
            for row in path.read_text().splitlines()[1:]:
                fields = row.split()
                if fields[9] in inodes and fields[3] == "01":  # ESTABLISHED
                    found.add((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)))
        return found


class EventSourceMapping:
    """An SQS event source mapping with ReportBatchItemFailures, as Lambda
    runs one: receive a batch, invoke the function with it (a Lambda SQS
    event: sessionsync.worker.lambda_record), delete the records the answer
    does not list in ``batchItemFailures``; a failed invocation deletes
    nothing (they come back after the visibility timeout)."""

    def __init__(self, sqs: Any, queue_url: str, *, batch_size: int = 10,
                 visibility_timeout: int = 30) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.batch_size = batch_size
        self.visibility_timeout = visibility_timeout
        self.queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]

    def receive(self, wait_seconds: int = 1) -> list[dict[str, Any]]:
        from sessionsync.worker import lambda_record
        reply = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch_size, WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=self.visibility_timeout, MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"])
        return [lambda_record(m, queue_arn=self.queue_arn, region=self.sqs.meta.region_name)
                for m in reply.get("Messages") or []]

    def deliver(self, function: LambdaFunction, records: list[dict[str, Any]]) -> Invocation:
        invocation = function.invoke({"Records": records})
        if invocation.ok:
            failed = {item["itemIdentifier"] for item in invocation.result.get("batchItemFailures") or []}
            done = [r for r in records if r["messageId"] not in failed]
            for start in range(0, len(done), 10):
                self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": r["receiptHandle"]}
                    for i, r in enumerate(done[start:start + 10])])
        return invocation

    def drain(self, function: LambdaFunction, *, timeout: float = 30.0) -> list[Invocation]:
        """Deliver batches until the queue answers none (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        invocations = []
        while time.monotonic() < deadline:
            records = self.receive()
            if not records:
                return invocations
            invocations.append(self.deliver(function, records))
        raise AssertionError(f"the queue still had messages after {timeout:.0f} s")
