-- KEYS as CREATE_SCRIPT
-- ARGV[1] session id  ARGV[2] expected version or '' (any)
-- ARGV[3] now ISO  ARGV[4] now ms  ARGV[5] marker ttl seconds  ARGV[6] channel
-- ARGV[7] floor, as UPDATE_SCRIPT's ARGV[8]  ARGV[8] a new ttl seconds or '' (keep)
-- KEYS[5], ARGV[9] fingerprint, ARGV[10] record ttl: only with an Idempotency-Key
-- returns {'ok', event, version, created, ttl, state JSON} | as UPDATE_SCRIPT
-- Extends the lifetime without changing the state: a write like any other
-- (version bump, marker, outbox entry, Pub/Sub), of type session_touched,
-- carrying the unchanged state so that PostgreSQL's latest row stays whole.
local done = replayed(ARGV[9])
if done then return done end
local raw = redis.call('GET', KEYS[1])
if not raw then return missing() end
local v, created, u, ttl, flag, e, o = parse(raw)
if flag == 'D' then return {'deleted', v} end
local ep = epoch()
local refused = check_epoch(v, e, ep, ARGV[7])
if refused then return refused end
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= v then return {'conflict', v} end
local state = string.sub(raw, #head(v, created, u, ttl, flag) + #e + #o + 2)
if ARGV[8] ~= '' then ttl = tonumber(ARGV[8]) end
v = v + 1
redis.call('SET', KEYS[1], head(v, created, ARGV[3], ttl, 'L') .. ep .. o .. '|' .. state, 'EX', ttl)
set_marker(v .. '|L', tonumber(ARGV[5]), ttl)
local ev = event(TOUCHED, ARGV[1], v, created, ARGV[3], ttl, state, o)
emit(ev, ARGV[1], v, ARGV[4], ARGV[6])
remember(ARGV[9], ARGV[10], ev)
return {'ok', ev, v, created, ttl, state}
