"""The session store: hot session state in Redis with atomic compare-and-set.

Key layout (every key of a session shares one hash tag, so each script
touches one hash slot and runs unchanged on Redis Cluster)::

    ss:{NNNN}:s:<id>   the session: "<version>|<created>|<updated>|<ttl>|<L|D><epoch>[@<owner>]|<state JSON>"
                       (one string: one GET to read it, no per-field overhead;
                       the epoch is 8 hex digits, see _LUA_PARSE; "@<owner>"
                       only for a session created with an owner, so values
                       written before owners existed read unchanged)
    ss:{NNNN}:m:<id>   version marker "<version>|<L|D|E>", outlives the session
                       (recovery never serves an older version; ids are not reused;
                       E: the lifetime ended, EXPIRE_SCRIPT)
    ss:{NNNN}:ob       outbox index: ZSET event id -> enqueue time (ms)
    ss:{NNNN}:od       outbox data:  HASH event id -> event JSON
    ss:{NNNN}:e        epoch record "<epoch>|<ms first seen>" (SETTLE_SCRIPT)
    ss:{NNNN}:h:<id>   hold record of a session Redis lost (HOLD_SCRIPT), short-lived
    ss:{NNNN}:i:<id>:<key>  idempotency record of a keyed write: "<fingerprint>|<event>",
                       written by the write's own script, expires (idempotency_ttl)

and, in the owner's own slot (its id is the hash tag; owner ids have no braces)::

    so:{<owner>}:i     owner index: ZSET (all scores 0, so ordered by id) of
                       the ids created with this owner, registered BEFORE
                       their create script runs (see the timeline above ``owner_index_key``)

``NNNN`` is a bucket, crc32(id) mod ``BUCKETS``: the outbox of a bucket lives
beside its sessions, so the write and its outbox entry are one atomic script,
and the relay scans a fixed set of ``BUCKETS`` outboxes instead of KEYS/SCAN.
``BUCKETS`` is part of the data format: changing it orphans existing keys.

Each mutation is ONE Lua script: it checks the version, writes the state,
bumps the version, refreshes the TTL, updates the marker, records the outbox
entry and publishes the change on Pub/Sub.  The script builds the change
event itself (the same bytes go to Pub/Sub, the outbox and SQS).

Redis may forget (eviction, a failover to a replica that lacked the last
writes, a restart without persistence, a flush) while PostgreSQL remembers.
The store never decides alone what that means: it reports it, and the
service (``chalicelib.service.sessions``) asks PostgreSQL.  ``IdUnknown``: a create
of an id Redis has no trace of; ``EpochChanged``: a value written before
Redis's data last went back in time; ``KeyMissing``: a key gone, its marker
left.  Store methods take ``floor`` / ``known_absent`` with what PostgreSQL
said; their defaults trust Redis (a store without PostgreSQL behind it).
"""
from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from chalicelib.adapters.redis.client import RedisClient, primaries
from chalicelib.config import DEFAULT_IDEMPOTENCY_KEY_TTL
from chalicelib.domain.errors import (
    ConcurrencyError,
    IdempotencyKeyReused,
    ServiceUnavailable,
    SessionExists,
    SessionExpired,
    SessionNotFound,
)
from chalicelib.domain.events import CREATED, DELETED, EVENT_SCHEMA_VERSION, EXPIRED, TOUCHED, UPDATED
from chalicelib.domain.idempotency import Idempotency
from chalicelib.domain.session import Session

BUCKETS = 1024

Clock = Callable[[], float]

# Shared by every script.
#
# epoch(): the first 8 hex digits of the node's replication id.  Redis
# changes it when its data may have gone back in time: a replica promoted
# by a failover (its copy may lack the primary's last writes), a restart
# without persistence, a node that resynchronised from another primary.
# Every session value carries the epoch it was written or verified in
# (after its L/D flag); a value from another epoch may be older than what
# PostgreSQL holds, so it is served or written again only once PostgreSQL
# confirmed it (``floor``: the version PostgreSQL holds).
#
# The event's schema version and type names come from the domain
# (chalicelib.domain.events), so the scripts cannot drift from the reader.
_LUA_PARSE = f"""
local EVENT_SCHEMA_VERSION = {EVENT_SCHEMA_VERSION}
local CREATED, UPDATED, DELETED = '{CREATED}', '{UPDATED}', '{DELETED}'
local TOUCHED, EXPIRED = '{TOUCHED}', '{EXPIRED}'
""" + r"""
local function epoch()
  return string.sub(string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)'), 1, 8)
end
-- o: the owner suffix "@<owner>" after the epoch, '' when none
local function parse(raw)
  local v, c, u, t, f, e, o = string.match(raw, '^(%d+)|([^|]*)|([^|]*)|(%d+)|(%u)(%x*)([^|]*)|')
  return tonumber(v), c, u, tonumber(t), f, e, o
end
-- Redis's own clock, in ms: one clock for every client
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function head(v, c, u, t, f)
  return v .. '|' .. c .. '|' .. u .. '|' .. t .. '|' .. f
end
-- the version marker "<version>|<L|D>": its version and whether it is a
-- deletion's, or nil when there is none
local function marker()
  local m = redis.call('GET', KEYS[2])
  if not m then return nil end
  return tonumber(string.match(m, '^(%d+)')), string.sub(m, -2) == '|D'
end
-- days since 1970-01-01 of a civil date, and back (H. Hinnant's
-- algorithms): Lua in Redis has no os.date
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + math.floor((153 * mp + 2) / 5) + d - 1
  return era * 146097 + doe - 719468
end
local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, doy - math.floor((153 * mp + 2) / 5) + 1
end
-- an ISO UTC time "YYYY-MM-DDTHH:MM:SS.mmmZ" plus whole seconds, in the
-- same format: expires_at = the write's time + its TTL (domain.session's
-- iso_plus_seconds computes the same)
local function iso_plus(iso, secs)
  local y, mo, d, h, mi, s, ms = string.match(iso, '^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)%.(%d+)Z$')
  local t = ((days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 24 + tonumber(h)) * 60
             + tonumber(mi)) * 60 + tonumber(s) + secs
  local day = math.floor(t / 86400)
  local r = t - day * 86400
  local yy, mm, dd = civil_from_days(day)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.', yy, mm, dd, math.floor(r / 3600),
                       math.floor((r % 3600) / 60), r % 60) .. ms .. 'Z'
end
-- o: the owner suffix ("@<owner>" or ''): every event of an owned session names its owner
-- expires: when the lifetime ends, nil for the write's time + ttl
local function event(kind, sid, version, created, now_iso, ttl, state, o, expires)
  return '{"schema_version":' .. EVENT_SCHEMA_VERSION .. ',"event_id":"' .. sid .. ':' .. version ..
    '","event_type":"' .. kind .. '","session_id":"' .. sid ..
    '","version":' .. version .. ',"created_at":"' .. created ..
    '","occurred_at":"' .. now_iso .. '","expires_at":"' .. (expires or iso_plus(now_iso, ttl)) ..
    '","ttl_seconds":' .. ttl ..
    (o ~= '' and (',"owner_id":"' .. string.sub(o, 2) .. '"') or '') ..
    ',"state":' .. state .. '}'
end
local function emit(ev, sid, version, now_ms, channel)
  local eid = sid .. ':' .. version
  redis.call('ZADD', KEYS[3], now_ms, eid)
  redis.call('HSET', KEYS[4], eid, ev)
  redis.call('PUBLISH', channel, ev)
end
-- nil when the session may be written; else the reply that refuses it.
-- A value from another epoch needs the floor PostgreSQL gave ('' = not
-- asked yet) and must not be behind it.
local function check_epoch(v, e, ep, floor)
  if e == ep then return nil end
  if floor == '' then return {'unverified', v} end
  if v < tonumber(floor) then return {'behind', v} end
  return nil
end
-- the version marker; a marker TTL of 0 means none: volatile-* eviction
-- policies never take a key without one (SESSION_MARKER_TTL)
local function set_marker(value, marker_ttl, ttl)
  if marker_ttl > 0 then
    redis.call('SET', KEYS[2], value, 'EX', math.max(marker_ttl, ttl))
  else
    redis.call('SET', KEYS[2], value)
  end
end
-- Idempotency-Key (chalicelib.domain.idempotency): a keyed write passes its
-- record as KEYS[5] (same hash tag: same slot), and its fingerprint and the
-- record's TTL as two extra ARGV; a write without a key passes neither, so
-- it costs what it did.  The record is checked before anything else (a
-- replay needs neither the session nor PostgreSQL) and written with the
-- write it names; a refused write records nothing, so its retry runs again.
-- nil: no key, or a key not seen; else the reply that ends the script
local function replayed(fp)
  if not KEYS[5] then return nil end
  local rec = redis.call('GET', KEYS[5])
  if not rec then return nil end
  if string.sub(rec, 1, 64) ~= fp then return {'reused'} end
  return {'replay', string.sub(rec, 66)}
end
-- the record of a committed keyed write: its fingerprint and event; it
-- always carries a TTL (a day at least), so it never outlives its use
local function remember(fp, ttl, ev)
  if KEYS[5] then redis.call('SET', KEYS[5], fp .. '|' .. ev, 'EX', ttl) end
end
-- the missing-key replies of update and delete (and touch): a marker of a
-- lifetime that ended (EXPIRE_SCRIPT) is final, as a deletion's is
local function missing()
  local mv, deleted = marker()
  if not mv then return {'missing', 0} end
  if deleted then return {'deleted', mv} end
  if string.sub(redis.call('GET', KEYS[2]), -2) == '|E' then return {'expired', mv} end
  return {'missing', mv}
end
"""

# KEYS[1] session  KEYS[2] marker  KEYS[3] outbox index  KEYS[4] outbox data
# ARGV[1] session id  ARGV[2] state JSON  ARGV[3] now ISO  ARGV[4] now ms
# ARGV[5] ttl seconds  ARGV[6] marker ttl seconds  ARGV[7] channel
# ARGV[8] '1' when PostgreSQL has no such session (or there is none), '0' not asked
# ARGV[9] owner id, or '' (none)
# KEYS[5], ARGV[10] fingerprint, ARGV[11] record ttl: only with an Idempotency-Key
# returns {'ok', event} | {'exists', version, deleted 0/1}
#       | {'unknown'}: Redis knows nothing of the id; ask PostgreSQL (ids are
#         never reused, and Redis may have forgotten one: eviction, failover)
#       | {'replay', event}: the key's recorded write | {'reused'}: the key's, another request
CREATE_SCRIPT = _LUA_PARSE + r"""
local done = replayed(ARGV[10])
if done then return done end
local raw = redis.call('GET', KEYS[1])
if raw then
  local v, _, _, _, flag = parse(raw)
  return {'exists', v, flag == 'D' and 1 or 0}
end
local mv, deleted = marker()
if mv then return {'exists', mv, deleted and 1 or 0} end
if ARGV[8] ~= '1' then return {'unknown'} end
local ttl = tonumber(ARGV[5])
local o = ARGV[9] ~= '' and ('@' .. ARGV[9]) or ''
redis.call('SET', KEYS[1], head(1, ARGV[3], ARGV[3], ttl, 'L') .. epoch() .. o .. '|' .. ARGV[2], 'EX', ttl)
set_marker('1|L', tonumber(ARGV[6]), ttl)
local ev = event(CREATED, ARGV[1], 1, ARGV[3], ARGV[3], ttl, ARGV[2], o)
emit(ev, ARGV[1], 1, ARGV[4], ARGV[7])
remember(ARGV[10], ARGV[11], ev)
return {'ok', ev}
"""

# KEYS as CREATE_SCRIPT
# ARGV[1] session id  ARGV[2] state JSON  ARGV[3] expected version or '' (any: If-Match *)
# ARGV[4] now ISO  ARGV[5] now ms  ARGV[6] marker ttl seconds  ARGV[7] channel
# ARGV[8] floor: the version PostgreSQL holds, or '' (not asked)
# ARGV[9] a new ttl seconds, or '' (keep the session's)
# KEYS[5], ARGV[10] fingerprint, ARGV[11] record ttl: only with an Idempotency-Key
# returns {'ok', event, created} | {'conflict', actual} | {'deleted', version}
#       | {'missing', marker version or 0} | {'unverified', version} | {'behind', version}
#       | {'expired', marker version} | {'replay', event} | {'reused'}, as CREATE_SCRIPT
UPDATE_SCRIPT = _LUA_PARSE + r"""
local done = replayed(ARGV[10])
if done then return done end
local raw = redis.call('GET', KEYS[1])
if not raw then return missing() end
local v, created, _, ttl, flag, e, o = parse(raw)
-- a caller without ARGV[9] (the bench's floors) keeps the TTL too
if ARGV[9] and ARGV[9] ~= '' then ttl = tonumber(ARGV[9]) end
if flag == 'D' then return {'deleted', v} end
local ep = epoch()
local refused = check_epoch(v, e, ep, ARGV[8])
if refused then return refused end
if ARGV[3] ~= '' and v ~= tonumber(ARGV[3]) then return {'conflict', v} end
v = v + 1
redis.call('SET', KEYS[1], head(v, created, ARGV[4], ttl, 'L') .. ep .. o .. '|' .. ARGV[2], 'EX', ttl)
set_marker(v .. '|L', tonumber(ARGV[6]), ttl)
local ev = event(UPDATED, ARGV[1], v, created, ARGV[4], ttl, ARGV[2], o)
emit(ev, ARGV[1], v, ARGV[5], ARGV[7])
remember(ARGV[10], ARGV[11], ev)
return {'ok', ev, created}
"""

# KEYS as CREATE_SCRIPT
# ARGV[1] session id  ARGV[2] expected version or '' (unconditional)
# ARGV[3] now ISO  ARGV[4] now ms  ARGV[5] marker ttl seconds  ARGV[6] channel
# ARGV[7] floor, as UPDATE_SCRIPT's ARGV[8]
# KEYS[5], ARGV[8] fingerprint, ARGV[9] record ttl: only with an Idempotency-Key
# returns {'ok', event, version} | as UPDATE_SCRIPT
# The tombstone keeps the session's TTL (at least the session TTL): a write
# still in flight with an old version fails its check instead of recreating.
# A tombstone is trusted whatever its epoch: a deletion is final.
DELETE_SCRIPT = _LUA_PARSE + r"""
local done = replayed(ARGV[8])
if done then return done end
local raw = redis.call('GET', KEYS[1])
if not raw then return missing() end
local v, created, _, ttl, flag, e, o = parse(raw)
if flag == 'D' then return {'deleted', v} end
local ep = epoch()
local refused = check_epoch(v, e, ep, ARGV[7])
if refused then return refused end
if ARGV[2] ~= '' and v ~= tonumber(ARGV[2]) then return {'conflict', v} end
v = v + 1
redis.call('SET', KEYS[1], head(v, created, ARGV[3], ttl, 'D') .. ep .. o .. '|null', 'EX', ttl)
set_marker(v .. '|D', tonumber(ARGV[5]), ttl)
local ev = event(DELETED, ARGV[1], v, created, ARGV[3], ttl, 'null', o)
emit(ev, ARGV[1], v, ARGV[4], ARGV[6])
remember(ARGV[8], ARGV[9], ev)
return {'ok', ev, v}
"""

# KEYS as CREATE_SCRIPT
# ARGV[1] session id  ARGV[2] expected version or '' (any)
# ARGV[3] now ISO  ARGV[4] now ms  ARGV[5] marker ttl seconds  ARGV[6] channel
# ARGV[7] floor, as UPDATE_SCRIPT's ARGV[8]  ARGV[8] a new ttl seconds or '' (keep)
# KEYS[5], ARGV[9] fingerprint, ARGV[10] record ttl: only with an Idempotency-Key
# returns {'ok', event, version, created, ttl, state JSON} | as UPDATE_SCRIPT
# Extends the lifetime without changing the state: a write like any other
# (version bump, marker, outbox entry, Pub/Sub), of type session_touched,
# carrying the unchanged state so that PostgreSQL's latest row stays whole.
TOUCH_SCRIPT = _LUA_PARSE + r"""
local done = replayed(ARGV[9])
if done then return done end
local raw = redis.call('GET', KEYS[1])
if not raw then return missing() end
local v, created, u, ttl, flag, e, o = parse(raw)
if flag == 'D' then return {'deleted', v} end
local ep = epoch()
local refused = check_epoch(v, e, ep, ARGV[7])
if refused then return refused end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= v then return {'conflict', v} end
local state = string.sub(raw, #head(v, created, u, ttl, flag) + #e + #o + 2)
if ARGV[8] ~= '' then ttl = tonumber(ARGV[8]) end
v = v + 1
redis.call('SET', KEYS[1], head(v, created, ARGV[3], ttl, 'L') .. ep .. o .. '|' .. state, 'EX', ttl)
set_marker(v .. '|L', tonumber(ARGV[5]), ttl)
local ev = event(TOUCHED, ARGV[1], v, created, ARGV[3], ttl, state, o)
emit(ev, ARGV[1], v, ARGV[4], ARGV[6])
remember(ARGV[9], ARGV[10], ev)
return {'ok', ev, v, created, ttl, state}
"""

# KEYS as CREATE_SCRIPT
# ARGV[1] session id  ARGV[2] the version PostgreSQL holds (its lifetime ended)
# ARGV[3] now ISO  ARGV[4] now ms  ARGV[5] marker ttl seconds  ARGV[6] channel
# ARGV[7] created ISO  ARGV[8] ttl seconds  ARGV[9] the expires_at that passed
# ARGV[10] '1': no marker is acceptable (the caller held the session for the
#          settle time and read PostgreSQL again), '0': it is not
# ARGV[11] the owner suffix ('@' .. owner, or ''): the event names the owner
# returns {'expired', event} | {'alive'} (a key: live, kept by reads, or a
#         tombstone on its way) | {'final', version} (a deletion's or an
#         expiry's marker) | {'ahead', marker version} (Redis acknowledged a
#         write PostgreSQL lacks) | {'behind', marker version} | {'unknown'}
# The expiry sweep's write: the lifetime ended only if the key is really
# gone (not merely lost ahead of a newer write) and Redis acknowledged
# exactly what PostgreSQL holds.  A final marker, one version on (the id is
# never reused; recovery answers SessionExpired), and a session_expired
# event through the outbox: a normal write, so the pipeline persists it
# once.  A second sweep finds the marker final and writes nothing.
EXPIRE_SCRIPT = _LUA_PARSE + r"""
if redis.call('EXISTS', KEYS[1]) == 1 then return {'alive'} end
local mv, deleted = marker()
local pg = tonumber(ARGV[2])
if mv then
  if deleted or string.sub(redis.call('GET', KEYS[2]), -2) == '|E' then return {'final', mv} end
  if mv > pg then return {'ahead', mv} end
  if mv < pg then return {'behind', mv} end
elseif ARGV[10] ~= '1' then
  return {'unknown'}
end
local v = pg + 1
local ttl = tonumber(ARGV[8])
set_marker(v .. '|E', tonumber(ARGV[5]), ttl)
local ev = event(EXPIRED, ARGV[1], v, ARGV[7], ARGV[3], ttl, 'null', ARGV[11], ARGV[9])
emit(ev, ARGV[1], v, ARGV[4], ARGV[6])
return {'expired', ev}
"""

# KEYS[1] session
# returns as GET_SCRIPT
# GET_SCRIPT that also slides the key's TTL (SESSION_SLIDE_ON_READ): a live
# value of the node's epoch gets its full TTL again, in the same step as
# the read, so a key read just before it expires cannot vanish under the
# read.  Nothing else changes: no version, no event, no marker (a read
# never writes to PostgreSQL; docs/decisions/session-lifetime.md).
SLIDE_GET_SCRIPT = _LUA_PARSE + r"""
local raw = redis.call('GET', KEYS[1])
if not raw then return {} end
local _, _, _, t, f, e = parse(raw)
local current = e == epoch()
if current and f == 'L' then redis.call('EXPIRE', KEYS[1], t) end
return {raw, current and 1 or 0}
"""

# KEYS[1] session  KEYS[2] marker
# ARGV[1] the stored value's head (version to flag)  ARGV[2] its version
# ARGV[3] ttl seconds  ARGV[4] marker ttl  ARGV[5] owner suffix ('@' .. owner, or '') .. '|' .. state JSON
# ARGV[6] 'absent': only into an absent key | 'repair': also over an older version
# returns {'restored'} | {'exists'} | {'behind', marker version}
# Writes a session recovered from PostgreSQL back without clobbering a
# concurrent create or update (the key must still be absent, or, to repair a
# Redis that went back in time, hold an older version) and without going
# back in time (the marker must not be ahead of the recovered version).
RESTORE_SCRIPT = _LUA_PARSE + r"""
local version = tonumber(ARGV[2])
local raw = redis.call('GET', KEYS[1])
if raw then
  local v = parse(raw)
  if ARGV[6] ~= 'repair' or v >= version then return {'exists'} end
end
local mv = marker()
if mv and mv > version then return {'behind', mv} end
redis.call('SET', KEYS[1], ARGV[1] .. epoch() .. ARGV[5], 'EX', ARGV[3])
set_marker(ARGV[2] .. '|' .. string.sub(ARGV[1], -1), tonumber(ARGV[4]), tonumber(ARGV[3]))
return {'restored'}
"""

# KEYS[1] session
# ARGV[1] the version the caller read  ARGV[2] floor (the version PostgreSQL holds)
# returns {'ok'} | {'changed'} (another write came first: it carries the
#         epoch already) | {'behind', version}
# Marks a value of another epoch as confirmed by PostgreSQL, keeping its TTL.
VOUCH_SCRIPT = _LUA_PARSE + r"""
local raw = redis.call('GET', KEYS[1])
if not raw then return {'changed'} end
local v, c, u, t, f, e = parse(raw)
if v < tonumber(ARGV[2]) then return {'behind', v} end
if v ~= tonumber(ARGV[1]) then return {'changed'} end
local ep = epoch()
if e ~= ep then
  local h = head(v, c, u, t, f)
  redis.call('SET', KEYS[1], h .. ep .. string.sub(raw, #h + #e + 1), 'KEEPTTL')
end
return {'ok'}
"""

# KEYS[1] the bucket's epoch record "<epoch>|<ms when first seen>"
# ARGV[1] settle time in ms
# ARGV[2] '1': a missing record means a new deployment, already settled,
#         unless the caller saw the node in another epoch (ARGV[3]) before
# ARGV[3] the first epoch the caller saw this node in, or ''
# returns {ms left to wait, 0 | 1 (the record was of another epoch) | 2 (no
#          record: Redis lost it, or a new deployment), the node's epoch}
# After Redis went back in time, a session it may hold stale waits until
# the changes still in the queue had time to reach PostgreSQL.  The first
# call in a new epoch starts the clock (Redis's own: one clock for all); a
# record of a new deployment is written as settled long ago.
SETTLE_SCRIPT = _LUA_PARSE + r"""
local ep = epoch()
local now = now_ms()
local rec = redis.call('GET', KEYS[1])
if rec and string.sub(rec, 1, 8) == ep then
  local left = tonumber(ARGV[1]) - (now - tonumber(string.sub(rec, 10)))
  return {math.max(0, left), 0, ep}
end
if not rec and ARGV[2] == '1' and (ARGV[3] == '' or ARGV[3] == ep) then
  redis.call('SET', KEYS[1], ep .. '|0')
  return {0, 2, ep}
end
redis.call('SET', KEYS[1], ep .. '|' .. now)
return {tonumber(ARGV[1]), rec and 1 or 2, ep}
"""

# KEYS[1] the session's hold record "<ms when first seen>"
# ARGV[1] settle time in ms
# returns ms left to wait
# Redis has no trace of a session PostgreSQL knows (its key and marker were
# lost): the same wait as SETTLE_SCRIPT's, for this one session, from the
# first time it is noticed.  The record expires well after the wait.
HOLD_SCRIPT = _LUA_PARSE + r"""
local settle = tonumber(ARGV[1])
if settle <= 0 then return 0 end
local now = now_ms()
local since = redis.call('GET', KEYS[1])
if not since then
  redis.call('SET', KEYS[1], now, 'PX', 3 * settle + 60000)
  return settle
end
return math.max(0, settle - (now - tonumber(since)))
"""

# KEYS[1] any key of the slot whose node is asked
# returns the node's epoch: the step every write script and verified read
# carries (``sessionsync bench`` times it alone)
EPOCH_SCRIPT = _LUA_PARSE + r"""
return epoch()
"""

# KEYS[1] session
# returns {} (no key) | {value, 1 if it carries the node's epoch else 0}
# A read that must not serve a value from before Redis went back in time:
# the epoch is compared on the node, in the same round trip (a cached epoch
# would leave a window after a failover, and a read-only process sees no
# error to tell it).
GET_SCRIPT = _LUA_PARSE + r"""
local raw = redis.call('GET', KEYS[1])
if not raw then return {} end
local _, _, _, _, _, e = parse(raw)
return {raw, e == epoch() and 1 or 0}
"""


# KEYS as CREATE_SCRIPT
# ARGV[1] session id  ARGV[2] now ISO  ARGV[3] now ms  ARGV[4] ttl seconds
# ARGV[5] marker ttl seconds  ARGV[6] channel  ARGV[7] as CREATE_SCRIPT's ARGV[8]
# ARGV[8] owner id
# returns {'ok', event} | {'exists'} (a key or a marker: the id was created;
#         delete it the usual way) | {'unknown'} (as CREATE_SCRIPT's)
# A revoke-all tombstones an id its owner registered whose create has not
# run (yet, or ever: a create that failed or crashed after registering): a
# deleted version 1, shipped like any deletion.  The create that comes later
# finds it and fails (SessionExists), as for any deleted id: ids are never
# reused.  See the timeline above ``owner_index_key``.
BLOCK_SCRIPT = _LUA_PARSE + r"""
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return {'exists'}
end
if ARGV[7] ~= '1' then return {'unknown'} end
local ttl = tonumber(ARGV[4])
local o = '@' .. ARGV[8]
redis.call('SET', KEYS[1], head(1, ARGV[2], ARGV[2], ttl, 'D') .. epoch() .. o .. '|null', 'EX', ttl)
set_marker('1|D', tonumber(ARGV[5]), ttl)
local ev = event(DELETED, ARGV[1], 1, ARGV[2], ARGV[2], ttl, 'null', o)
emit(ev, ARGV[1], 1, ARGV[3], ARGV[6])
return {'ok', ev}
"""

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
# through SessionService.delete).  A create whose ZADD comes after t1 started
# after the revoke-all did and may survive it.  A create that crashed
# between t0 and t3 leaves a stale entry: a listing skips it (no session),
# a revoke-all tombstones the id.  An entry whose id turns out to be another
# owner's (its create failed: the id was taken) or a tombstone is final and
# dropped by whoever reads it; an entry with no key is kept (a create may be
# in flight, or an expired session may come back from PostgreSQL).

def owner_index_key(owner_id: str) -> str:
    """The owner's index, in a slot of its own: owner ids have no braces,
    so the whole id is the hash tag."""
    return "so:{%s}:i" % owner_id


@dataclass(frozen=True)
class SessionSample:
    """A session as a diagnosis sees it: its head and its TTL, not its state."""

    session_id: str
    version: int
    deleted: bool
    ttl_setting: int
    ttl_left: int  # -1: no expiry, -2: gone


@dataclass(frozen=True)
class WriteResult:
    """A committed write: the new session and the change event to ship."""

    session: Session
    event_id: str
    event_json: str
    #: the recorded outcome of an earlier write with the same Idempotency-Key:
    #: nothing was written now, and its event was shipped by that write
    replayed: bool = False


def bucket_of(session_id: str) -> int:
    return zlib.crc32(session_id.encode()) % BUCKETS


def bucket_tag(bucket: int) -> str:
    return "ss:{%04d}" % bucket


# every session key, on whichever node (SessionStore.sample)
SESSION_KEY_PATTERN = "ss:*:s:*"
# A stored session starts "<version>|<created>|<updated>|<ttl>|<L|D><epoch>|":
# 128 bytes always cover that head, so a sample never reads the state.
_HEAD_BYTES = 128


def session_keys(session_id: str) -> list[str]:
    """KEYS for the mutation scripts: session, marker, outbox index, outbox data."""
    tag = bucket_tag(bucket_of(session_id))
    return [f"{tag}:s:{session_id}", f"{tag}:m:{session_id}", f"{tag}:ob", f"{tag}:od"]


def hold_key(session_id: str) -> str:
    """The hold record of a session Redis lost (HOLD_SCRIPT)."""
    return f"{bucket_tag(bucket_of(session_id))}:h:{session_id}"


def idempotency_key(session_id: str, key: str) -> str:
    """The record of a write with Idempotency-Key ``key`` on ``session_id``:
    in the session's slot, so the write's script holds it (KEYS[5])."""
    return f"{bucket_tag(bucket_of(session_id))}:i:{session_id}:{key}"


def epoch_key(session_id: str) -> str:
    """The epoch record of ``session_id``'s bucket (SETTLE_SCRIPT)."""
    return f"{bucket_tag(bucket_of(session_id))}:e"


def outbox_keys(bucket: int) -> tuple[str, str]:
    tag = bucket_tag(bucket)
    return f"{tag}:ob", f"{tag}:od"


def key_names(session_id: str) -> dict[str, str]:
    """Every Redis key that concerns a session, by role, for operators
    (``sessionsync key --all``): its own session, marker and hold keys, and
    its bucket's outbox index and data and epoch record (shared with the
    other sessions of the bucket)."""
    session, marker, outbox_index, outbox_data = session_keys(session_id)
    return {"session": session, "marker": marker, "outbox_index": outbox_index,
            "outbox_data": outbox_data, "epoch": epoch_key(session_id), "hold": hold_key(session_id)}


# outbox_pending counts this many buckets first: enough to cover a page
# when a backlog is waiting, without counting every bucket for each page
_OUTBOX_FIRST_WINDOW = 64


# (epoch second, its "YYYY-MM-DDTHH:MM:SS"): iso_utc formats each second once
_second: tuple[int | None, str] = (None, "")


def iso_utc(epoch_seconds: float) -> str:
    """``2026-11-28T16:33:30.405Z``, exactly what
    ``datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"``
    gives (half-even to the microsecond, then milliseconds truncated), with
    the date and time formatted once per second instead of on every write
    (the gain is in docs/performance.md).
    """
    global _second
    whole = int(epoch_seconds // 1)
    micro = round((epoch_seconds - whole) * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return "%s.%03dZ" % (cached[1], micro // 1000)


def decode_session(session_id: str, raw: bytes | str) -> Session:
    """The stored value as a Session (its flag field is L or D, then the
    epoch, which only the scripts compare)."""
    if isinstance(raw, bytes):
        raw = raw.decode()
    version, created, updated, ttl, flag, state = raw.split("|", 5)
    # flag: "L" or "D", the epoch, then "@<owner>" for an owned session
    owner = flag.split("@", 1)[1] if "@" in flag else None
    return Session(session_id, int(version), state, created, updated, int(ttl), flag[0] == "D",
                   owner)


def _decode_marker(raw: bytes) -> tuple[int, bool]:
    """(version, deleted) from a marker "<version>|<L|D>"."""
    version, flag = raw.decode().split("|")
    return int(version), flag == "D"


def _encode_head(session: Session) -> str:
    """The stored value up to its flag; the script appends the epoch and
    ``|`` + state (see the module docstring)."""
    return "%d|%s|%s|%d|%s" % (session.version, session.created_at, session.updated_at,
                               session.ttl_seconds, "D" if session.deleted else "L")


class SessionStore:
    """Create, read, compare-and-set and delete sessions in Redis.

    Takes its Redis client (single node or cluster) from outside.  Every
    method raises ``ServiceUnavailable`` when Redis cannot be reached in
    time, and the domain errors its docstring names.
    """

    def __init__(self, client: RedisClient, *, marker_ttl: int = 0,
                 channel: str = "session-updates", clock: Clock = time.time,
                 idempotency_ttl: int = DEFAULT_IDEMPOTENCY_KEY_TTL) -> None:
        self.client = client
        self.marker_ttl = marker_ttl
        self.idempotency_ttl = idempotency_ttl
        self.channel = channel
        self.clock = clock
        self._create = client.register_script(CREATE_SCRIPT)
        self._update = client.register_script(UPDATE_SCRIPT)
        self._delete = client.register_script(DELETE_SCRIPT)
        self._restore = client.register_script(RESTORE_SCRIPT)
        self._vouch = client.register_script(VOUCH_SCRIPT)
        self._get_verified = client.register_script(GET_SCRIPT)
        self._settle = client.register_script(SETTLE_SCRIPT)
        self._hold = client.register_script(HOLD_SCRIPT)
        self._block = client.register_script(BLOCK_SCRIPT)
        self._touch = client.register_script(TOUCH_SCRIPT)
        self._expire = client.register_script(EXPIRE_SCRIPT)
        self._slide_get = client.register_script(SLIDE_GET_SCRIPT)
        # node -> the first epoch this process saw it in (SETTLE_SCRIPT)
        self._epochs_seen: dict[str, str] = {}

    # -- reads --------------------------------------------------------------

    def get(self, session_id: str, *, verify: bool = False, slide: bool = False) -> Session | None:
        """The live session, or None when Redis has no key for it.

        Raises SessionNotFound(deleted=True) for a tombstone, and, with
        ``verify``, EpochChanged for a value written before Redis's data
        last went back in time (PostgreSQL must confirm it: ``vouch``).
        With ``slide`` (SESSION_SLIDE_ON_READ) a live value of the node's
        epoch gets its full TTL again, atomically with the read
        (SLIDE_GET_SCRIPT; ``verify`` is implied).
        """
        key = session_keys(session_id)[0]
        with _redis_errors():
            try:
                reply = self._read(key, verify, slide)
            except redis.ConnectionError:
                # a pooled connection that broke (failover, restart): a read
                # is safe to repeat, once, on a fresh connection
                reply = self._read(key, verify, slide)
        if reply is None:
            return None
        raw, current = reply
        session = decode_session(session_id, raw)
        if session.deleted:  # a deletion is final, whatever the epoch
            raise SessionNotFound(session_id, deleted=True)
        if not current:
            raise EpochChanged(session_id, session.version, session)
        return session

    def _read(self, key: str, verify: bool, slide: bool = False) -> tuple[bytes | str, bool] | None:
        """(value, whether it carries the node's epoch), or None."""
        if slide:
            reply = self._run(self._slide_get, [key], [])
            # unverified, a value of another epoch is served as a plain GET
            # would (it is not slid: only one PostgreSQL confirmed is)
            return (reply[0], bool(reply[1]) or not verify) if reply else None
        if not verify:
            raw = self.client.get(key)
            return None if raw is None else (raw, True)
        reply = self._run(self._get_verified, [key], [])
        return (reply[0], bool(reply[1])) if reply else None

    def settle(self, session_id: str, seconds: float, *,
               unrecorded_settled: bool = False) -> tuple[float, bool]:
        """(seconds left before ``session_id``'s bucket has settled in Redis's
        current epoch, whether this shows Redis went back in time).

        See SETTLE_SCRIPT.  A bucket with no record is a new deployment or a
        Redis that lost everything: with ``unrecorded_settled`` it counts as
        settled, unless this process saw the node in another epoch before.
        Raises ServiceUnavailable.
        """
        key = epoch_key(session_id)
        node = self._node_name(key)
        # the FIRST epoch this process saw the node in: once it moved on, a
        # bucket without a record is one Redis lost, in every bucket (not
        # only the one where the move was noticed first)
        seen = self._epochs_seen.get(node, "")
        with _redis_errors():
            left, status, epoch = self._run(self._settle, [key], [
                int(seconds * 1000), "1" if unrecorded_settled else "0", seen])
        epoch = epoch.decode()
        self._epochs_seen.setdefault(node, epoch)
        moved = bool(seen) and seen != epoch
        if status == 2 and unrecorded_settled and not moved:
            return 0.0, False
        return int(left) / 1000, bool(status) or moved

    def hold(self, session_id: str, seconds: float) -> float:
        """Seconds left before a session Redis lost (key and marker) may be
        recovered from PostgreSQL: see HOLD_SCRIPT.  Raises ServiceUnavailable."""
        with _redis_errors():
            left = self._run(self._hold, [hold_key(session_id)], [int(seconds * 1000)])
        return int(left) / 1000

    def _node_name(self, key: str) -> str:
        get_node = getattr(self.client, "get_node_from_key", None)
        return get_node(key).name if get_node is not None else ""

    def vouch(self, session: Session, floor: int) -> bool:
        """Mark ``session`` (read from Redis) as confirmed by PostgreSQL,
        which holds ``floor`` <= its version.  False when another write came
        first.  Raises RedisBehind when Redis is below ``floor`` after all."""
        with _redis_errors():
            reply = self._run(self._vouch, session_keys(session.session_id)[:1],
                              [session.version, floor])
        if reply[0] == b"behind":
            raise RedisBehind(session.session_id, int(reply[1]))
        return reply[0] == b"ok"

    def marker(self, session_id: str) -> tuple[int, bool] | None:
        """(last acknowledged version, deleted) from the long-lived marker."""
        with _redis_errors():
            raw = cast("bytes | None", self.client.get(session_keys(session_id)[1]))
        return None if raw is None else _decode_marker(raw)

    def marker_flag(self, session_id: str) -> tuple[int, str] | None:
        """(last acknowledged version, flag) from the marker: ``L`` (live),
        ``D`` (deleted) or ``E`` (its lifetime ended: EXPIRE_SCRIPT)."""
        with _redis_errors():
            raw = cast("bytes | None", self.client.get(session_keys(session_id)[1]))
        if raw is None:
            return None
        version, flag = raw.decode().split("|")
        return int(version), flag

    # -- writes -------------------------------------------------------------

    def create(self, session_id: str, state_json: str, ttl_seconds: int, *,
               known_absent: bool = True, idempotency: Idempotency | None = None,
               owner_id: str | None = None) -> WriteResult:
        """Create version 1.  Raises SessionExists (also for a deleted id).

        ``owner_id`` is stored in the value (the owner's index is the
        caller's: ``owner_register`` first, see the timeline above ``owner_index_key``).

        With ``known_absent=False`` an id that Redis has no trace of raises
        IdUnknown instead of being created: the caller asks PostgreSQL
        whether it existed, then calls again with ``known_absent=True``.

        With ``idempotency``, a write already recorded under its key comes
        back as it was (``WriteResult.replayed``) before anything else is
        checked, and a key recorded for another request raises
        IdempotencyKeyReused; the same holds for ``update`` and ``delete``.
        """
        now = self.clock()
        now_iso = iso_utc(now)
        keys, args = self._keyed(session_id, idempotency, session_keys(session_id), [
            session_id, state_json, now_iso, int(now * 1000), ttl_seconds,
            self.marker_ttl, self.channel, "1" if known_absent else "0", owner_id or ""])
        with _redis_errors():
            reply = self._run(self._create, keys, args)
        if reply[0] in (b"replay", b"reused"):
            return self._replayed(session_id, reply, idempotency)
        if reply[0] == b"exists":
            raise SessionExists(session_id, version=int(reply[1]), deleted=bool(reply[2]))
        if reply[0] == b"unknown":
            raise IdUnknown(session_id)
        session = Session(session_id, 1, state_json, now_iso, now_iso, ttl_seconds,
                          owner_id=owner_id)
        return WriteResult(session, f"{session_id}:1", reply[1].decode())

    def update(self, session_id: str, state_json: str, expected_version: int | None, *,
               floor: int | None = 0, idempotency: Idempotency | None = None,
               ttl_seconds: int | None = None) -> WriteResult:
        """Replace the state if the session is at ``expected_version`` (None:
        at whatever version is current).

        ``floor`` is the version PostgreSQL holds (0: trust Redis), or None
        when PostgreSQL was not asked.  Raises ConcurrencyError (with the
        actual version), SessionNotFound (deleted, or absent everywhere Redis
        knows of), ``KeyMissing`` when only the marker remains (the caller
        may recover and retry), ``EpochChanged`` (``floor`` None and a value
        of another epoch: ask PostgreSQL, retry with its version) and
        ``RedisBehind`` (the value is older than ``floor``: repair it).
        ``ttl_seconds`` replaces the session's TTL (None: keep it); the
        lifetime slides from now either way.  SessionExpired: its lifetime
        ended (the expiry sweep's final marker).
        """
        now = self.clock()
        now_iso = iso_utc(now)
        keys, args = self._keyed(session_id, idempotency, session_keys(session_id), [
            session_id, state_json, "" if expected_version is None else expected_version,
            now_iso, int(now * 1000), self.marker_ttl, self.channel,
            "" if floor is None else floor, "" if ttl_seconds is None else ttl_seconds])
        with _redis_errors():
            reply = self._run(self._update, keys, args)
        if reply[0] in (b"replay", b"reused"):
            return self._replayed(session_id, reply, idempotency)
        self._raise_for(session_id, reply, expected_version)
        version = (expected_version + 1 if expected_version is not None
                   else json.loads(reply[1])["version"])
        ttl = _ttl_from_event(reply[1])
        session = Session(session_id, version, state_json, reply[2].decode(), now_iso, ttl,
                          owner_id=_event_owner(reply[1]))
        return WriteResult(session, f"{session_id}:{version}", reply[1].decode())

    def delete(self, session_id: str, expected_version: int | None = None, *,
               floor: int | None = 0, idempotency: Idempotency | None = None) -> WriteResult:
        """Replace the session with a versioned tombstone.

        Raises as ``update``; an absent ``expected_version`` deletes
        whatever version is current.
        """
        now = self.clock()
        now_iso = iso_utc(now)
        keys, args = self._keyed(session_id, idempotency, session_keys(session_id), [
            session_id, "" if expected_version is None else expected_version,
            now_iso, int(now * 1000), self.marker_ttl, self.channel,
            "" if floor is None else floor])
        with _redis_errors():
            reply = self._run(self._delete, keys, args)
        if reply[0] in (b"replay", b"reused"):
            return self._replayed(session_id, reply, idempotency)
        self._raise_for(session_id, reply, expected_version)
        version = int(reply[2])
        event = json.loads(reply[1])
        session = Session(session_id, version, "null", event["created_at"], now_iso,
                          event["ttl_seconds"], deleted=True, owner_id=event.get("owner_id"))
        return WriteResult(session, f"{session_id}:{version}", reply[1].decode())

    def touch(self, session_id: str, expected_version: int | None = None, *,
              floor: int | None = 0, ttl_seconds: int | None = None,
              idempotency: Idempotency | None = None) -> WriteResult:
        """Extend the lifetime from now without changing the state: a new
        version and a ``session_touched`` event (TOUCH_SCRIPT), with
        ``ttl_seconds`` as the new TTL if given.  Raises as ``update``."""
        now = self.clock()
        now_iso = iso_utc(now)
        keys, args = self._keyed(session_id, idempotency, session_keys(session_id), [
            session_id, "" if expected_version is None else expected_version,
            now_iso, int(now * 1000), self.marker_ttl, self.channel,
            "" if floor is None else floor, "" if ttl_seconds is None else ttl_seconds])
        with _redis_errors():
            reply = self._run(self._touch, keys, args)
        if reply[0] in (b"replay", b"reused"):
            return self._replayed(session_id, reply, idempotency)
        self._raise_for(session_id, reply, expected_version)
        version = int(reply[2])
        session = Session(session_id, version, reply[5].decode(), reply[3].decode(), now_iso,
                          int(reply[4]), owner_id=_event_owner(reply[1]))
        return WriteResult(session, f"{session_id}:{version}", reply[1].decode())

    def expire(self, session_id: str, persisted: Session, *,
               marker_absent_ok: bool = False) -> tuple[str, WriteResult | None]:
        """Record that ``persisted`` (PostgreSQL's latest, its lifetime
        ended) expired, if Redis agrees: EXPIRE_SCRIPT.  Returns (its reply:
        ``expired``, ``alive``, ``final``, ``ahead``, ``behind`` or
        ``unknown``; the write to ship when ``expired``).  Raises
        ServiceUnavailable."""
        now = self.clock()
        now_iso = iso_utc(now)
        version = persisted.version + 1
        with _redis_errors():
            reply = self._run(self._expire, session_keys(session_id), [
                session_id, persisted.version, now_iso, int(now * 1000), self.marker_ttl,
                self.channel, persisted.created_at, persisted.ttl_seconds, persisted.expires_at,
                "1" if marker_absent_ok else "0", _owner_suffix(persisted.owner_id)])
        status = reply[0].decode()
        if status != "expired":
            return status, None
        gone = Session(session_id, version, "null", persisted.created_at, now_iso,
                       persisted.ttl_seconds, expired=True, owner_id=persisted.owner_id)
        return status, WriteResult(gone, f"{session_id}:{version}", reply[1].decode())

    def restore(self, session: Session, *, repair: bool = False) -> Session | None:
        """Write a session recovered from PostgreSQL back if its key is
        absent, or, with ``repair``, also over an older version (a Redis that
        went back in time).

        Returns the session now in Redis (the restored one, or the one a
        concurrent writer put there first), or None if that one vanished too.
        Raises KeyBehind when the marker says Redis acknowledged a newer
        version than ``session`` (PostgreSQL lags the queue).
        """
        keys = session_keys(session.session_id)
        with _redis_errors():
            reply = self._run(self._restore, keys[:2], [
                _encode_head(session), session.version, session.ttl_seconds, self.marker_ttl,
                _owner_suffix(session.owner_id) + "|" + session.state_json,
                "repair" if repair else "absent"])
        if reply[0] == b"behind":
            raise KeyBehind(session.session_id, int(reply[1]))
        if reply[0] == b"restored":
            return session
        try:
            return self.get(session.session_id)
        except SessionNotFound:
            if session.deleted:
                raise
            return None

    def recorded(self, session_id: str, idempotency: Idempotency) -> WriteResult | None:
        """The write recorded under ``idempotency``'s key, as ``update``
        returns a replay, or None when there is none.  Raises
        IdempotencyKeyReused when the key was recorded for another request.

        For a write that must find out before it reads (a PATCH reads, then
        merges, then compares-and-sets: a replay after the session moved on
        would otherwise fail its read or its If-Match first); the write's
        script checks the record again, atomically with the write.
        """
        with _redis_errors():
            raw = cast("bytes | None", self.client.get(idempotency_key(session_id, idempotency.key)))
        if raw is None:
            return None
        fingerprint, event_json = raw.split(b"|", 1)
        if fingerprint.decode() != idempotency.fingerprint:
            return self._replayed(session_id, [b"reused"], idempotency)
        return self._replayed(session_id, [b"replay", event_json], idempotency)

    def _keyed(self, session_id: str, idempotency: Idempotency | None, keys: list[str],
               args: list[Any]) -> tuple[list[str], list[Any]]:
        """A write script's KEYS and ARGV, with the idempotency record, its
        fingerprint and TTL appended when the write has a key; unchanged
        (nothing more to send) when it has none."""
        if idempotency is None:
            return keys, args
        return ([*keys, idempotency_key(session_id, idempotency.key)],
                [*args, idempotency.fingerprint, self.idempotency_ttl])

    @staticmethod
    def _replayed(session_id: str, reply: Sequence, idempotency: Idempotency | None) -> WriteResult:
        """The write recorded under the key (a ``replay`` reply), rebuilt
        from its event exactly as the original call returned it; a
        ``reused`` reply raises IdempotencyKeyReused."""
        assert idempotency is not None  # only a keyed write gets these replies
        if reply[0] == b"reused":
            raise IdempotencyKeyReused(session_id, idempotency.key)
        event_json = reply[1]
        # the state is the event's last member, as the script wrote it: cut
        # out, not decoded and encoded again, so the body is the same bytes
        cut = event_json.index(b',"state":')
        head = json.loads(event_json[:cut] + b"}")
        state = event_json[cut + len(b',"state":'):-1].decode()
        deleted = head["event_type"] == DELETED
        session = Session(session_id, head["version"], state, head["created_at"], head["occurred_at"],
                          head["ttl_seconds"], deleted=deleted, replayed=True,
                          owner_id=head.get("owner_id"))
        return WriteResult(session, head["event_id"], event_json.decode(), replayed=True)

    def _run(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA ``script``, loading it first if the server lost it (a
        restart, a failover, SCRIPT FLUSH), as redis-py's ``Script.__call__``
        does, without its per-call import and pipeline check (what that
        saves on every write: docs/performance.md)."""
        try:
            return self.client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # EVAL, not SCRIPT LOAD then EVALSHA: two commands may reach two
            # nodes (after a failover, one connection on the new primary and
            # one still on the old), so the load could miss the node that then
            # runs the script.  EVAL runs it, and caches it, wherever it lands.
            return self.client.eval(script.script, len(keys), *keys, *args)

    @staticmethod
    def _raise_for(session_id: str, reply: Sequence, expected: int | None) -> None:
        status = reply[0]
        if status == b"ok":
            return
        if status == b"conflict":
            raise ConcurrencyError(session_id, expected_version=expected,
                                   actual_version=int(reply[1]))
        if status == b"deleted":
            raise SessionNotFound(session_id, deleted=True)
        if status == b"missing":
            raise KeyMissing(session_id, int(reply[1]))
        if status == b"unverified":
            raise EpochChanged(session_id, int(reply[1]))
        if status == b"behind":
            raise RedisBehind(session_id, int(reply[1]))
        if status == b"expired":
            raise SessionExpired(session_id)
        raise AssertionError(f"unexpected script reply {reply!r}")

    # -- owners (the timeline above owner_index_key) -------------------------

    def owner_register(self, owner_id: str, session_id: str) -> None:
        """Put ``session_id`` in the owner's index, before its create runs."""
        with _redis_errors():
            self.client.zadd(owner_index_key(owner_id), {session_id: 0})

    def owner_ids(self, owner_id: str, *, after: str | None = None, count: int = 100) -> list[str]:
        """Up to ``count`` ids of the owner's index, in id order, after ``after``."""
        with _redis_errors():
            ids = self.client.zrangebylex(owner_index_key(owner_id),
                                          "-" if after is None else "(" + after, "+",
                                          start=0, num=count)
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    def owner_forget(self, owner_id: str, session_ids: Sequence[str]) -> None:
        """Drop entries from the owner's index (their sessions are gone or
        not the owner's)."""
        if not session_ids:
            return
        with _redis_errors():
            self.client.zrem(owner_index_key(owner_id), *session_ids)

    def peek(self, session_ids: Sequence[str]) -> list[Session | None]:
        """The stored values (tombstones too) of ``session_ids``, in order,
        None where there is no key: one pipelined round trip per node, read
        as they are (no epoch check: a listing, not a read to write on)."""
        if not session_ids:
            return []
        with _redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for sid in session_ids:
                pipe.get(session_keys(sid)[0])
            raws = pipe.execute()
        return [None if raw is None else decode_session(sid, raw)
                for sid, raw in zip(session_ids, raws, strict=True)]

    def block(self, session_id: str, owner_id: str, ttl_seconds: int, *,
              known_absent: bool = True) -> WriteResult | None:
        """Tombstone an id registered for ``owner_id`` whose create has not
        run (BLOCK_SCRIPT).  None when the id exists after all (a key or a
        marker): delete it the usual way.  Raises IdUnknown as ``create``."""
        now = self.clock()
        now_iso = iso_utc(now)
        with _redis_errors():
            reply = self._run(self._block, session_keys(session_id), [
                session_id, now_iso, int(now * 1000), ttl_seconds, self.marker_ttl,
                self.channel, "1" if known_absent else "0", owner_id])
        if reply[0] == b"exists":
            return None
        if reply[0] == b"unknown":
            raise IdUnknown(session_id)
        session = Session(session_id, 1, "null", now_iso, now_iso, ttl_seconds, deleted=True,
                          owner_id=owner_id)
        return WriteResult(session, f"{session_id}:1", reply[1].decode())

    # -- outbox ---------------------------------------------------------------

    def outbox_ack(self, event_ids: Sequence[str]) -> None:
        """Remove outbox entries once SQS accepted their messages."""
        if not event_ids:
            return
        with _redis_errors():
            by_bucket: dict[int, list[str]] = {}
            for eid in event_ids:
                by_bucket.setdefault(bucket_of(eid.rsplit(":", 1)[0]), []).append(eid)
            pipe = self.client.pipeline(transaction=False)
            for bucket, ids in by_bucket.items():
                index, data = outbox_keys(bucket)
                pipe.zrem(index, *ids)
                pipe.hdel(data, *ids)
            pipe.execute()

    def outbox_pending(self, older_than_s: float, limit: int = 500,
                       start_bucket: int = 0) -> Iterator[tuple[str, str]]:
        """(event id, event JSON) of up to ``limit`` outbox entries enqueued
        before now - older_than_s.

        Buckets are read from ``start_bucket`` on, wrapping around: a relay
        that moves its start past what it got last time cannot be held on
        the first buckets by entries it fails to send.

        A page costs what it returns, not what is waiting: the buckets are
        counted first (a window at a time, until the page is covered), and
        each is asked only for what the page still needs.  Asking every
        bucket for a page's worth of ids made each page read the whole
        backlog, and draining it quadratic.
        """
        cutoff = int((self.clock() - older_than_s) * 1000)
        order = [(start_bucket + i) % BUCKETS for i in range(BUCKETS)]
        take: list[tuple[int, int]] = []  # (bucket, how many ids to read from it)
        need, done, window = limit, 0, _OUTBOX_FIRST_WINDOW
        with _redis_errors():
            while need > 0 and done < BUCKETS:
                buckets = order[done:done + window]
                pipe = self.client.pipeline(transaction=False)
                for bucket in buckets:
                    pipe.zcount(outbox_keys(bucket)[0], "-inf", cutoff)
                for bucket, count in zip(buckets, pipe.execute(), strict=True):
                    if count and need > 0:
                        take.append((bucket, min(count, need)))
                        need -= take[-1][1]
                done += len(buckets)
                # the first window did not cover the page: the outbox is
                # sparse, so count the rest in one round trip
                window = BUCKETS
            if not take:
                return
            pipe = self.client.pipeline(transaction=False)
            for bucket, count in take:
                pipe.zrangebyscore(outbox_keys(bucket)[0], "-inf", cutoff, start=0, num=count)
            per_bucket = [(bucket, ids) for (bucket, _), ids in zip(take, pipe.execute(), strict=True)
                          if ids]
            pipe = self.client.pipeline(transaction=False)
            for bucket, ids in per_bucket:
                pipe.hmget(outbox_keys(bucket)[1], ids)
            bodies = pipe.execute() if per_bucket else []
        for (_, ids), values in zip(per_bucket, bodies, strict=True):
            for eid, body in zip(ids, values, strict=True):
                if body is None:  # acked between the two reads
                    continue
                yield eid.decode(), body.decode()

    def outbox_depth(self) -> int:
        with _redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for bucket in range(BUCKETS):
                pipe.zcard(outbox_keys(bucket)[0])
            return sum(pipe.execute())

    def outbox_oldest_ms(self) -> float | None:
        """When the oldest outbox entry was enqueued (ms since the epoch), or
        None when the outbox is empty.  Raises ServiceUnavailable."""
        with _redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for bucket in range(BUCKETS):
                pipe.zrange(outbox_keys(bucket)[0], 0, 0, withscores=True)
            return min((entries[0][1] for entries in pipe.execute() if entries), default=None)

    # -- diagnosis (reads only) -------------------------------------------------

    def sample(self, limit: int = 200, max_scan_calls: int = 50) -> list[SessionSample]:
        """Up to ``limit`` sessions (spread over the primaries) with version and TTL.

        SCAN is bounded by ``max_scan_calls`` per node, so a huge keyspace
        costs at most that many round trips; the state is never read
        (GETRANGE of the head only).  Raises ServiceUnavailable.
        """
        samples: list[SessionSample] = []
        with _redis_errors():
            nodes = primaries(self.client)
            per_node = max(1, limit // len(nodes))
            for _, node in nodes:
                keys = _scan_session_keys(node, per_node, max_scan_calls)
                if not keys:
                    continue
                pipe = node.pipeline(transaction=False)
                for key in keys:
                    pipe.ttl(key)
                    pipe.getrange(key, 0, _HEAD_BYTES - 1)
                replies = pipe.execute()
                for i, key in enumerate(keys):
                    ttl_left, head = replies[2 * i], replies[2 * i + 1]
                    parts = head.split(b"|", 5) if head else []
                    if len(parts) < 5:
                        continue  # vanished between SCAN and the read, or not a session value
                    session_id = key.decode().split(":s:", 1)[1]
                    # the flag is followed by the epoch ("D1a2b3c4d"; bare in older values)
                    samples.append(SessionSample(session_id, int(parts[0]), parts[4][:1] == b"D",
                                                 int(parts[3]), int(ttl_left)))
        return samples

    # -- pub/sub --------------------------------------------------------------

    def subscribe(self, *, timeout: float = 1.0) -> Subscription:
        """Subscribe to the change events on the channel, now.

        Returns once Redis confirmed the subscription, so every change
        committed after this call is seen.  Iterating yields each event
        decoded, or None every ``timeout`` seconds without one so that a
        caller can stop; ``close()`` (or leaving a ``with`` block) unsubscribes.
        """
        return Subscription(self.client.pubsub(), self.channel, timeout)

    def ping(self) -> float:
        """Round trip in milliseconds."""
        start = time.perf_counter()
        with _redis_errors():
            self.client.ping()
        return (time.perf_counter() - start) * 1000

    # -- one session as stored, for operators (sessionsync inspect) -------------

    def stored(self, session_id: str) -> StoredSession:
        """Everything Redis holds for one session, read without changing
        anything: the value (a tombstone too) with its TTL, size and epoch,
        the marker, and the session's outbox entries still waiting.

        Raises ServiceUnavailable.
        """
        session_key, marker_key, index_key, _ = session_keys(session_id)
        with _redis_errors():
            reply = self._run(self._get_verified, [session_key], [])
            pipe = self.client.pipeline(transaction=False)
            pipe.ttl(session_key)
            pipe.memory_usage(session_key)
            pipe.get(marker_key)
            pipe.ttl(marker_key)
            ttl, memory, marker_raw, marker_ttl = pipe.execute()
            # the bucket's outbox is shared: only this session's entries
            # ("<id>:<version>"; ids have no glob characters)
            found = [(member.decode(), int(score)) for member, score
                     in self.client.zscan_iter(index_key, match=f"{session_id}:*", count=1000)]
        outbox = sorted((eid, int(eid.rsplit(":", 1)[1]), ms) for eid, ms in found
                        if eid.rsplit(":", 1)[0] == session_id)
        marker = None if marker_raw is None else _decode_marker(marker_raw)
        return StoredSession(
            session=decode_session(session_id, reply[0]) if reply else None,
            ttl_left=int(ttl) if reply else None, value_bytes=len(reply[0]) if reply else 0,
            memory_bytes=int(memory) if reply and memory is not None else None,
            epoch_current=bool(reply[1]) if reply else None, marker=marker,
            marker_ttl_left=int(marker_ttl) if marker is not None else None,
            outbox=tuple(sorted(outbox, key=lambda entry: entry[1])))


@dataclass(frozen=True)
class StoredSession:
    """What Redis holds for one session (``SessionStore.stored``)."""

    #: the decoded value, a tombstone too; None when there is no key
    session: Session | None
    #: seconds the key has left, -1 for none (None: no key)
    ttl_left: int | None
    #: length of the stored value, and what Redis counts for the key (MEMORY USAGE)
    value_bytes: int
    memory_bytes: int | None
    #: False: written before Redis's data last went back in time, so a read
    #: asks PostgreSQL to confirm it (None: no key)
    epoch_current: bool | None
    #: (last acknowledged version, deleted) from the marker, and its TTL left
    marker: tuple[int, bool] | None
    marker_ttl_left: int | None
    #: (event id, version, enqueued at in epoch ms) of the outbox entries not
    #: yet acknowledged by SQS, by version
    outbox: tuple[tuple[str, int, int], ...]


class Subscription:
    """An open Pub/Sub subscription to the change events (see ``subscribe``)."""

    def __init__(self, pubsub: redis.client.PubSub, channel: str, timeout: float) -> None:
        self.timeout = timeout
        self._pubsub = pubsub
        try:
            with _redis_errors():
                pubsub.subscribe(channel)
                # SUBSCRIBE is not acknowledged by subscribe(): wait for the
                # server's confirmation, or an event published meanwhile is lost.
                deadline = time.monotonic() + max(timeout, 1.0)
                while True:
                    reply = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                    if reply is not None and reply["type"] == "subscribe":
                        break
                    if time.monotonic() >= deadline:
                        raise redis.TimeoutError(f"no confirmation of SUBSCRIBE {channel}")
        except BaseException:
            pubsub.close()
            raise

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> dict | None:
        with _redis_errors():
            message = self._pubsub.get_message(timeout=self.timeout)
        if message is None or message["type"] != "message":
            return None
        return json.loads(message["data"])

    def close(self) -> None:
        self._pubsub.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class KeyMissing(SessionNotFound):
    """Redis has no key but its marker says the session existed at ``version``.

    It expired (or was evicted) and may be recovered from PostgreSQL.
    """

    def __init__(self, session_id: str, marker_version: int) -> None:
        super().__init__(session_id)
        self.marker_version = marker_version


class IdUnknown(Exception):
    """Redis has no trace of the id (no key, no marker): it may have existed
    and been forgotten (eviction, failover, flush); PostgreSQL knows."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id


class EpochChanged(Exception):
    """The session's value was written before Redis's data last went back in
    time (a failover, a restart): PostgreSQL may hold a newer version."""

    def __init__(self, session_id: str, version: int, session: Session | None = None) -> None:
        super().__init__(session_id, version)
        self.session_id = session_id
        self.version = version
        #: the value read, for ``get`` (scripts refuse without returning it)
        self.session = session


class RedisBehind(Exception):
    """Redis holds ``version``, older than what PostgreSQL holds."""

    def __init__(self, session_id: str, version: int) -> None:
        super().__init__(session_id, version)
        self.session_id = session_id
        self.version = version


class KeyBehind(Exception):
    """A restore was refused: Redis acknowledged ``marker_version`` already."""

    def __init__(self, session_id: str, marker_version: int) -> None:
        super().__init__(session_id, marker_version)
        self.session_id = session_id
        self.marker_version = marker_version


def _scan_session_keys(node: redis.Redis, limit: int, max_calls: int) -> list[bytes]:
    keys: list[bytes] = []
    cursor = 0
    for _ in range(max_calls):
        cursor, batch = node.scan(cursor=cursor, match=SESSION_KEY_PATTERN, count=1000)
        keys.extend(cast("list[bytes]", batch))  # the client does not decode responses
        if cursor == 0 or len(keys) >= limit:
            break
    return keys[:limit]


def _owner_suffix(owner_id: str | None) -> str:
    """What follows the epoch in the value of a session with this owner."""
    return "@" + owner_id if owner_id else ""


def _event_owner(event_json: bytes) -> str | None:
    # "owner_id":"..." sits just before "state" when the session has one
    head = event_json[:event_json.index(b',"state":')]
    marker = b',"owner_id":"'
    at = head.rfind(marker)
    return head[at + len(marker):-1].decode() if at >= 0 else None


def _ttl_from_event(event_json: bytes) -> int:
    # "ttl_seconds":N sits before "state" in the event the script built;
    # find it without decoding the whole (possibly 256 KiB) document.
    head = event_json[:event_json.index(b',"state":')]
    if head.endswith(b'"'):  # the owner_id after it
        head = head[:head.rindex(b',"owner_id":"')]
    return int(head.rsplit(b":", 1)[1])


class _redis_errors:
    """Translate redis-py connection trouble into ServiceUnavailable."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> Literal[False]:
        if exc is None:
            return False
        # ClusterError: still refused after the cluster client's own retries
        # (CLUSTERDOWN, or MOVED/ASK/TRYAGAIN until its "TTL exhausted").
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError,
                            redis.exceptions.ClusterError,
                            redis.exceptions.SlotNotCoveredError,
                            redis.exceptions.TryAgainError)):
            raise ServiceUnavailable(f"Redis is unavailable: {type(exc).__name__}",
                                     dependency="redis") from exc
        if isinstance(exc, redis.ResponseError):
            # redis-py strips the code off the errors it has classes for
            # (OutOfMemoryError, ReadOnlyError...) and keeps it in status_code
            code = getattr(exc, "status_code", None) or str(exc).split(" ", 1)[0]
            if code in ("LOADING", "MASTERDOWN", "READONLY", "BUSY", "OOM", "CLUSTERDOWN"):
                raise ServiceUnavailable(f"Redis refused the command: {code}",
                                         dependency="redis") from exc
        return False
