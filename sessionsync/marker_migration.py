"""The markers of the previous release (a key each, ``ss:{NNNN}:m:<id>``)
moved into their bucket's marker hash (``ss:{NNNN}:m``), online.

Every primary is SCANned for marker keys (``LEGACY_MARKER_KEY_PATTERN``),
a page at a time; a page's keys are grouped by bucket, and each bucket's
group is moved by one script (MIGRATE_MARKERS_SCRIPT): atomic with the
writes, which read both forms and write one (scripts/lib.lua), so nothing
a live write did is undone, and a key is dropped, not moved, when the hash
already holds its version or a newer one.  Safe to run twice, or twice at
once: the second finds the keys gone or already moved.

A key with a TTL is left alone (``kept``): SESSION_MARKER_TTL's markers
stay keys.  ``remaining`` is what a last pass still finds: a marker key with
no TTL a process of the previous release wrote during the run (run again
once none runs), one whose slot a resharding was moving (run again once it
ended), or none.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from chalicelib.adapters.redis import scripts
from chalicelib.adapters.redis.client import RedisClient
from chalicelib.adapters.redis.errors import redis_errors
from chalicelib.adapters.redis.keys import LEGACY_MARKER_KEY_PATTERN
from sessionsync.redis_views import primaries

# "ss:{NNNN}:m:<id>": the bucket's marker hash is the first 11 characters
_HASH_CHARS = len("ss:{0000}:m")


@dataclass
class MigrationProgress:
    """What a run did so far (and, at its end, what it left)."""

    #: marker keys seen by the SCAN
    scanned: int = 0
    #: moved into an empty field, or over an older version
    moved: int = 0
    #: dropped: the hash held that version or a newer one already
    already: int = 0
    #: gone between the SCAN and the move (a live write moved it)
    gone: int = 0
    #: left as keys: they have a TTL (SESSION_MARKER_TTL)
    kept: int = 0
    #: scripts run (one per bucket per page)
    batches: int = 0
    #: marker keys without a TTL a last pass still found; None until it ran
    remaining: int | None = None
    nodes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"scanned": self.scanned, "moved": self.moved, "already": self.already,
                "gone": self.gone, "kept": self.kept, "batches": self.batches,
                "remaining": self.remaining, "nodes": self.nodes}


def _scan(node: redis.Redis, batch: int) -> Any:
    cursor = 0
    while True:
        cursor, keys = node.scan(cursor=cursor, match=LEGACY_MARKER_KEY_PATTERN, count=batch)
        if keys:
            yield cast("list[bytes]", keys)
        if cursor == 0:
            return


def _move_page(node: redis.Redis, sha: str, keys: list[bytes], batch: int,
               progress: MigrationProgress) -> None:
    """A SCAN page's keys, one script per bucket and at most ``batch`` keys
    per script (SCAN's COUNT is a hint: a page may hold more)."""
    by_bucket: dict[bytes, list[bytes]] = defaultdict(list)
    for key in keys:
        by_bucket[key[:_HASH_CHARS]].append(key)
    for markers, found in by_bucket.items():
        for i in range(0, len(found), batch):
            group = found[i:i + batch]
            try:
                try:
                    reply = node.evalsha(sha, 1 + len(group), markers, *group)
                except redis.exceptions.NoScriptError:  # a restart or a failover since the load
                    reply = node.eval(scripts.MIGRATE_MARKERS_SCRIPT, 1 + len(group), markers, *group)
            except (redis.exceptions.AskError, redis.exceptions.TryAgainError):
                # the bucket's slot is moving to another node (a resharding):
                # nothing ran; the last pass counts these keys as remaining
                continue
            moved, already, gone, kept = (int(n) for n in cast("list[int]", reply))
            progress.moved += moved
            progress.already += already
            progress.gone += gone
            progress.kept += kept
            progress.batches += 1


def remaining(client: RedisClient, batch: int = 1000) -> int:
    """Marker keys without a TTL, on every primary: what a migration has
    still to move (a dry run)."""
    count = 0
    with redis_errors():
        for _, node in primaries(client):
            for keys in _scan(node, batch):
                pipe = node.pipeline(transaction=False)
                for key in keys:
                    pipe.pttl(key)
                # an error (MOVED, ASK: the key's slot is moving) is a key
                # this node cannot tell about: left, until a run after it
                count += sum(1 for ttl in pipe.execute(raise_on_error=False)
                             if ttl == -1 or isinstance(ttl, redis.ResponseError))
    return count


def migrate(client: RedisClient, *, batch: int = 500, pause_seconds: float = 0.0,
            report: Callable[[MigrationProgress], None] | None = None) -> MigrationProgress:
    """Move every marker key into its bucket's hash: a SCAN page of about
    ``batch`` keys at a time on each primary, one script per bucket of the
    page, ``pause_seconds`` between pages (to spare a busy server);
    ``report`` is called after each page.  Then counts what is left
    (``remaining``).  Raises ServiceUnavailable when Redis cannot be reached."""
    progress = MigrationProgress()
    with redis_errors():
        for name, node in primaries(client):
            progress.nodes.append(name)
            sha = node.script_load(scripts.MIGRATE_MARKERS_SCRIPT)
            for keys in _scan(node, batch):
                progress.scanned += len(keys)
                _move_page(node, sha, keys, batch, progress)
                if report is not None:
                    report(progress)
                if pause_seconds:
                    time.sleep(pause_seconds)
    progress.remaining = remaining(client, batch)
    return progress
