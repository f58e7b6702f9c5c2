-- Shared by every script: the value's format and the node's epoch.
--
-- epoch(): the first 8 hex digits of the node's replication id.  Redis
-- changes it when its data may have gone back in time: a replica promoted
-- by a failover (its copy may lack the primary's last writes), a restart
-- without persistence, a node that resynchronised from another primary.
-- Every session value carries the epoch it was written or verified in
-- (after its L/D flag); a value from another epoch may be older than what
-- PostgreSQL holds, so it is served or written again only once PostgreSQL
-- confirmed it (the persisted version: the version PostgreSQL holds).
-- (a plain find and a fixed cut: the id is 40 hex digits, and no pattern
-- to compile and match on every write)
local function epoch()
  local info = redis.call('INFO', 'replication')
  local at = string.find(info, 'master_replid:', 1, true) + 14
  return string.sub(info, at, at + 7)
end
-- a stored value "<version>|<created>|<updated>|<ttl>|<L|D><epoch>[@<owner>]|<state>"
-- (keys.py): o is the owner suffix "@<owner>", '' when none
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
-- The version marker "<version>|<L|D|E>" (keys.py): field <id> of the
-- bucket's marker hash KEYS[2], or, with a marker TTL (a hash field has none
-- before Redis 7.4) and in the previous release's format, a key of its own
-- "<KEYS[2]>:<id>", in the same slot.  Both are read and the higher version
-- wins: a process of the previous release, still running during a rollout,
-- writes the key alone (docs/decisions/marker-hash.md).  KEYS[1] is the
-- session key "ss:{NNNN}:s:<id>": the id is what follows its 12 characters.
local function marker_names()
  local id = string.sub(KEYS[1], 13)
  return id, KEYS[2] .. ':' .. id
end
-- A command on the key form, which is not in KEYS: while the slot migrates
-- to another node, Redis refuses it inside the script when the key is not
-- on this node (an ASK the script cannot follow).  Refused as a declared key
-- is refused before the script runs: TRYAGAIN (the cluster client tries it
-- again, then a 503).  Every script reaches the key form before it writes
-- anything (a write's set_marker comes first, and reads the key form
-- first), so the refusal leaves nothing half written.
local function key_form(...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'non local key', 1, true) then error({err = 'TRYAGAIN ' .. r.err}) end
    error(r)
  end
  return r
end
local function marker_raw()
  local id, key = marker_names()
  local f = redis.call('HGET', KEYS[2], id)
  local k = key_form('GET', key)
  if not k then return f end
  if not f or tonumber(string.match(k, '^(%d+)')) > tonumber(string.match(f, '^(%d+)')) then return k end
  return f
end
-- its version and flag, or nil
local function marker()
  local m = marker_raw()
  if not m then return nil end
  return tonumber(string.match(m, '^(%d+)')), string.sub(m, -1)
end
-- One marker per session, in one place: writing it in one form deletes the
-- other.  A marker TTL of 0 means none (the hash field): volatile-* eviction
-- policies never take a key without one (SESSION_MARKER_TTL)
local function set_marker(value, marker_ttl, ttl)
  local id, key = marker_names()
  if marker_ttl > 0 then
    key_form('SET', key, value, 'EX', math.max(marker_ttl, ttl))
    redis.call('HDEL', KEYS[2], id)
  else
    -- a read first: a migrating slot refuses it as it would the DEL, with
    -- nothing written yet; and the script's first write stays the HSET, which
    -- a full Redis refuses (deny-oom: a DEL first would be a write already
    -- made, after which Redis lets the script run past maxmemory)
    key_form('EXISTS', key)
    redis.call('HSET', KEYS[2], id, value)
    redis.call('DEL', key)
  end
end
