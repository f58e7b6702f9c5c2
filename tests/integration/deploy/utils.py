"""Helpers of the deploy tests: a LocalStack of a test's own, with the
services the shared one does not run (CloudFormation and friends)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.constants import PROJECT_DIR
from tests.support.servers import free_port, wait_for


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


def wait_for_deletion(cfn, name: str, timeout: float = 120) -> None:
    from botocore.exceptions import ClientError

    def gone() -> bool:
        try:
            return wait_for_stack(cfn, name, timeout)["StackStatus"] == "DELETE_COMPLETE"
        except ClientError as exc:  # a deleted stack is no longer described by name
            return "does not exist" in str(exc)
    wait_for(gone, timeout, f"stack {name} deleted")


def wait_for_stack(cfn, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return stack
        if time.monotonic() > deadline:
            raise AssertionError(f"stack {name} still {stack['StackStatus']} after {timeout}s")
        time.sleep(0.2)
