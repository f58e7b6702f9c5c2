-- update: replace the state (PUT, and PATCH's compare-and-set)
-- ARGV (write.lua): 6 expected version or '' (any: If-Match *); 7 persisted
-- version; 8 a new ttl seconds or '' (keep); 9 state JSON
-- returns {'ok', event} | {'replay', event} | {'reused', 0}
--       | {'conflict', actual} | {'deleted', version}
--       | {'missing', marker version or 0}: the key is gone; recover, retry
--       | {'expired', marker version}: its lifetime ended (the expiry sweep's marker)
--       | {'unverified', version, its epoch}: a value of another epoch; ask PostgreSQL
--       | {'behind', version}: older than PostgreSQL's; repair it
local refused, _, v, created, _, ttl, _, o, ep = open_live()
if refused then return refused end
if TTL ~= '' then ttl = tonumber(TTL) end
return commit(UPDATED, v + 1, created, ttl, 'L', ep, o, STATE)
