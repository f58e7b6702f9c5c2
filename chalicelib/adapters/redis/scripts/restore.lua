-- KEYS[1] session  KEYS[2] marker
-- ARGV[1] the stored value's head (version to flag)  ARGV[2] its version
-- ARGV[3] ttl seconds  ARGV[4] marker ttl  ARGV[5] owner suffix ('@' .. owner, or '') .. '|' .. state JSON
-- ARGV[6] 'absent': only into an absent key | 'repair': also over an older version
-- returns {'restored'} | {'exists'} | {'behind', marker version}
-- Writes a session recovered from PostgreSQL back without clobbering a
-- concurrent create or update (the key must still be absent, or, to repair a
-- Redis that went back in time, hold an older version) and without going
-- back in time (the marker must not be ahead of the recovered version).
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
