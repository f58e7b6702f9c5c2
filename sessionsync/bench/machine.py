"""What the figures were measured on: hardware, versions, commit, load."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from sessionsync.project import project_dir

PACKAGES = ("redis", "hiredis", "chalice", "boto3", "botocore", "psycopg", "psycopg-binary",
            "aws-lambda-powertools", "click", "matplotlib")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _cpuidle() -> dict[str, str] | None:
    """The idle driver, and guest halt-polling if the VM has it: it decides
    whether a loopback round trip wakes a polling CPU (fast) or a halted
    one (slower), so it explains two latency regimes."""
    base = Path("/sys/devices/system/cpu/cpuidle")
    found: dict[str, str] = {}
    for name in ("current_driver", "current_governor"):
        try:
            found[name] = (base / name).read_text().strip()
        except OSError:
            pass
    for param in Path("/sys/module/haltpoll/parameters").glob("*"):
        try:
            found[f"haltpoll.{param.name}"] = param.read_text().strip()
        except OSError:
            pass
    return found or None


def _run(*args: str) -> str | None:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=project_dir())
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_info() -> dict[str, Any]:
    commit = _run("git", "rev-parse", "HEAD")
    status = _run("git", "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe(redis_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Machine, interpreter, package versions, git commit, current load."""
    server = shutil.which("redis-server")
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": _memory_gb(),
        "cpuidle": _cpuidle(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "redis_server_binary": _run(server, "--version") if server else None,
        "redis_server": redis_info,
        "packages": _versions(),
        "git": git_info(),
        "load_average_at_start": load_average(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
