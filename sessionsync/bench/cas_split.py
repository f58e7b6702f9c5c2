"""Where a compare-and-set update's time goes, against a bare EVALSHA.

The store section reports ``update / floor_evalsha`` (a bare EVALSHA of
``return 1``).  This splits the update's p50 into the parts that make up
the difference, each measured in the same run:

* client work without I/O: ``SessionStore.update`` on a stub client that
  returns the reply a real update got (sessionsync's own Python), and
  redis-py's packing of the command and hiredis's parsing of the reply
  (the update's and the floor's);
* the round trip: p50 of PING, of the bare EVALSHA, and of ``echo``, a
  trivial script sent the update's very keys and arguments that returns a
  reply of the update's size (the bytes on the wire, no work);
* the script's own server time: ``INFO commandstats`` microseconds per
  EVALSHA of UPDATE_SCRIPT against the bare script and ``echo``, and of
  variants of UPDATE_SCRIPT with one step taken out each (the epoch read,
  PUBLISH, the outbox entry, the marker), so that each step's cost is a
  difference of two server-side figures.

``floors`` then names the floor an update cannot go below on this server:
the bare round trip plus the update script's own server time (and, with
the payload, ``echo``'s round trip plus it); ``ratios`` are the update's
p50 over each.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, cast

import hiredis
import redis

from chalicelib.adapters.redis import scripts
from chalicelib.adapters.redis.codec import iso_utc
from chalicelib.adapters.redis.keys import session_keys
from chalicelib.adapters.redis.scripts import UPDATE_SCRIPT
from chalicelib.adapters.redis.store import SessionStore
from sessionsync.bench.context import STATE_BYTES, BenchContext
from sessionsync.bench.harness import TRIVIAL_SCRIPT, SectionRedis, ack_all, server_usec
from sessionsync.bench.stats import interleaved, ratio, summarize_ns
from sessionsync.redis_views import EPOCH_SCRIPT

# the update's keys and arguments in, a reply of the update's shape out
# ({'ok', event}: the event is about the state's size)
ECHO_SCRIPT = "return {'ok', ARGV[9]}"
# UPDATE_SCRIPT with one step taken out: (name, text replaced, replacement).
# Each must match UPDATE_SCRIPT (or scripts/lib.lua in it) exactly once: a
# changed script fails the run instead of timing something else.
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("no_epoch_read",
     "  local info = redis.call('INFO', 'replication')\n"
     "  local at = string.find(info, 'master_replid:', 1, true) + 14\n"
     "  return string.sub(info, at, at + 7)\n",
     "  return '00000000'\n"),
    ("no_publish", "  redis.call('PUBLISH', CHANNEL, ev)\n", ""),
    ("no_outbox", "  redis.call('ZADD', KEYS[3], NOW_MS, eid)\n  redis.call('HSET', KEYS[4], eid, ev)\n",
     ""),
    ("no_marker", "  set_marker(v .. '|' .. flag, MARKER_TTL, ttl)\n", ""),
)
# what any compare-and-set of one string costs on the server (GET, compare,
# SET with a TTL), on a session of its own: a floor for the script's work
MINIMAL_CAS_SCRIPT = r"""
local raw = redis.call('GET', KEYS[1])
if not raw then return {'missing', 0} end
local v = tonumber(string.match(raw, '^(%d+)|'))
if ARGV[3] ~= '' and v ~= tonumber(ARGV[3]) then return {'conflict', v} end
v = v + 1
redis.call('SET', KEYS[1], v .. '|' .. ARGV[2], 'EX', 3600)
return {'ok', v}
"""
ITERATIONS = {"full": 20_000, "quick": 4_000, "smoke": 400}


def variant_script(name: str) -> str:
    """UPDATE_SCRIPT with the step ``name`` taken out (see VARIANTS)."""
    for variant, old, new in VARIANTS:
        if variant == name:
            if UPDATE_SCRIPT.count(old) != 1:
                raise AssertionError(f"UPDATE_SCRIPT changed: update cas_split.VARIANTS[{name}]")
            return UPDATE_SCRIPT.replace(old, new)
    raise KeyError(name)


def prelude_script() -> str:
    """The update script's prelude (the write prelude's locals and the
    functions it calls: scripts.shake) and nothing else."""
    body = scripts.read("update.lua")
    if not UPDATE_SCRIPT.endswith(body):
        raise AssertionError("UPDATE_SCRIPT changed: update cas_split.prelude_script")
    return UPDATE_SCRIPT[:-len(body)] + "\nreturn 1\n"


def split(p50: dict[str, float], server: dict[str, float], client: dict[str, float]
          ) -> dict[str, Any]:
    """The update's p50 taken apart (microseconds), and its ratios to floors.

    ``p50``: update, floor_evalsha, echo, ping; ``server``: usec per call of
    update, floor_evalsha, echo; ``client``: store_python (sessionsync's
    Python around the call), redis_py_update and redis_py_floor (packing the
    command + parsing the reply).
    """
    extra = p50["update"] - p50["floor_evalsha"]
    script = server["update"] - server["floor_evalsha"]
    payload = (p50["echo"] - p50["floor_evalsha"]) - (server["echo"] - server["floor_evalsha"])
    client_extra = client["store_python"] + client["redis_py_update"] - client["redis_py_floor"]
    # the payload's redis-py share is already in echo's round trip
    client_only = client["store_python"]
    floor_server = p50["floor_evalsha"] + script
    floor_payload = p50["echo"] + (server["update"] - server["echo"])
    return {
        "update_p50_us": p50["update"],
        "floor_evalsha_p50_us": p50["floor_evalsha"],
        "extra_over_floor_us": round(extra, 2),
        "extra_parts_us": {
            "script_server_time": round(script, 2),
            "payload_on_the_wire": round(payload, 2),
            "sessionsync_python": round(client_only, 2),
            "unexplained": round(extra - script - payload - client_only, 2),
        },
        "client_work_without_io_us": {**{k: round(v, 2) for k, v in client.items()},
                                      "update_minus_floor": round(client_extra, 2)},
        "round_trip_us": {"ping": p50["ping"], "floor_evalsha": p50["floor_evalsha"],
                          "echo_same_args_and_reply_size": p50["echo"],
                          "floor_evalsha_minus_its_server_time":
                              round(p50["floor_evalsha"] - server["floor_evalsha"], 2)},
        "server_usec_per_call": dict(server),
        "floors_us": {"round_trip_plus_script_server_time": round(floor_server, 2),
                      "payload_round_trip_plus_script_server_time": round(floor_payload, 2)},
        "ratios": {
            "update/floor_evalsha": ratio(p50["update"], p50["floor_evalsha"]),
            "update/(floor_evalsha+script_server_time)": ratio(p50["update"], floor_server),
            "update/(echo+script_server_time)": ratio(p50["update"], floor_payload),
            "server.update/server.floor_evalsha": ratio(server["update"], server["floor_evalsha"]),
            "script_server_time/update_p50": ratio(script, p50["update"]),
        },
    }


class _StubScript:
    def __init__(self, script: str) -> None:
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()


class _StubClient:
    """Answers every EVALSHA with a canned reply: the store's Python, no I/O."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply

    def register_script(self, script: str) -> _StubScript:
        return _StubScript(script)

    def evalsha(self, *args: Any) -> Any:
        return self.reply


def _client_work(store: SessionStore, client: redis.Redis, update_id: str, state: str,
                 iterations: int) -> dict[str, float]:
    """p50 (us) of the client's work with no I/O."""
    now = time.time()
    reply = cast(list, client.evalsha(store._update.sha, 4, *session_keys(update_id), update_id,
                                      iso_utc(now), int(now * 1000), 0, store.channel, "", 0, "",
                                      state))
    stub = SessionStore(cast(Any, _StubClient(reply)), channel=store.channel)
    connection = redis.Connection()  # never connected: only its packer is used
    update_args = ("EVALSHA", store._update.sha, 4, *session_keys(update_id), update_id,
                   iso_utc(now), int(now * 1000), 0, store.channel, 7, 0, "", state)
    floor_args = ("EVALSHA", hashlib.sha1(TRIVIAL_SCRIPT.encode()).hexdigest(), 1,
                  session_keys(update_id)[0])
    update_reply = _resp(reply)

    def parse(data: bytes) -> Callable[[], Any]:
        def go() -> Any:
            reader = hiredis.Reader()
            reader.feed(data)
            return reader.gets()
        return go

    ops = {
        "store_python": lambda: stub.update(update_id, state, 7),
        "pack_update": lambda: connection.pack_command(*update_args),
        "pack_floor": lambda: connection.pack_command(*floor_args),
        "parse_update_reply": parse(update_reply),
        "parse_floor_reply": parse(b":1\r\n"),
    }
    samples = interleaved(ops, iterations, warmup=iterations // 10, rounds=20)
    p50 = {name: summarize_ns(values)["p50_us"] for name, values in samples.items()}
    return {"store_python": p50["store_python"],
            "redis_py_update": round(p50["pack_update"] + p50["parse_update_reply"], 2),
            "redis_py_floor": round(p50["pack_floor"] + p50["parse_floor_reply"], 2)}


def _resp(value: Any) -> bytes:
    """RESP2 encoding of a script reply (bulk strings, integers, arrays)."""
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(_resp(v) for v in value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def run(ctx: BenchContext) -> dict[str, Any]:
    iterations = ITERATIONS.get(ctx.profile.name, ITERATIONS["quick"])
    with SectionRedis(ctx, "cas", timeout=10.0) as r:
        store, raw, client, state = r.store, r.raw, r.client, r.state
        update = r.updater("update")
        keys = session_keys(update.session_id)
        variant_id = r.create("variants")
        variant_keys = session_keys(variant_id)
        stub_id = r.create("stub")
        minimal_key = session_keys(r.create("minimal"))[0]
        raw.set(minimal_key, "1|" + state, ex=3600)
        trivial_sha = raw.script_load(TRIVIAL_SCRIPT)
        echo_sha = raw.script_load(ECHO_SCRIPT)
        epoch_sha = raw.script_load(EPOCH_SCRIPT)
        prelude_sha = raw.script_load(prelude_script())
        minimal_sha = raw.script_load(MINIMAL_CAS_SCRIPT)
        variant_shas = {name: raw.script_load(variant_script(name)) for name, _, _ in VARIANTS}
        variant_shas["full"] = raw.script_load(UPDATE_SCRIPT)

        def echo() -> Any:
            now = time.time()
            return client.evalsha(echo_sha, 4, *keys, update.session_id, iso_utc(now),
                                  int(now * 1000), store.marker_ttl, store.channel,
                                  update.version, 0, "", state)

        def variant(sha: str) -> Callable[[], Any]:
            def go() -> Any:
                now = time.time()
                # expected version '' (any): every variant commits, whatever
                # the others did to the session before it
                return raw.evalsha(sha, 4, *variant_keys, variant_id, iso_utc(now),
                                   int(now * 1000), store.marker_ttl, store.channel, "", 0, "",
                                   state)
            return go

        def ack(_: int = 0) -> None:
            update.ack()
            # the variants' event ids are not tracked: read back from the bucket's index
            ack_all(store, [e.decode() for e in cast(list[bytes], raw.zrange(variant_keys[2], 0, -1))
                            if e.decode().startswith(variant_id + ":")])

        def floor_evalsha() -> Any:
            return client.evalsha(trivial_sha, 1, keys[0])

        samples = interleaved({"ping": raw.ping, "floor_evalsha": floor_evalsha, "echo": echo,
                               "update": update}, iterations, warmup=iterations // 10,
                              between_rounds=ack)
        p50 = {name: summarize_ns(values)["p50_us"] for name, values in samples.items()}
        script_calls: dict[str, Callable[[], Any]] = {
            "floor_evalsha": floor_evalsha, "echo": echo, "update": update,
            "epoch_only": lambda: raw.evalsha(epoch_sha, 1, keys[0]),
            "prelude_only": lambda: raw.evalsha(prelude_sha, 1, keys[0]),
            "minimal_cas": lambda: raw.evalsha(minimal_sha, 4, minimal_key, *keys[1:],
                                               update.session_id, state, ""),
            **{f"variant.{name}": variant(sha) for name, sha in variant_shas.items()}}
        server = server_usec(raw, {name: ("evalsha", op) for name, op in script_calls.items()},
                             max(200, iterations // 4), rounds=20)
        ack()
        client_work = _client_work(store, raw, stub_id, state, iterations)
    full = server["variant.full"]
    steps = {name: round(full - server[f"variant.{name}"], 2) for name, _, _ in VARIANTS}
    result = split(p50, {k: server[k] for k in ("update", "floor_evalsha", "echo")}, client_work)
    return {
        "state_bytes": STATE_BYTES,
        "iterations": iterations,
        "latency": {name: summarize_ns(values) for name, values in samples.items()},
        **result,
        "script_steps_server_usec": {
            "by_variant": {k.removeprefix("variant."): v for k, v in server.items()
                           if k.startswith("variant.")},
            "step_cost": steps,
            "epoch_only_script": server["epoch_only"],
            "prelude_only_script": server["prelude_only"],
            "minimal_cas_script": server["minimal_cas"],
            "full/minimal_cas": ratio(full, server["minimal_cas"]),
            "prelude_only/floor_evalsha": ratio(server["prelude_only"], server["floor_evalsha"]),
            "step_share_of_script": {name: ratio(cost, full) for name, cost in steps.items()},
        },
        "notes": "latency ops interleaved in rounds; server_usec_per_call from INFO commandstats "
                 "deltas around blocks of one op at a time, the median over the blocks; "
                 "variants = UPDATE_SCRIPT with one step taken out (step_cost = full - "
                 "variant, server-side); client work = p50 of "
                 "the same calls with no I/O (a stub client, redis-py's packer, hiredis's "
                 "parser); floors_us: the least an update could cost here with its script as it "
                 "is (a bare round trip + the script's own server time).",
    }
