-- block: a revoke-all tombstones an id its owner registered whose create
-- has not run (yet, or ever: a create that failed or crashed after
-- registering): a deleted version 1, shipped like any deletion.  The create
-- that comes later finds it and fails (SessionExists), as for any deleted
-- id.  See the timeline above ``owner_index_key`` (keys.py).
-- ARGV (write.lua): 7 as create's; 8 ttl seconds; 10 owner id
-- returns {'ok', event} | {'exists', version} | {'deleted', version} (the id
--         was created: delete it the usual way) | {'unknown', 0} (as create's)
local refused = open_new()
if refused then return refused end
return commit(DELETED, 1, NOW_ISO, tonumber(TTL), 'D', epoch(), '@' .. OWNER, 'null')
