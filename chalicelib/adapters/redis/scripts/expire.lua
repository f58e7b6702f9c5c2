-- KEYS as CREATE_SCRIPT
-- ARGV[1] session id  ARGV[2] the version PostgreSQL holds (its lifetime ended)
-- ARGV[3] now ISO  ARGV[4] now ms  ARGV[5] marker ttl seconds  ARGV[6] channel
-- ARGV[7] created ISO  ARGV[8] ttl seconds  ARGV[9] the expires_at that passed
-- ARGV[10] '1': no marker is acceptable (the caller held the session for the
--          settle time and read PostgreSQL again), '0': it is not
-- ARGV[11] the owner suffix ('@' .. owner, or ''): the event names the owner
-- returns {'expired', event} | {'alive'} (a key: live, kept by reads, or a
--         tombstone on its way) | {'final', version} (a deletion's or an
--         expiry's marker) | {'ahead', marker version} (Redis acknowledged a
--         write PostgreSQL lacks) | {'behind', marker version} | {'unknown'}
-- The expiry sweep's write: the lifetime ended only if the key is really
-- gone (not merely lost ahead of a newer write) and Redis acknowledged
-- exactly what PostgreSQL holds.  A final marker, one version on (the id is
-- never reused; recovery answers SessionExpired), and a session_expired
-- event through the outbox: a normal write, so the pipeline persists it
-- once.  A second sweep finds the marker final and writes nothing.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'alive'} end
local mv, deleted = marker()
local pg = tonumber(ARGV[2])
if mv then
  if deleted or string.sub(redis.call('GET', KEYS[2]), -2) == '|E' then return {'final', mv} end
  if mv > pg then return {'ahead', mv} end
  if mv < pg then return {'behind', mv} end
elseif ARGV[10] ~= '1' then
  return {'unknown'}
end
local v = pg + 1
local ttl = tonumber(ARGV[8])
set_marker(v .. '|E', tonumber(ARGV[5]), ttl)
local ev = event(EXPIRED, ARGV[1], v, ARGV[7], ARGV[3], ttl, 'null', ARGV[11], ARGV[9])
emit(ev, ARGV[1], v, ARGV[4], ARGV[6])
return {'expired', ev}
