-- KEYS[1] the relay's lease "<token>"  KEYS[2] the successor waiting "<token>"
-- ARGV[1] 'take' | 'renew' | 'release'  ARGV[2] the caller's token
-- ARGV[3] lease ttl in ms (take, renew)
-- ARGV[4] take: how long the caller's mark as the successor waiting lasts,
--         ms (a little over its polling interval: a successor that stopped
--         polling stops being one)
-- returns take: 1 when the caller holds the lease now, else 0 (and the
--         caller is marked as the successor waiting);
--         renew: {1 | 0 (lost: another relay holds it), 1 | 0 (a successor
--         waits)}, a lease Redis forgot (a failover, a restart) taken again;
--         release: 1 when the caller held it
-- One relay drains the outbox at a time (chalicelib.pipeline.outbox): the
-- lease expires unless renewed, so a dead relay is taken over; a relay that
-- sees a successor waiting hands over (releases) and ends its run.
local op, token, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local holder = redis.call('GET', KEYS[1])
if op == 'take' then
  if not holder or holder == token then
    redis.call('SET', KEYS[1], token, 'PX', ttl)
    if redis.call('GET', KEYS[2]) == token then redis.call('DEL', KEYS[2]) end
    return 1
  end
  redis.call('SET', KEYS[2], token, 'PX', tonumber(ARGV[4]))
  return 0
end
if op == 'renew' and not holder then holder = token end
if holder ~= token then
  return op == 'renew' and {0, 0} or 0
end
if op == 'renew' then
  redis.call('SET', KEYS[1], token, 'PX', ttl)
  local next = redis.call('GET', KEYS[2])
  return {1, (next and next ~= token) and 1 or 0}
end
redis.call('DEL', KEYS[1])
return 1
