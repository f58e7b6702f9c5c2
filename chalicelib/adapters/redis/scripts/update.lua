-- KEYS as CREATE_SCRIPT
-- ARGV[1] session id  ARGV[2] state JSON  ARGV[3] expected version or '' (any: If-Match *)
-- ARGV[4] now ISO  ARGV[5] now ms  ARGV[6] marker ttl seconds  ARGV[7] channel
-- ARGV[8] floor: the version PostgreSQL holds, or '' (not asked)
-- ARGV[9] a new ttl seconds, or '' (keep the session's)
-- KEYS[5], ARGV[10] fingerprint, ARGV[11] record ttl: only with an Idempotency-Key
-- returns {'ok', event, created} | {'conflict', actual} | {'deleted', version}
--       | {'missing', marker version or 0} | {'unverified', version} | {'behind', version}
--       | {'expired', marker version} | {'replay', event} | {'reused'}, as CREATE_SCRIPT
local done = replayed(ARGV[10])
if done then return done end
local raw = redis.call('GET', KEYS[1])
if not raw then return missing() end
local v, created, _, ttl, flag, e, o = parse(raw)
-- a caller without ARGV[9] (the bench's floors) keeps the TTL too
if ARGV[9] and ARGV[9] ~= '' then ttl = tonumber(ARGV[9]) end
if flag == 'D' then return {'deleted', v} end
local ep = epoch()
local refused = check_epoch(v, e, ep, ARGV[8])
if refused then return refused end
if ARGV[3] ~= '' and v ~= tonumber(ARGV[3]) then return {'conflict', v} end
v = v + 1
redis.call('SET', KEYS[1], head(v, created, ARGV[4], ttl, 'L') .. ep .. o .. '|' .. ARGV[2], 'EX', ttl)
set_marker(v .. '|L', tonumber(ARGV[6]), ttl)
local ev = event(UPDATED, ARGV[1], v, created, ARGV[4], ttl, ARGV[2], o)
emit(ev, ARGV[1], v, ARGV[5], ARGV[7])
remember(ARGV[10], ARGV[11], ev)
return {'ok', ev, created}
