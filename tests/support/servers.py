"""Throwaway servers for tests that must stop or break a dependency.

Each starts its own process on a free loopback port and stops it by PID in a
finalizer, so the machine's shared Redis and PostgreSQL are never touched.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot


def free_port() -> int:
    """A free loopback port below 45000 (a cluster node also needs port+10000)."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        with socket.socket() as sock, socket.socket() as bus:
            try:
                sock.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port found")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready within {timeout}s")


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a process this test started: SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


@contextlib.contextmanager
def running(server: Any) -> Iterator[Any]:
    """Start ``server`` (anything with start() and stop()); stop it on exit,
    and also when it failed half-way through starting."""
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def serve_process(env: dict[str, str], workdir: Path, *args: str) -> Iterator[tuple[int, Path]]:
    """``sessionsync serve --port <free> *args`` in its own process.

    Yields (port, log file) once /health answers at all (a 503 while a
    dependency warms up counts); stops the process by PID on exit.
    """
    with serve_subprocess(env, workdir, *args) as (_, port, log):
        yield port, log


@contextlib.contextmanager
def serve_subprocess(env: dict[str, str], workdir: Path,
                     *args: str) -> Iterator[tuple[subprocess.Popen, int, Path]]:
    """``serve_process``, yielding the process too (its PID, for /proc)."""
    executable = Path(sys.executable).parent / "sessionsync"
    if not executable.exists():
        raise FileNotFoundError(f"{executable} missing: install the project (pip install -e .)")
    port = free_port()
    log = workdir / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(executable), "serve", "--port", str(port), *args],
                                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"sessionsync serve exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
        except urllib.error.HTTPError:
            pass  # an answer all the same
        return True

    try:
        try:
            wait_for(answers, 30, f"sessionsync serve on {port}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}:\n{log.read_text()[-3000:]}") from None
        yield proc, port, log
    finally:
        stop_process(proc)


class RedisServer:
    """A redis-server of the test's own on 127.0.0.1:<port>."""

    def __init__(self, workdir: Path, port: int | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(lambda: redis.Redis(port=self.port, socket_timeout=0.2).ping(), 10,
                 f"redis-server on {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server keeps its port but answers nothing (a hang)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


class RedisClusterServers:
    """A real 3-master Redis Cluster on loopback, joined by redis-cli."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.nodes = [RedisServer(workdir / f"node{i}", None, "--cluster-enabled", "yes",
                                  "--cluster-config-file", f"nodes-{i}.conf",
                                  "--cluster-node-timeout", "2000")
                      for i in range(masters)]

    @property
    def url(self) -> str:
        return self.nodes[0].url.rsplit("/", 1)[0]

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(["redis-cli", "--cluster", "create", *addresses,
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, timeout=60)

        def ready() -> bool:
            return all(b"cluster_state:ok" in redis.Redis(port=n.port).execute_command(
                "CLUSTER", "INFO") for n in self.nodes)
        wait_for(ready, 30, "redis cluster")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def postgres_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (initdb, pg_ctl) on this machine."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise FileNotFoundError(f"{name} not found: install PostgreSQL's server binaries")
    return str(candidates[-1])


class PostgresServer:
    """A PostgreSQL cluster of the test's own (initdb + pg_ctl) on a free
    loopback port, in a temporary directory; the test may stop and start it.

    As root, initdb refuses to run: the cluster then belongs to the
    ``postgres`` user and the commands run as that user (runuser).  The
    directory is created outside pytest's tmp_path, whose parents are private
    to root.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir: Path | None = None

    @property
    def datadir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = list(args)
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=timeout)

    def init(self) -> PostgresServer:
        self.workdir = Path(tempfile.mkdtemp(prefix="sessionsync-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        # --no-sync and fsync=off: a throwaway cluster, stopped cleanly
        self._run(postgres_bin("initdb"), "-D", str(self.datadir), "-U", "postgres",
                  "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C")
        return self

    def start(self) -> PostgresServer:
        if self.workdir is None:
            self.init()
        options = (f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=30")
        self._run(postgres_bin("pg_ctl"), "-D", str(self.datadir), "-l",
                  str(self.workdir / "server.log"), "-o", options, "-w", "-t", "30", "start")
        return self

    def stop(self) -> None:
        """Fast shutdown: sessions get 57P01 admin_shutdown, as in a restart."""
        if self.workdir is not None and (self.datadir / "postmaster.pid").exists():
            self._run(postgres_bin("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w",
                      "-t", "30", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None


class PgBouncer:
    """PgBouncer of the test's own in transaction pooling mode, on a free
    loopback port, in front of a PostgreSQL server: a stand-in for RDS
    Proxy, which multiplexes clients' transactions over a few server
    connections the same way (a client's session state does not follow it
    from one transaction to the next).

    ``pool_size`` server connections per database and user: with fewer
    than the clients, their transactions share server connections, so what
    one leaves on a connection (a prepared statement, a SET, a session
    advisory lock) is met by another.  ``connect_query`` runs on each new
    server connection (RDS Proxy's InitQuery).  Stopped by its PID.  As
    root, it runs as ``postgres`` (PgBouncer refuses to run as root).
    """

    def __init__(self, target_port: int = 5432, *, pool_size: int = 2, connect_query: str = "",
                 target_host: str = "127.0.0.1", target_user: str = "postgres") -> None:
        self.port = free_port()
        self.target = (target_host, target_port, target_user)
        self.pool_size = pool_size
        self.connect_query = connect_query
        self.workdir: Path | None = None
        self.proc: subprocess.Popen | None = None

    def dsn(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> PgBouncer:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise FileNotFoundError("pgbouncer is not installed (scripts/services.sh installs it: "
                                    "apt-get install pgbouncer)")
        self.workdir = Path(tempfile.mkdtemp(prefix="sessionsync-pgbouncer-"))
        host, port, user = self.target
        query = f" connect_query='{self.connect_query}'" if self.connect_query else ""
        (self.workdir / "pgbouncer.ini").write_text(f"""[databases]
* = host={host} port={port} user={user}{query}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = any
pool_mode = transaction
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 200
server_reset_query =
logfile = {self.workdir / "pgbouncer.log"}
pidfile =
""")
        command = [binary, str(self.workdir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
            shutil.chown(self.workdir / "pgbouncer.ini", "postgres", "postgres")
            command = [binary, "-u", "postgres", str(self.workdir / "pgbouncer.ini")]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        wait_for(answers, 20, f"pgbouncer on {self.port}")
        return self

    def log(self) -> str:
        path = self.workdir / "pgbouncer.log" if self.workdir else None
        return path.read_text(errors="replace")[-3000:] if path and path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


class TcpProxy:
    """A loopback TCP proxy in front of a real server, for failures that a
    stopped server cannot show: ``freeze()`` stops forwarding (the server
    looks hung: connected, silent), ``cut_after_request()`` lets the next
    request through and then resets the client's connection before the reply
    reaches it (the command ran; the caller cannot know), ``retarget(port)``
    sends new connections to another server while the open ones stay where
    they are (a DNS name that moved), ``reply_delay`` holds every reply back
    that many seconds (a slow network: each round trip takes at least that);
    ``cut_after_request(containing=...)`` waits for a request holding one of
    those bytes (a script's SHA) and cuts that request's reply only."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._frozen = threading.Event()
        self._cut = threading.Event()
        self._cut_on: tuple[bytes, ...] = ()
        self._cut_lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self.reply_delay = 0.0
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def cut_after_request(self, containing: Sequence[bytes] = ()) -> None:
        if containing:
            with self._cut_lock:
                self._cut_on = tuple(containing)
            return
        self._cut.set()

    def uncut(self) -> None:
        """Disarm a cut that no request took."""
        self._cut.clear()
        with self._cut_lock:
            self._cut_on = ()

    def _take_cut(self, request: bytes) -> bool:
        """Whether ``request`` is the one a ``cut_after_request(containing=...)`` waits for."""
        with self._cut_lock:
            if self._cut_on and any(pattern in request for pattern in self._cut_on):
                self._cut_on = ()
                return True
        return False

    def retarget(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)

    def sever(self) -> None:
        """Reset every open connection (the server went away); new ones still
        go to the target, so ``retarget`` to a dead port first for an outage."""
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()  # the target is down: refuse this one, keep listening
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            # this connection's next reply is cut (cut_after_request(containing=...))
            cut_reply = threading.Event()
            threading.Thread(target=self._pump, args=(client, upstream, False, cut_reply),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True, cut_reply),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, is_reply: bool,
              cut_reply: threading.Event) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                while self._frozen.is_set() and not self._closed.is_set():
                    time.sleep(0.02)
                if is_reply and self.reply_delay:
                    time.sleep(self.reply_delay)
                if not is_reply and self._take_cut(data):
                    cut_reply.set()  # before the request goes on: its reply comes after
                if is_reply and (cut_reply.is_set() or self._cut.is_set()):
                    if not cut_reply.is_set():
                        self._cut.clear()
                    # RST, not FIN: the client sees its connection reset
                    sink.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    if cut_reply.is_set():
                        # wake the request pump blocked in recv() on this
                        # socket, or close() waits for it: the client would
                        # see its timeout instead of the reset, each time
                        with contextlib.suppress(OSError):
                            sink.shutdown(socket.SHUT_RD)
                    sink.close()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class ReplicatedRedis:
    """A real primary and an asynchronous replica (two RedisServers) behind a
    TcpProxy that stands in for the primary endpoint's DNS name, as on a
    non-cluster ElastiCache replication group.

    ``failover()`` promotes the replica, demotes the old primary to a replica
    of the new one (so it answers READONLY to writes, as a demoted node does)
    and points the proxy at the new primary for NEW connections only: the open
    ones stay attached to the old node, as after a DNS switch.
    ``stop_replication()`` first cuts the replica's link, so what is written
    afterwards exists only on the primary and is lost by the next failover, as
    an asynchronous replica can lose its primary's last writes.
    """

    def __init__(self, workdir: Path) -> None:
        # a primary starts a full sync at once, not after waiting for more replicas
        self.nodes = [RedisServer(workdir / name, None, "--repl-diskless-sync-delay", "0")
                      for name in ("a", "b")]
        self.primary, self.replica = self.nodes
        self.proxy: TcpProxy | None = None
        self.replicating = False
        self.failovers = 0

    @property
    def proxy_url(self) -> str:
        """The endpoint clients use: db 0 through the proxy."""
        assert self.proxy is not None
        return f"redis://127.0.0.1:{self.proxy.port}/0"

    @staticmethod
    def admin(server: RedisServer) -> redis.Redis:
        """A direct connection to one node, bypassing the proxy."""
        return redis.Redis(port=server.port, socket_timeout=5)

    def start(self) -> ReplicatedRedis:
        for node in self.nodes:
            node.start()
        self._follow(self.replica, self.primary)
        self.replicating = True
        self.proxy = TcpProxy(self.primary.port)
        return self

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        for node in self.nodes:
            node.stop()

    def stop_replication(self, *, stays_replica: bool = False) -> None:
        """The replica stops copying the primary, from now on: it first
        catches up with what the primary acknowledged before this call (a
        busy machine can leave the last write in flight), then keeps it.

        ``stays_replica``: it stays a read-only replica whose link is down
        (its AUTH refused, as on the cluster), as a replica that falls
        behind does.  Without it, the replica becomes a master of its own:
        after a ``failover()`` that is the demoted node, which the pooled
        connections still reach, and which would then take their writes (two
        masters: a split brain, not a lagging replica)."""
        if self.replicating:
            self._catch_up(self.replica, self.primary)
        with self.admin(self.replica) as replica:
            if stays_replica:
                replica.config_set("masteruser", "sessionsync-cut-off")
                replica.config_set("masterauth", "no-such-password")
                replica.execute_command("CLIENT", "KILL", "TYPE", "master")
                wait_for(lambda: replica.info("replication")["master_link_status"] != "up", 10,
                         f"replica {self.replica.port} cut off")
                # After a failover the replica is the demoted node, and the
                # pooled connections still on it would read what it keeps
                # from now on, for good (the service reads the primary only;
                # ElastiCache reboots a demoted node): they are dropped, so
                # clients come back through the endpoint's name.
                for kind in ("normal", "pubsub"):
                    replica.execute_command("CLIENT", "KILL", "TYPE", kind)
            else:
                replica.execute_command("REPLICAOF", "NO", "ONE")
        self.replicating = False

    def failover(self, *, lose_unreplicated: bool = False, move_endpoint: bool = True) -> None:
        """Promote the replica; demote the primary; move the endpoint.

        Unless ``lose_unreplicated`` (or ``stop_replication()`` came first),
        the primary hands over with Redis's FAILOVER (writes paused until the
        replica has them all): a failover that loses
        nothing.  Otherwise the primary's writes not yet on the replica are
        lost: the demoted node resynchronises from the new primary.
        ``move_endpoint=False`` leaves the proxy on the demoted node until
        ``move_endpoint()``: the window in which the DNS name lags the roles.
        """
        old, new = self.primary, self.replica
        if self.replicating and not lose_unreplicated:
            self._hand_over(old, new)
        else:
            with self.admin(new) as client:
                # cut off before (stop_replication(stays_replica=True)): its
                # link's settings back, for when it follows again
                client.config_set("masteruser", "")
                client.config_set("masterauth", "")
                client.execute_command("REPLICAOF", "NO", "ONE")
        self._follow(old, new)
        self.replicating = True
        self.primary, self.replica = new, old
        self.failovers += 1
        if move_endpoint:
            self.move_endpoint()

    def move_endpoint(self) -> None:
        """New connections through the proxy reach the current primary."""
        assert self.proxy is not None
        self.proxy.retarget(self.primary.port)

    def _follow(self, follower: RedisServer, leader: RedisServer) -> None:
        with self.admin(follower) as client:
            # a node cut off before (stop_replication(stays_replica=True)) links again
            client.config_set("masteruser", "")
            client.config_set("masterauth", "")
            client.execute_command("REPLICAOF", "127.0.0.1", str(leader.port))

            def linked() -> bool:
                info = client.info("replication")
                return info["role"] == "slave" and info["master_link_status"] == "up"
            wait_for(linked, 20, f"replication {leader.port} -> {follower.port}")

    def _hand_over(self, old: RedisServer, new: RedisServer) -> None:
        """A planned failover as Redis runs one (FAILOVER): the primary
        pauses writes until the replica has all of them, then promotes it
        and follows it.  Catching up first and promoting after would leave a
        window in which the primary's replication PING (every 10 s) reaches
        the old primary alone: a failover that lost a few bytes, so a
        demoted node that needs a full resync."""
        with self.admin(old) as client:
            def online() -> bool:  # as the primary sees it: the replica's link up is not enough
                info = client.info("replication")
                return any(isinstance(v, dict) and v.get("port") == new.port
                           and v.get("state") == "online" for v in info.values())
            wait_for(online, 20, f"replica {new.port} online at {old.port}")
            client.execute_command("FAILOVER", "TO", "127.0.0.1", str(new.port), "TIMEOUT", "10000")

            def handed_over() -> bool:
                info = client.info("replication")
                return info["role"] == "slave" and info["master_failover_state"] == "no-failover"
            wait_for(handed_over, 20, f"failover {old.port} -> {new.port}")
        with self.admin(new) as client:
            wait_for(lambda: client.info("replication")["role"] == "master", 20,
                     f"{new.port} promoted")

    def _catch_up(self, follower: RedisServer, leader: RedisServer) -> None:
        with self.admin(leader) as lead, self.admin(follower) as follow:
            target = lead.info("replication")["master_repl_offset"]
            wait_for(lambda: follow.info("replication")["master_repl_offset"] >= target, 20,
                     f"replica {follower.port} catching up")


class ReplicatedRedisCluster:
    """A real Redis Cluster of ``masters`` shards, each a master and a
    replica, every node behind a TcpProxy of its own that it announces
    (``cluster-announce-port``): clients, redirections (MOVED) and the
    replicas' links all go through the proxies, so a proxy can cut a reply
    after the script ran, as in front of a single endpoint.  The cluster
    bus goes direct (``cluster-announce-bus-port``).

    The faults a shard can suffer: ``failover`` (CLUSTER FAILOVER: the
    master pauses its clients until the replica has every write, then hands
    over; or, after ``stop_replication``, CLUSTER FAILOVER TAKEOVER of a
    replica that lacks the writes made since), ``restart`` (a node replaced
    without a snapshot: its data gone, its nodes.conf kept, so it keeps its
    identity and slots), and ``flush``.  Roles are always read from the
    servers (a restart may let the cluster fail over by itself).
    """

    def __init__(self, workdir: Path, masters: int = 3, node_timeout_ms: int = 2000) -> None:
        self.proxies: list[TcpProxy] = []
        self.nodes: list[RedisServer] = []
        for i in range(2 * masters):
            port = free_port()
            proxy = TcpProxy(port)
            self.proxies.append(proxy)
            # a replica's full sync loads from the socket (no dump.rdb on its
            # disk: a restart without persistence must find nothing to load)
            self.nodes.append(RedisServer(
                workdir / f"node{i}", port, "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                # short: gossip (which a manual failover needs) converges in about a second
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-announce-port", str(proxy.port),
                "--cluster-announce-bus-port", str(port + 10000),
                "--repl-diskless-sync-delay", "0", "--repl-diskless-load", "on-empty-db"))
        self.masters = masters
        #: the replicas cut off from their master (stop_replication), by port
        self.cut_off: set[int] = set()

    @property
    def url(self) -> str:
        """A seed node, through its proxy (the client reads the map from it)."""
        return f"redis://127.0.0.1:{self.proxies[0].port}"

    @staticmethod
    def admin(node: RedisServer) -> redis.Redis:
        """A direct connection to one node, bypassing its proxy."""
        return redis.Redis(port=node.port, socket_timeout=5)

    def proxy_of(self, node: RedisServer) -> TcpProxy:
        return self.proxies[self.nodes.index(node)]

    def _by_announced(self, port: int) -> RedisServer:
        return next(n for n, p in zip(self.nodes, self.proxies, strict=True) if p.port == port)

    def start(self) -> ReplicatedRedisCluster:
        for node in self.nodes:
            node.start()
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p.port}" for p in self.proxies),
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, timeout=60)
        self.wait_healthy()
        return self

    def stop(self) -> None:
        for proxy in self.proxies:
            proxy.close()
        for node in self.nodes:
            node.stop()

    def _role(self, node: RedisServer) -> dict[str, Any]:
        with self.admin(node) as client:
            return client.info("replication")

    def healthy(self) -> bool:
        """Every node says the cluster is ok and agrees on the master of
        each slot and on every node's role, and each master has a replica
        whose link is up.  (Which replicas CLUSTER SLOTS lists follows the
        gossip seconds later: no client here reads from a replica.)"""
        return self.unhealthy() is None

    def unhealthy(self) -> str | None:
        """What is not healthy yet, or None."""
        maps = []
        for node in self.nodes:
            with self.admin(node) as client:
                if b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return f"{node.port}: cluster state not ok"
                maps.append(sorted((first, last, master[1]) for first, last, master, *_
                                   in client.execute_command("CLUSTER", "SLOTS")))
        if any(m != maps[0] for m in maps):
            return f"slot maps differ: {maps}"
        if len(set(views := self._views())) != 1:
            return "views differ:\n" + "\n--\n".join(views)
        roles = [self._role(n) for n in self.nodes]
        # a replica cut off on purpose (stop_replication) counts, its link down
        followed = sorted(int(r["master_port"]) for n, r in zip(self.nodes, roles, strict=True)
                          if r["role"] == "slave"
                          and (r.get("master_link_status") == "up" or n.port in self.cut_off))
        if followed != sorted(int(port) for *_, port in maps[0]):
            links = [(n.port, r["role"], r.get("master_port"), r.get("master_link_status"))
                     for n, r in zip(self.nodes, roles, strict=True)]
            masters = sorted(int(port) for *_, port in maps[0])
            return f"masters {masters}, replicas linked to {followed}: {links}"
        return None

    def _views(self) -> list[str]:
        """Each node's view of every node's role (and master): gossip
        converged when they are all the same.  A manual failover needs the
        masters' votes, which they give only to a replica they know is one."""
        views = []
        for node in self.nodes:
            with self.admin(node) as client:
                text = client.execute_command("CLUSTER", "NODES")
            text = text.decode() if isinstance(text, bytes) else str(text)
            views.append("\n".join(sorted(
                " ".join([fields[0], fields[2].replace("myself,", ""), fields[3]])
                for fields in (line.split() for line in text.strip().splitlines()))))
        return views

    def wait_healthy(self, timeout: float = 30) -> None:
        try:
            wait_for(self.healthy, timeout, "redis cluster healthy")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: {self.unhealthy()}") from None

    def master_of(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot now."""
        slot = _key_slot(key)
        with self.admin(self.nodes[0]) as client:
            for first, last, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    return self._by_announced(int(master[1]))
        raise AssertionError(f"slot {slot} is not served")

    def master_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if self._role(n)["role"] == "master"]

    def replica_of(self, master: RedisServer) -> RedisServer:
        port = self.proxy_of(master).port
        return next(n for n in self.nodes if (r := self._role(n))["role"] == "slave"
                    and int(r["master_port"]) == port)

    def catch_up(self, master: RedisServer) -> None:
        replica = self.replica_of(master)
        target = self._role(master)["master_repl_offset"]
        wait_for(lambda: self._role(replica)["slave_repl_offset"] >= target, 20,
                 f"replica {replica.port} catching up")

    def stop_replication(self, master: RedisServer) -> RedisServer:
        """``master``'s replica stops copying it, from now on (after it
        caught up): its link's AUTH is refused, so it stays down until
        ``resume_replication``.  Returns the replica."""
        replica = self.replica_of(master)
        self.catch_up(master)
        with self.admin(replica) as client:
            client.config_set("masteruser", "sessionsync-cut-off")
            client.config_set("masterauth", "no-such-password")
            client.execute_command("CLIENT", "KILL", "TYPE", "master")
            wait_for(lambda: client.info("replication")["master_link_status"] != "up", 10,
                     f"replica {replica.port} cut off")
        self.cut_off.add(replica.port)
        return replica

    def resume_replication(self, replica: RedisServer) -> None:
        with self.admin(replica) as client:
            client.config_set("masteruser", "")
            client.config_set("masterauth", "")
        self.cut_off.discard(replica.port)

    def failover(self, master: RedisServer, *, takeover: bool = False) -> RedisServer:
        """Promote ``master``'s replica; the old master becomes its replica.
        CLUSTER FAILOVER: planned, nothing lost.  ``takeover``: CLUSTER
        FAILOVER TAKEOVER, the replica promoted as it is (what it lacks is
        lost: the old master resynchronises from it).  Returns when every
        node agrees (no client can reach the old master as a master)."""
        replica = self.replica_of(master)
        with self.admin(replica) as client:
            # a master votes for one replica of a shard per two node
            # timeouts: a failover soon after another waits for that, and asks again
            for attempt in range(6):
                client.execute_command("CLUSTER", "FAILOVER", *(["TAKEOVER"] if takeover else []))
                try:
                    wait_for(lambda: client.info("replication")["role"] == "master", 5,
                             f"{replica.port} promoted")
                    break
                except TimeoutError:
                    if attempt == 5:
                        raise
        if takeover:
            self.resume_replication(replica)  # its settings, for when it is a replica again
        self.wait_healthy()
        return replica

    def restart(self, node: RedisServer) -> None:
        """``node`` restarts without its data (a replacement without a
        snapshot): nodes.conf is kept, so it is the same node with its slots."""
        node.stop()
        for leftover in ("dump.rdb", "appendonly.aof"):
            (node.workdir / leftover).unlink(missing_ok=True)
        node.start()
        self.wait_healthy()

    def flush(self) -> None:
        for node in self.master_nodes():
            with self.admin(node) as client:
                client.flushall()


def _key_slot(key: str) -> int:
    return key_slot(key.encode())
