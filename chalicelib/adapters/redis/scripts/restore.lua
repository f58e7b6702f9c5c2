-- KEYS[1] session  KEYS[2] marker
-- ARGV[1] the stored value's head (version to flag)  ARGV[2] its version
-- ARGV[3] ttl seconds  ARGV[4] marker ttl  ARGV[5] owner suffix ('@' .. owner, or '') .. '|' .. state JSON
-- ARGV[6] 'absent': only into an absent key | 'repair': also over an older version
-- ARGV[7] when its lifetime ends, ms since the epoch; 'E': PostgreSQL
--         recorded its end (session_expired); '' for a tombstone (its ttl)
-- returns {'restored'} | {'exists'} | {'behind', marker version}
--       | {'ended'}: its lifetime is over; no value written
-- Writes a session recovered from PostgreSQL back without clobbering a
-- concurrent create or update (the key must still be absent, or, to repair a
-- Redis that went back in time, hold an older version) and without going
-- back in time (the marker must not be ahead of the recovered version).
-- The key gets what is left of the lifetime, never a new one: a session
-- recovered 12 s into its 20 s lives 8 s more.  One whose lifetime ended
-- (judged here, on Redis's clock, atomically with the write: recovery's own
-- check came a moment before) is not written back; a repair drops the older
-- value, and the marker names PostgreSQL's version: final ('E') for a
-- recorded end, else live, so that the sweep records the end.
local version = tonumber(ARGV[2])
local raw = redis.call('GET', KEYS[1])
if raw then
  local v = parse(raw)
  if ARGV[6] ~= 'repair' or v >= version then return {'exists'} end
end
local mv = marker()
if mv and mv > version then return {'behind', mv} end
local ttl = tonumber(ARGV[3])
local left = nil  -- ms left of the lifetime; nil: a tombstone, kept its ttl
if ARGV[7] == 'E' then left = 0 elseif ARGV[7] ~= '' then left = tonumber(ARGV[7]) - now_ms() end
if left and left <= 0 then
  if raw then redis.call('DEL', KEYS[1]) end
  set_marker(ARGV[2] .. (ARGV[7] == 'E' and '|E' or '|L'), tonumber(ARGV[4]), ttl)
  return {'ended'}
end
local value = ARGV[1] .. epoch() .. ARGV[5]
if left then
  redis.call('SET', KEYS[1], value, 'PX', left)
else
  redis.call('SET', KEYS[1], value, 'EX', ttl)
end
set_marker(ARGV[2] .. '|' .. string.sub(ARGV[1], -1), tonumber(ARGV[4]), ttl)
return {'restored'}
