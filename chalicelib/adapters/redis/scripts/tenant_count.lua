-- Reserve a place among a tenant's live sessions, or say when one frees up.
-- KEYS[1]  the tenant's live sessions: ZSET internal id -> lifetime end (ms)
-- ARGV[1]  the session's internal id
-- ARGV[2]  when its lifetime ends (ms)
-- ARGV[3]  the cap: the live sessions the tenant may have (0: none)
-- ARGV[4]  how long the set itself lives after this (ms): past every lifetime
-- returns  {1, live sessions with this one, 1} reserved
--          {1, live sessions, 0} already there (a retry, an id taken): not added
--          {0, ms until the first lifetime ends, 0} the cap is reached
-- Atomic: two creates racing for the last place cannot both get it.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {1, redis.call('ZCARD', KEYS[1]), 0}
end
local cap = tonumber(ARGV[3])
local live = redis.call('ZCARD', KEYS[1])
if cap > 0 and live >= cap then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, math.max(0, tonumber(first[2]) - now), 0}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, live + 1, 1}
