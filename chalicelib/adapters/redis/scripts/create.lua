-- KEYS[1] session  KEYS[2] marker  KEYS[3] outbox index  KEYS[4] outbox data
-- ARGV[1] session id  ARGV[2] state JSON  ARGV[3] now ISO  ARGV[4] now ms
-- ARGV[5] ttl seconds  ARGV[6] marker ttl seconds  ARGV[7] channel
-- ARGV[8] '1' when PostgreSQL has no such session (or there is none), '0' not asked
-- ARGV[9] owner id, or '' (none)
-- KEYS[5], ARGV[10] fingerprint, ARGV[11] record ttl: only with an Idempotency-Key
-- returns {'ok', event} | {'exists', version, deleted 0/1}
--       | {'unknown'}: Redis knows nothing of the id; ask PostgreSQL (ids are
--         never reused, and Redis may have forgotten one: eviction, failover)
--       | {'replay', event}: the key's recorded write | {'reused'}: the key's, another request
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
