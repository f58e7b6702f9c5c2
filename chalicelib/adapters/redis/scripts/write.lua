-- The write protocol: what every script that commits a change shares
-- (create, block, update, delete, touch, expire).  The loader puts it after
-- lib.lua and the event schema's constants, before the script's own body;
-- store.py's _write builds the arguments.
--
-- KEYS[1] session  KEYS[2] marker  KEYS[3] outbox index  KEYS[4] outbox data
-- KEYS[5] the idempotency record: only with an Idempotency-Key
-- KEYS[6] the record's name in the previous release (keys.legacy_idempotency_key)
-- ARGV[1] session id  ARGV[2] now, ISO UTC  ARGV[3] now, ms
-- ARGV[4] marker ttl seconds (0: none)  ARGV[5] Pub/Sub channel
-- ARGV[6] expected version, '' (any)
-- ARGV[7] persisted version: the version PostgreSQL holds (0: none), '' (not asked)
-- ARGV[8] ttl seconds, '' (keep the session's)
-- ARGV[9] state JSON, '' (none given)
-- ARGV[10] owner id, '' (none)
-- ARGV[11] fingerprint  ARGV[12] record ttl seconds: only with an Idempotency-Key
-- ARGV[13]... a script's own (expire's)
-- A write sends the slots up to the last one it uses: an absent slot is ''.
--
-- Every write replies {status, detail}: {'ok', event} when it committed;
-- {'replay', event} for a keyed write already recorded; {'reused', 0} for a
-- key recorded for another request; else a refusal {status, version} that
-- names what Redis holds (each script lists its own).
local SID, NOW_ISO, NOW_MS = ARGV[1], ARGV[2], ARGV[3]
local MARKER_TTL, CHANNEL = tonumber(ARGV[4]), ARGV[5]
local EXPECTED, PERSISTED = ARGV[6] or '', ARGV[7] or ''
local TTL, STATE, OWNER = ARGV[8] or '', ARGV[9] or '', ARGV[10] or ''
-- The change event (chalicelib/domain/events.py): the same bytes go to
-- Pub/Sub, the outbox and SQS, and codec.session_from_event reads them
-- back.  The state comes last, as the client sent it.  o: the owner suffix
-- ("@<owner>" or ''); expires: when the lifetime ended, for a
-- session_expired only.  A write's own lifetime (its time + TTL) is not
-- written: the readers derive it from occurred_at and ttl_seconds
-- (PostgreSQL's apply, Session.expires_at), which saves every write a
-- civil-date conversion Redis's Lua (no os.date) would do by hand.
local function event(kind, version, created, ttl, state, o, expires)
  return '{"schema_version":' .. EVENT_SCHEMA_VERSION .. ',"event_id":"' .. SID .. ':' .. version ..
    '","event_type":"' .. kind .. '","session_id":"' .. SID ..
    '","version":' .. version .. ',"created_at":"' .. created ..
    '","occurred_at":"' .. NOW_ISO .. (expires and ('","expires_at":"' .. expires) or '') ..
    '","ttl_seconds":' .. ttl ..
    (o ~= '' and (',"owner_id":"' .. string.sub(o, 2) .. '"') or '') ..
    ',"state":' .. state .. '}'
end
-- the event in the outbox (shipped to SQS after the reply, or by the
-- relay) and on Pub/Sub
local function announce(kind, version, created, ttl, state, o, expires)
  local ev = event(kind, version, created, ttl, state, o, expires)
  local eid = SID .. ':' .. version
  redis.call('ZADD', KEYS[3], NOW_MS, eid)
  redis.call('HSET', KEYS[4], eid, ev)
  redis.call('PUBLISH', CHANNEL, ev)
  return ev
end
-- Idempotency-Key (chalicelib.domain.idempotency): the record is looked up
-- before anything else (a replay needs neither the session nor PostgreSQL)
-- and written with the write it names; a refused write records nothing, so
-- its retry runs again.  nil: no key, or a key not seen yet
local function replayed()
  if not KEYS[5] then return nil end
  local rec = redis.call('GET', KEYS[5])
  if not rec and KEYS[6] then
    -- recorded by the previous release under an ambiguous name: only a
    -- record of this very request counts (another session's is no reuse)
    rec = redis.call('GET', KEYS[6])
    if rec and string.sub(rec, 1, 64) ~= ARGV[11] then rec = nil end
  end
  if not rec then return nil end
  if string.sub(rec, 1, 64) ~= ARGV[11] then return {'reused', 0} end
  return {'replay', string.sub(rec, 66)}
end
-- "<fingerprint>|<event>", always with a TTL (a day at least): a record
-- never outlives its use
local function remember(ev)
  if KEYS[5] then redis.call('SET', KEYS[5], ARGV[11] .. '|' .. ev, 'EX', ARGV[12]) end
end
-- The checks of a write that creates a session, in order.  The reply that
-- refuses it, or nil: the id has no key and no marker (ids are never
-- reused), and PostgreSQL was asked (Redis may have forgotten the id:
-- eviction, failover).
local function open_new()
  local done = replayed()
  if done then return done end
  local raw = redis.call('GET', KEYS[1])
  if raw then
    local v, _, _, _, flag = parse(raw)
    return {flag == 'D' and 'deleted' or 'exists', v}
  end
  local mv, mflag = marker()
  if mv then return {mflag == 'D' and 'deleted' or 'exists', mv} end
  if PERSISTED == '' then return {'unknown', 0} end
  return nil
end
-- The checks of a write on a session, in order.  The reply that refuses
-- it, or nil and the stored value (raw and parsed) with the node's epoch.
-- A deletion is final whatever its epoch; a value of another epoch may be
-- older than PostgreSQL's, so it is written on only once PostgreSQL's
-- version is known and not above it.
local function open_live()
  local done = replayed()
  if done then return done end
  local raw = redis.call('GET', KEYS[1])
  if not raw then
    -- gone: the marker says whether it was deleted, its lifetime ended
    -- (the expiry sweep's, final as a deletion), or it was lost
    local mv, mflag = marker()
    if not mv then return {'missing', 0} end
    if mflag == 'D' then return {'deleted', mv} end
    if mflag == 'E' then return {'expired', mv} end
    return {'missing', mv}
  end
  local v, created, u, ttl, flag, e, o = parse(raw)
  if flag == 'D' then return {'deleted', v} end
  -- a write's time is its writer's clock, read before the script ran: it
  -- never goes back before the version it replaces, or the lifetime (its
  -- time + TTL) would end before the one already promised:
  --   t0  A (If-Match: *) reads its clock; waits (a busy machine)
  --   t1  B writes v2 at t1, acknowledged: it lives until t1 + ttl
  --   t2  A's script: v3 written "at t0" would end at t0 + ttl < t1 + ttl
  -- (the same ISO format throughout: the strings compare as the times do)
  if u > NOW_ISO then NOW_ISO = u end
  local ep = epoch()
  if e ~= ep then
    if PERSISTED == '' then return {'unverified', v, e} end
    if v < tonumber(PERSISTED) then return {'behind', v} end
  end
  if EXPECTED ~= '' and v ~= tonumber(EXPECTED) then return {'conflict', v} end
  return nil, raw, v, created, u, ttl, e, o, ep
end
-- The write: the value (version, lifetime, state), the marker, the event,
-- the idempotency record, in this one atomic step.
local function commit(kind, v, created, ttl, flag, ep, o, state)
  -- the marker first: its key form may be refused (lib.lua's key_form)
  set_marker(v .. '|' .. flag, MARKER_TTL, ttl)
  redis.call('SET', KEYS[1], head(v, created, NOW_ISO, ttl, flag) .. ep .. o .. '|' .. state, 'EX', ttl)
  local ev = announce(kind, v, created, ttl, state, o)
  remember(ev)
  return {'ok', ev}
end
