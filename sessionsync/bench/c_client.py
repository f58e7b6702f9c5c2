"""The C client's floor: redis-benchmark sending one command, one at a time.

redis-benchmark ships with redis-server.  With ``-c 1`` it sends the command
sequentially on one connection, as a warm Lambda does, and reports the
latency percentiles (``--csv``: milliseconds with three decimals, so the
figures are whole microseconds).  Any command with its arguments can be
given (``EVALSHA <sha> <numkeys> <keys...> <args...>``), so the floor of a
script call is the same script with the same keys and arguments.

``CFloors``: the GET, the EVALSHA of GET_SCRIPT, of UPDATE_SCRIPT and of
CREATE_SCRIPT with the store's keys and arguments, in slices spread over a
section's rounds; each floor is the median of its slices' p50.  The
update's script is UPDATE_SCRIPT without its version check (redis-benchmark
cannot send the next version on each call): every call commits, as the
store's updates do, and that is checked.  The create's ids are
redis-benchmark's ``__rand_int__`` (each occurrence drawn apart: the
session key, the marker and the id in the event are three new names, as
a create of a new id writes three new entries), and every call must
commit a new session, which is checked too.
"""
from __future__ import annotations

import csv
import shutil
import subprocess
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

from sessionsync.bench.stats import median

if TYPE_CHECKING:
    import redis

    from chalicelib.adapters.redis.store import SessionStore
    from sessionsync.bench.context import BenchContext

# UPDATE_SCRIPT's version check, taken out for the C client's floor
VERSION_CHECK = "  if EXPECTED ~= '' and v ~= tonumber(EXPECTED) then return {'conflict', v} end\n"


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


# redis-benchmark's placeholder, replaced on each call by a random 12-digit
# number below RANDOM_KEYSPACE (with -r), each occurrence drawn apart
RANDOM = "__rand_int__"
RANDOM_KEYSPACE = 2_000_000_000


def latency(redis_url: str, command: Sequence[str | bytes | int], requests: int,
            timeout: float = 120.0) -> dict[str, Any]:
    """redis-benchmark's latency for ``command`` sent ``requests`` times on
    one connection: rps, avg/min/p50/p95/p99/max in microseconds."""
    binary = redis_benchmark_binary()
    if binary is None:
        raise CClientUnavailable("redis-benchmark is not on PATH")
    args = [a.decode() if isinstance(a, bytes) else str(a) for a in command]
    randomised = ["-r", str(RANDOM_KEYSPACE)] if any(RANDOM in a for a in args) else []
    argv = [binary, *_connection_args(redis_url), "-c", "1", "-n", str(requests), "--csv",
            *randomised, *args]
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


class CFloors:
    """The C client's floors of a section, measured in slices (module docstring)."""

    def __init__(self, ctx: BenchContext, store: SessionStore, raw_client: redis.Redis,
                 read_key: str, state: str, prefix: str) -> None:
        from chalicelib.adapters.redis.codec import iso_utc
        from chalicelib.adapters.redis.keys import session_keys
        from chalicelib.adapters.redis.scripts import CREATE_SCRIPT, GET_SCRIPT, UPDATE_SCRIPT

        self.ctx = ctx
        self.store = store
        self.update_id = f"{prefix}-c-update"
        store.create(self.update_id, state, 3600)
        if VERSION_CHECK not in UPDATE_SCRIPT:
            raise AssertionError("UPDATE_SCRIPT's version check changed: update VERSION_CHECK")
        get_sha = raw_client.script_load(GET_SCRIPT)
        update_sha = raw_client.script_load(UPDATE_SCRIPT.replace(VERSION_CHECK, ""))
        now = time.time()
        keys = session_keys(self.update_id)
        # UPDATE_SCRIPT's ARGV, as SessionStore.update sends them (persisted version 0)
        update_args: list[str | bytes | int] = [self.update_id, iso_utc(now), int(now * 1000),
                                                store.marker_ttl, store.channel, 1, 0, "", state]
        # CREATE_SCRIPT's keys and ARGV, as SessionStore.create sends them
        # (PostgreSQL has no such session: '0'), the ids random (module docstring)
        self.raw_client = raw_client
        self.create_prefix = f"{prefix}-c-create-"
        create_id = self.create_prefix + RANDOM
        create_keys = session_keys(create_id)
        self.create_outbox = create_keys[2:4]
        self.create_patterns = [key.replace(RANDOM, "*") for key in create_keys[:2]]
        create_args: list[str | bytes | int] = [create_id, iso_utc(now), int(now * 1000),
                                                store.marker_ttl, store.channel, "", "0", 3600,
                                                state, ""]
        self.commands: dict[str, list[str | bytes | int]] = {
            "c_get": ["GET", read_key],
            "c_get_verified": ["EVALSHA", get_sha, 1, read_key],
            "c_update": ["EVALSHA", update_sha, len(keys), *keys, *update_args],
            "c_create": ["EVALSHA", raw_client.script_load(CREATE_SCRIPT), len(create_keys),
                         *create_keys, *create_args],
        }
        self.slices: dict[str, list[dict[str, Any]]] = {name: [] for name in self.commands}
        self.error: str | None = None

    def at_round(self, done: int, rounds: int, requests: int) -> None:
        """A slice before the first round, halfway and after the last."""
        if done in (0, rounds // 2, rounds):
            self.measure(requests)

    def measure(self, requests: int) -> None:
        from sessionsync.bench.harness import ack_all

        if self.error is not None:
            return
        try:
            for name, command in self.commands.items():
                before = self._version() if name == "c_update" else 0
                self.slices[name].append(latency(self.ctx.redis_url, command, requests))
                if name == "c_update":
                    after = self._version()
                    if after != before + requests:
                        raise AssertionError(f"the C client's updates did not all commit: "
                                             f"{before} -> {after}")
                    ack_all(self.store, [f"{self.update_id}:{v}" for v in range(before + 1, after + 1)])
                if name == "c_create":
                    self._clear_creates(requests)
        except CClientUnavailable as exc:
            self.error = str(exc)
            self.ctx.log(f"no C-client floors ({exc})")

    def _clear_creates(self, requests: int) -> None:
        """Check that the C client's creates committed, and remove what they
        wrote: the sessions, the markers and their outbox entries (all in
        the bucket of the id with the placeholder, not of each random id)."""
        raw = self.raw_client
        index, data = self.create_outbox
        ids = [e for e in cast("list[bytes]", raw.zrange(index, 0, -1))
               if e.decode().startswith(self.create_prefix)]
        # two calls may draw the same id (about 1 in 8,000 for 1,000 calls
        # below RANDOM_KEYSPACE): the second finds it and commits nothing
        if len(ids) < requests * 0.99:
            raise AssertionError(f"the C client's creates did not commit: {len(ids)} of {requests}")
        pipe = raw.pipeline(transaction=False)
        for chunk in range(0, len(ids), 500):
            pipe.zrem(index, *ids[chunk:chunk + 500])
            pipe.hdel(data, *ids[chunk:chunk + 500])
        for pattern in self.create_patterns:
            for key in raw.scan_iter(match=pattern, count=1000):
                pipe.unlink(key)
        pipe.execute()

    def _version(self) -> int:
        from chalicelib.domain.session import Session

        return cast(Session, self.store.get(self.update_id)).version

    def summary(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        return {name: {"p50_us": median([s["p50_us"] for s in slices]),
                       "p99_us": median([s["p99_us"] for s in slices]),
                       "slices": slices}
                for name, slices in self.slices.items()}
