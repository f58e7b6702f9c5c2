-- KEYS as CREATE_SCRIPT
-- ARGV[1] session id  ARGV[2] now ISO  ARGV[3] now ms  ARGV[4] ttl seconds
-- ARGV[5] marker ttl seconds  ARGV[6] channel  ARGV[7] as CREATE_SCRIPT's ARGV[8]
-- ARGV[8] owner id
-- returns {'ok', event} | {'exists'} (a key or a marker: the id was created;
--         delete it the usual way) | {'unknown'} (as CREATE_SCRIPT's)
-- A revoke-all tombstones an id its owner registered whose create has not
-- run (yet, or ever: a create that failed or crashed after registering): a
-- deleted version 1, shipped like any deletion.  The create that comes later
-- finds it and fails (SessionExists), as for any deleted id: ids are never
-- reused.  See the timeline above ``owner_index_key``.
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return {'exists'}
end
if ARGV[7] ~= '1' then return {'unknown'} end
local ttl = tonumber(ARGV[4])
local o = '@' .. ARGV[8]
redis.call('SET', KEYS[1], head(1, ARGV[2], ARGV[2], ttl, 'D') .. epoch() .. o .. '|null', 'EX', ttl)
set_marker('1|D', tonumber(ARGV[5]), ttl)
local ev = event(DELETED, ARGV[1], 1, ARGV[2], ARGV[2], ttl, 'null', o)
emit(ev, ARGV[1], 1, ARGV[3], ARGV[6])
return {'ok', ev}
