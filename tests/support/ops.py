"""Helpers for the operations tests: run the ``sessionsync`` CLI as a real
process with the settings a test chose."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from chalicelib.config import Settings
from chalicelib.domain.keys import KeySet
from tests.support.constants import PROJECT_DIR


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes the CLI load ``settings``.

    Every setting the stage defaults could fill is given explicitly, so
    that `.chalice/config.json`'s local stage cannot point the command at
    the shared stack.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "DATABASE_", "DB_", "SESSION_", "PG", "SESSIONSYNC_"))}
    env.update({
        "REDIS_URL": settings.redis_url,
        "REDIS_CLUSTER": "true" if settings.redis_cluster else "false",
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        "AWS_DEFAULT_REGION": settings.aws_region,
        "SESSIONSYNC_API_KEYS": (settings.api_keys.to_json() if isinstance(settings.api_keys, KeySet)
                                 else ",".join(settings.api_keys)),
        "SESSIONSYNC_CHANNEL": settings.channel,
        "LOG_LEVEL": "WARNING",
    })
    # an empty value counts as unset for the settings loader, and keeps the
    # stage's value from filling in (apply_stage_environment uses setdefault)
    env["DATABASE_URL"] = settings.database_url or ""
    env["SESSION_QUEUE_URL"] = settings.queue_url or ""
    env["SESSION_QUEUE_NAME"] = settings.queue_name or ""
    env["SESSION_DLQ_URL"] = settings.dlq_url or ""
    env["SESSION_DLQ_NAME"] = settings.dlq_name or ""
    if settings.aws_endpoint_url:
        env["AWS_ENDPOINT_URL"] = settings.aws_endpoint_url
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> CliResult:
    """``sessionsync ARGS`` in a new interpreter; its exit code, output and duration."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "from sessionsync.cli import main; main()", *args],
                          env=env, cwd=PROJECT_DIR, capture_output=True, text=True, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def run_cli_on_terminal(*args: str, env: dict[str, str], timeout: float = 60) -> CliResult:
    """As ``run_cli``, with stderr on a pseudo-terminal, as an operator's
    (where progress shows); stdout is still read apart."""
    start = time.monotonic()
    master, slave = pty.openpty()
    with tempfile.TemporaryFile("w+") as out:
        try:
            proc = subprocess.Popen([sys.executable, "-c", "from sessionsync.cli import main; main()",
                                     *args], env=env, cwd=PROJECT_DIR, stdout=out, stderr=slave)
        finally:
            os.close(slave)
        err = bytearray()
        deadline = start + timeout
        try:
            while time.monotonic() < deadline:
                readable, _, _ = select.select([master], [], [], 0.1)
                chunk = b""
                if readable:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:  # EIO: the child closed its end
                        chunk = b""
                err += chunk
                if not chunk and proc.poll() is not None:
                    break
            else:
                proc.kill()
                raise TimeoutError(f"sessionsync {' '.join(args)} still running after {timeout}s")
            proc.wait(5)
        finally:
            os.close(master)
        out.seek(0)
        return CliResult(proc.returncode, out.read(), err.decode(errors="replace"),
                         time.monotonic() - start)
