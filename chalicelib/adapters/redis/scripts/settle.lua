-- KEYS[1] the bucket's epoch record "<epoch>|<ms when first seen>"
-- ARGV[1] settle time in ms
-- ARGV[2] '1': a missing record means a new deployment, already settled,
--         unless the caller saw the node in another epoch (ARGV[3]) before
-- ARGV[3] the first epoch the caller saw this node in, or ''
-- returns {ms left to wait, 0 | 1 (the record was of another epoch) | 2 (no
--          record: Redis lost it, or a new deployment), the node's epoch}
-- After Redis went back in time, a session it may hold stale waits until
-- the changes still in the queue had time to reach PostgreSQL.  The first
-- call in a new epoch starts the clock (Redis's own: one clock for all); a
-- record of a new deployment is written as settled long ago.
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
