-- Shared by every script (scripts/__init__.py puts the event schema's
-- constants, from chalicelib/domain/events.py, before it).
--
-- epoch(): the first 8 hex digits of the node's replication id.  Redis
-- changes it when its data may have gone back in time: a replica promoted
-- by a failover (its copy may lack the primary's last writes), a restart
-- without persistence, a node that resynchronised from another primary.
-- Every session value carries the epoch it was written or verified in
-- (after its L/D flag); a value from another epoch may be older than what
-- PostgreSQL holds, so it is served or written again only once PostgreSQL
-- confirmed it (``floor``: the version PostgreSQL holds).
--
-- The event's schema version and type names come from the domain
-- (chalicelib.domain.events), so the scripts cannot drift from the reader.
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
