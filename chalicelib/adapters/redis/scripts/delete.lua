-- KEYS as CREATE_SCRIPT
-- ARGV[1] session id  ARGV[2] expected version or '' (unconditional)
-- ARGV[3] now ISO  ARGV[4] now ms  ARGV[5] marker ttl seconds  ARGV[6] channel
-- ARGV[7] floor, as UPDATE_SCRIPT's ARGV[8]
-- KEYS[5], ARGV[8] fingerprint, ARGV[9] record ttl: only with an Idempotency-Key
-- returns {'ok', event, version} | as UPDATE_SCRIPT
-- The tombstone keeps the session's TTL (at least the session TTL): a write
-- still in flight with an old version fails its check instead of recreating.
-- A tombstone is trusted whatever its epoch: a deletion is final.
local done = replayed(ARGV[8])
if done then return done end
local raw = redis.call('GET', KEYS[1])
if not raw then return missing() end
local v, created, _, ttl, flag, e, o = parse(raw)
if flag == 'D' then return {'deleted', v} end
local ep = epoch()
local refused = check_epoch(v, e, ep, ARGV[7])
if refused then return refused end
if ARGV[2] ~= '' and v ~= tonumber(ARGV[2]) then return {'conflict', v} end
v = v + 1
redis.call('SET', KEYS[1], head(v, created, ARGV[3], ttl, 'D') .. ep .. o .. '|null', 'EX', ttl)
set_marker(v .. '|D', tonumber(ARGV[5]), ttl)
local ev = event(DELETED, ARGV[1], v, created, ARGV[3], ttl, 'null', o)
emit(ev, ARGV[1], v, ARGV[4], ARGV[6])
remember(ARGV[8], ARGV[9], ev)
return {'ok', ev, v}
