-- touch: extend the lifetime from now without changing the state; a write
-- like any other (version, marker, outbox, Pub/Sub), of type
-- session_touched, carrying the unchanged state so that PostgreSQL's latest
-- row stays whole
-- ARGV (write.lua): 6 expected version or '' (any); 7 persisted version;
-- 8 a new ttl seconds or '' (keep)
-- returns as update.lua
local refused, raw, v, created, u, ttl, e, o, ep = open_live()
if refused then return refused end
local state = string.sub(raw, #head(v, created, u, ttl, 'L') + #e + #o + 2)
if TTL ~= '' then ttl = tonumber(TTL) end
return commit(TOUCHED, v + 1, created, ttl, 'L', ep, o, state)
