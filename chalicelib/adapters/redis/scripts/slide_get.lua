-- KEYS[1] session
-- returns as GET_SCRIPT
-- GET_SCRIPT that also slides the key's TTL (SESSION_SLIDE_ON_READ): a live
-- value of the node's epoch gets its full TTL again, in the same step as
-- the read, so a key read just before it expires cannot vanish under the
-- read.  Nothing else changes: no version, no event, no marker (a read
-- never writes to PostgreSQL; docs/decisions/session-lifetime.md).
local raw = redis.call('GET', KEYS[1])
if not raw then return {} end
local _, _, _, t, f, e = parse(raw)
local current = e == epoch()
if current and f == 'L' then redis.call('EXPIRE', KEYS[1], t) end
return {raw, current and 1 or 0}
