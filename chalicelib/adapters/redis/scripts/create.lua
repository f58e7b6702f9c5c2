-- create: version 1 of a new session (POST, PUT with If-None-Match: *)
-- ARGV (write.lua): 7 '0' PostgreSQL has no such session (or there is no
-- PostgreSQL), '' not asked; 8 ttl seconds; 9 state JSON; 10 owner id or ''
-- returns {'ok', event} | {'replay', event} | {'reused', 0}
--       | {'exists', version} | {'deleted', version}: the id was created (a
--         key or a marker), and ids are never reused
--       | {'unknown', 0}: Redis knows nothing of the id; ask PostgreSQL
local refused = open_new()
if refused then return refused end
local o = OWNER ~= '' and ('@' .. OWNER) or ''
return commit(CREATED, 1, NOW_ISO, tonumber(TTL), 'L', epoch(), o, STATE)
