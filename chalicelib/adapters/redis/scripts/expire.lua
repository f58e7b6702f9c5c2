-- expire: the expiry sweep's write, once a session's lifetime ended
-- ARGV (write.lua): 7 the version PostgreSQL holds (its lifetime ended);
-- 8 its ttl seconds; 10 its owner id or ''; 11, 12 unused ('');
-- 13 its created_at; 14 the expires_at that passed;
-- 15 '1': no marker is acceptable (the caller held the session for the
--    settle time and read PostgreSQL again), '0': it is not
-- returns {'ok', event} | {'alive', 0} (a key: live, kept by reads, or a
--         tombstone on its way) | {'final', version} (a deletion's or an
--         expiry's marker) | {'ahead', marker version} (Redis acknowledged a
--         write PostgreSQL lacks) | {'behind', marker version} | {'unknown', 0}
-- The lifetime ended only if the key is really gone (not merely lost ahead
-- of a newer write) and Redis acknowledged exactly what PostgreSQL holds.
-- A final marker, one version on (the id is never reused; recovery answers
-- SessionExpired), and a session_expired event through the outbox: a
-- normal write, so the pipeline persists it once.  A second sweep finds the
-- marker final and writes nothing.  No value is written: none is left.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'alive', 0} end
local mv, mflag = marker()
local pg = tonumber(PERSISTED)
if mv then
  if mflag == 'D' or mflag == 'E' then return {'final', mv} end
  if mv > pg then return {'ahead', mv} end
  if mv < pg then return {'behind', mv} end
elseif ARGV[15] ~= '1' then
  return {'unknown', 0}
end
local v = pg + 1
local ttl = tonumber(TTL)
set_marker(v .. '|E', MARKER_TTL, ttl)
local o = OWNER ~= '' and ('@' .. OWNER) or ''
return {'ok', announce(EXPIRED, v, ARGV[13], ttl, 'null', o, ARGV[14])}
