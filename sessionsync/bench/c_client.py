"""The C client's floor: redis-benchmark sending one command, one at a time.

redis-benchmark ships with redis-server.  With ``-c 1`` it sends the command
sequentially on one connection, as a warm Lambda does, and reports the
latency percentiles (``--csv``: milliseconds with three decimals, so the
figures are whole microseconds).  Any command with its arguments can be
given (``EVALSHA <sha> <numkeys> <keys...> <args...>``), so the floor of a
script call is the same script with the same keys and arguments.
"""
from __future__ import annotations

import csv
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit


class CClientUnavailable(RuntimeError):
    """No redis-benchmark, or a Redis it cannot reach (TLS)."""


def redis_benchmark_binary() -> str | None:
    return shutil.which("redis-benchmark")


def _connection_args(redis_url: str) -> list[str]:
    url = urlsplit(redis_url)
    if url.scheme != "redis":
        raise CClientUnavailable(f"redis-benchmark here speaks plain TCP, not {url.scheme}://")
    args = ["-h", url.hostname or "127.0.0.1", "-p", str(url.port or 6379)]
    db = url.path.strip("/")
    if db:
        args += ["--dbnum", db]
    if url.username:
        args += ["--user", unquote(url.username)]
    if url.password:
        args += ["-a", unquote(url.password)]
    return args


def latency(redis_url: str, command: Sequence[str | bytes | int], requests: int,
            timeout: float = 120.0) -> dict[str, Any]:
    """redis-benchmark's latency for ``command`` sent ``requests`` times on
    one connection: rps, avg/min/p50/p95/p99/max in microseconds."""
    binary = redis_benchmark_binary()
    if binary is None:
        raise CClientUnavailable("redis-benchmark is not on PATH")
    argv = [binary, *_connection_args(redis_url), "-c", "1", "-n", str(requests), "--csv",
            *(a.decode() if isinstance(a, bytes) else str(a) for a in command)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or len(lines) != 2:
        raise CClientUnavailable(f"redis-benchmark failed ({done.returncode}): "
                                 f"{(done.stderr or done.stdout)[-300:]}")
    # the first column names the test by the command line, unescaped (a
    # JSON argument brings its own quotes and commas): the figures are the
    # last columns
    header = next(csv.reader([lines[0]]))
    figures = lines[1].rsplit(",", len(header) - 1)[1:]
    row = {name: value.strip('"') for name, value in zip(header[1:], figures, strict=True)}
    out: dict[str, Any] = {"requests": requests, "rps": float(row["rps"])}
    for name in ("avg", "min", "p50", "p95", "p99", "max"):
        out[f"{name}_us"] = round(float(row[f"{name}_latency_ms"]) * 1000, 1)
    return out
