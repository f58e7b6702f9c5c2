-- KEYS[1] the session's hold record "<ms when first seen>"
-- ARGV[1] settle time in ms
-- returns ms left to wait
-- Redis has no trace of a session PostgreSQL knows (its key and marker were
-- lost): the same wait as SETTLE_SCRIPT's, for this one session, from the
-- first time it is noticed.  The record expires well after the wait.
local settle = tonumber(ARGV[1])
if settle <= 0 then return 0 end
local now = now_ms()
local since = redis.call('GET', KEYS[1])
if not since then
  redis.call('SET', KEYS[1], now, 'PX', 3 * settle + 60000)
  return settle
end
return math.max(0, settle - (now - tonumber(since)))
