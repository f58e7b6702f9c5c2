"""A throwaway redis-server of the benchmark's own.

The scale section loads a million sessions and the memory section reads
MEMORY USAGE of a known keyspace: neither may touch the machine's shared
Redis.  This starts ``redis-server`` on a free loopback port with
persistence off and a temporary working directory, and stops exactly that
process (by its PID) afterwards; a bench killed before it could is
followed by its servers (``harness.child_setup``).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

import redis

from sessionsync.bench.harness import child_setup, free_port, stop_process


class RedisServerUnavailable(RuntimeError):
    """No redis-server binary, or it did not come up."""


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class ThrowawayRedis:
    """``with ThrowawayRedis() as server: server.url`` -- a private redis-server."""

    def __init__(self, *extra_args: str, cpus: frozenset[int] | None = None,
                 start_timeout: float = 10.0) -> None:
        """``cpus``: pin the server to these CPUs (see ``context.Placement``)."""
        self.extra_args = extra_args
        self.cpus = cpus
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._workdir: str | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RedisServerUnavailable("server not started")
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis.from_url(self.url, **options)

    def start(self) -> ThrowawayRedis:
        binary = redis_server_binary()
        if binary is None:
            raise RedisServerUnavailable("redis-server is not on PATH")
        self._workdir = tempfile.mkdtemp(prefix="sessionsync-bench-redis-")
        last_error: Exception | None = None
        for _ in range(3):  # another process may grab the port between probe and bind
            self.port = free_port()
            self.proc = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                 "--appendonly", "no", "--dir", self._workdir, "--daemonize", "no",
                 *self.extra_args],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, preexec_fn=child_setup())
            try:
                if self.cpus:
                    os.sched_setaffinity(self.proc.pid, self.cpus)
                self._wait_ready()
                return self
            except RedisServerUnavailable as exc:
                last_error = exc
                self._stop_process()
        self.stop()
        raise RedisServerUnavailable(f"redis-server did not start: {last_error}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        assert self.port is not None  # chosen by start()
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5,
                            socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RedisServerUnavailable(f"exited with {self.proc.returncode}")
                try:
                    if probe.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.02)
            raise RedisServerUnavailable(f"no answer on port {self.port} in {self.start_timeout}s")
        finally:
            probe.close()

    def _stop_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)

    def stop(self) -> None:
        self._stop_process()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> ThrowawayRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ThrowawayRedisCluster:
    """``with ThrowawayRedisCluster(3) as cluster: cluster.url`` -- a private
    Redis Cluster of ``masters`` nodes (no replicas), joined by redis-cli.

    Each node is a ``ThrowawayRedis`` (free port, no persistence, its own
    directory for nodes.conf), stopped by its PID afterwards.  The node
    timeout is long: on a loaded machine a node starved of CPU for a few
    seconds must not be voted failed in the middle of a measurement.
    """

    def __init__(self, masters: int = 3, *, cpus: frozenset[int] | None = None,
                 start_timeout: float = 30.0) -> None:
        self.nodes = [ThrowawayRedis("--cluster-enabled", "yes", "--cluster-config-file",
                                     "nodes.conf", "--cluster-node-timeout", "15000",
                                     cpus=cpus)
                      for _ in range(masters)]
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        """The seed URL a cluster client starts from (no database number)."""
        return self.nodes[0].url.rsplit("/", 1)[0]

    def start(self) -> ThrowawayRedisCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerUnavailable("redis-cli is not on PATH (it joins the cluster)")
        try:
            for node in self.nodes:
                node.start()
            subprocess.run([cli, "--cluster", "create",
                            *(f"127.0.0.1:{node.port}" for node in self.nodes),
                            "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=self.start_timeout)
            self._wait_ok()
        except (OSError, subprocess.SubprocessError, RedisServerUnavailable) as exc:
            self.stop()
            raise RedisServerUnavailable(f"redis cluster did not form: {exc}") from exc
        return self

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        clients = [node.client(socket_timeout=2) for node in self.nodes]
        try:
            while time.monotonic() < deadline:
                if all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")
                       for c in clients):
                    return
                time.sleep(0.05)
            raise RedisServerUnavailable(f"cluster_state not ok in {self.start_timeout}s")
        finally:
            for c in clients:
                c.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> ThrowawayRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
