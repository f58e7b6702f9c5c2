-- delete: replace the session with a versioned tombstone
-- ARGV (write.lua): 6 expected version or '' (any); 7 persisted version
-- returns as update.lua
-- The tombstone keeps the session's TTL: a write still in flight with an
-- old version fails its check instead of recreating the session.
local refused, _, v, created, _, ttl, _, o, ep = open_live()
if refused then return refused end
return commit(DELETED, v + 1, created, ttl, 'D', ep, o, 'null')
