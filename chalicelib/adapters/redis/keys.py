"""The Redis key layout of sessionsync: every key, and the hash slot it lives in.

Key layout (every key of a session shares one hash tag, so each script
touches one hash slot and runs unchanged on Redis Cluster)::

    ss:{NNNN}:s:<id>   the session: "<version>|<created>|<updated>|<ttl>|<L|D><epoch>[@<owner>]|<state JSON>"
                       (one string: one GET to read it, no per-field overhead;
                       the epoch is 8 hex digits, see scripts/lib.lua; "@<owner>"
                       only for a session created with an owner, so values
                       written before owners existed read unchanged)
    ss:{NNNN}:m        the bucket's version markers: HASH <id> -> "<version>|<L|D|E>",
                       each outlives its session (recovery never serves an
                       older version; ids are not reused; E: the lifetime
                       ended, EXPIRE_SCRIPT).  No TTL, so volatile-* eviction
                       never takes it; allkeys-* could, and would take a
                       whole bucket's markers at once (1/1024 of every
                       session's; ``sessionsync diagnose`` fails allkeys-*)
    ss:{NNNN}:m:<id>   the same marker as a key of its own: with
                       SESSION_MARKER_TTL (a hash field has no TTL before
                       Redis 7.4), and as the previous release wrote every
                       marker.  Scripts read both and take the higher version;
                       a write writes one form and deletes the other
                       (scripts/lib.lua).  ``sessionsync migrate-markers``
                       moves the previous release's into the hashes
    ss:{NNNN}:ob       outbox index: ZSET event id -> enqueue time (ms)
    ss:{NNNN}:od       outbox data:  HASH event id -> event JSON
    ss:{NNNN}:e        epoch record "<epoch>|<ms first seen>[|<epoch it continues>]" (SETTLE_SCRIPT)
    ss:{NNNN}:h:<id>   hold record of a session Redis lost (HOLD_SCRIPT), short-lived
    ss:{NNNN}:k:<id>|<key>  idempotency record of a keyed write: "<fingerprint>|<event>",
                       written by the write's own script, expires (idempotency_ttl);
                       ids never hold '|', so the name is one (id, key) only
    ss:{NNNN}:i:<id>:<key>  the same, as the previous release named it (ambiguous:
                       "x" with key "1:k" and "x:1" with key "k"); read, never
                       written, until its records expired (``legacy_idempotency_key``)

and one key of the deployment's own::

    ss:sweep           the expiry sweep's position: the last id a run that
                       stopped on its budget looked at ('' or none: the first)

and, in a slot of their own (the relay's: chalicelib.pipeline.outbox)::

    ss:{relay}:lease   the relay's lease "<token>", expires unless renewed (LEASE_SCRIPT)
    ss:{relay}:next    the relay waiting to take over "<token>", short-lived

and, in the owner's own slot (its id is the hash tag; owner ids have no braces)::

    so:{<owner>}:i     owner index: ZSET (all scores 0, so ordered by id) of
                       the ids created with this owner, registered BEFORE
                       their create script runs (see the timeline above ``owner_index_key``)
    so:{<owner>}:r     the ids a revoke-all took from the index when it began
                       and has not dealt with yet (REVOKE_BEGIN_SCRIPT): ZSET as the index
    so:{<owner>}:p     where a revoke-all's walk of PostgreSQL stopped: the
                       last session id it dealt with (expires: a day)

and, with TENANT_MAX_SESSIONS, in the tenant's own slot (tenant names have no braces)::

    st:{<tenant>}:live  the tenant's live sessions: ZSET internal id -> when its
                       lifetime ends (ms); entries past it are trimmed by
                       the next reservation (scripts/tenant_count.lua)

``NNNN`` is a bucket, crc32(id) mod ``BUCKETS``: the outbox of a bucket lives
beside its sessions, so the write and its outbox entry are one atomic script,
and the relay scans a fixed set of ``BUCKETS`` outboxes instead of KEYS/SCAN.
``BUCKETS`` is part of the data format: changing it orphans existing keys.
"""
from __future__ import annotations

import zlib

BUCKETS = 1024


def bucket_of(session_id: str) -> int:
    return zlib.crc32(session_id.encode()) % BUCKETS


def bucket_tag(bucket: int) -> str:
    return "ss:{%04d}" % bucket


# every session key, on whichever node (an operator's SCAN: sessionsync/redis_views.py)
SESSION_KEY_PATTERN = "ss:*:s:*"


# the previous release's marker keys, on whichever node (sessionsync
# migrate-markers): '{' and '}' are no glob characters, '?' one character,
# so no session key ("ss:{NNNN}:s:<id>", whatever its id holds) matches
LEGACY_MARKER_KEY_PATTERN = "ss:{????}:m:*"


def session_keys(session_id: str) -> list[str]:
    """KEYS for the mutation scripts: session, the bucket's marker hash
    (the session's marker is its field ``session_id``), outbox index,
    outbox data.  The scripts name the marker's key form from the first
    two (scripts/lib.lua): keep them in step with ``marker_key``."""
    tag = bucket_tag(bucket_of(session_id))
    return [f"{tag}:s:{session_id}", f"{tag}:m", f"{tag}:ob", f"{tag}:od"]


def bucket_marker_key(bucket: int) -> str:
    """The hash of ``bucket``'s version markers: field <id> -> marker."""
    return f"{bucket_tag(bucket)}:m"


def marker_key(session_id: str) -> str:
    """The marker as a key of its own (SESSION_MARKER_TTL, and the previous
    release's format): the marker hash's name, ':', the id."""
    return f"{bucket_marker_key(bucket_of(session_id))}:{session_id}"


def hold_key(session_id: str) -> str:
    """The hold record of a session Redis lost (HOLD_SCRIPT)."""
    return f"{bucket_tag(bucket_of(session_id))}:h:{session_id}"


def idempotency_key(session_id: str, key: str) -> str:
    """The record of a write with Idempotency-Key ``key`` on ``session_id``:
    in the session's slot, so the write's script holds it (KEYS[5]).  The
    id ends at the first '|' (SESSION_ID_PATTERN has none); the key may
    hold any printable character."""
    return f"{bucket_tag(bucket_of(session_id))}:k:{session_id}|{key}"


def legacy_idempotency_key(session_id: str, key: str) -> str:
    """Where the previous release recorded the same write (KEYS[6]): read
    so that a retry across the upgrade is still replayed, and only when its
    fingerprint matches (the name may be another session's record).
    docs/decisions/idempotency-record-names.md says when it goes."""
    return f"{bucket_tag(bucket_of(session_id))}:i:{session_id}:{key}"


def epoch_key(session_id: str) -> str:
    """The epoch record of ``session_id``'s bucket (SETTLE_SCRIPT)."""
    return bucket_epoch_key(bucket_of(session_id))


def bucket_epoch_key(bucket: int) -> str:
    """The epoch record of ``bucket``."""
    return f"{bucket_tag(bucket)}:e"


#: the expiry sweep's position (chalicelib.pipeline.expiry)
SWEEP_POSITION_KEY = "ss:sweep"


#: KEYS of LEASE_SCRIPT: the lease and the successor waiting, one hash slot
RELAY_LEASE_KEYS = ("ss:{relay}:lease", "ss:{relay}:next")


def outbox_keys(bucket: int) -> tuple[str, str]:
    tag = bucket_tag(bucket)
    return f"{tag}:ob", f"{tag}:od"


# How an owner's index and its sessions stay consistent, with no script
# crossing a slot (the index is in the owner's slot, each session in its
# bucket's).  The index may hold ids that are not (yet) the owner's sessions;
# it never lacks one that is:
#
#   create (owner o, id x)              revoke-all (owner o)
#   t0  ZADD so:{o}:i x                 (registered BEFORE the create script)
#                                       t1  starts; reads the index: x
#                                       t2  x has no key, no marker:
#                                           BLOCK_SCRIPT tombstones x (v1, D)
#   t3  CREATE_SCRIPT finds the
#       tombstone: 409, never created
#                                       t4  ZREM x (only after x is dealt with)
#
# If t3 comes before t2, revoke-all finds x live and deletes it (DELETE_SCRIPT,
# through SessionService.delete).  At t1 the revoke-all moves what the index
# holds into its own set (REVOKE_BEGIN_SCRIPT) and walks only that set: a
# create whose ZADD comes after t1 started after the revoke-all did and is
# left alone, however many of them race it.  A create that crashed
# between t0 and t3 leaves a stale entry: a listing skips it (no session),
# a revoke-all tombstones the id.  An entry whose id turns out to be another
# owner's (its create failed: the id was taken) or a tombstone is final and
# dropped by whoever reads it; an entry with no key is kept (a create may be
# in flight, or an expired session may come back from PostgreSQL).

def owner_index_key(owner_id: str) -> str:
    """The owner's index, in a slot of its own: owner ids have no braces,
    so the whole id is the hash tag."""
    return owner_revoke_keys(owner_id)[0]


def owner_revoke_keys(owner_id: str) -> tuple[str, str, str]:
    """A revoke-all's keys, in the owner's slot: the index, the ids still to
    revoke, the position of its PostgreSQL walk (REVOKE_BEGIN_SCRIPT's KEYS)."""
    tag = "so:{%s}" % owner_id
    return f"{tag}:i", f"{tag}:r", f"{tag}:p"


def tenant_sessions_key(tenant: str) -> str:
    """The tenant's count of live sessions (scripts/tenant_count.lua), in a
    slot of its own: tenant names have no braces."""
    return "st:{%s}:live" % tenant
