-- KEYS[1] session
-- returns {} (no key) | {value, 1 if it carries the node's epoch else 0}
-- A read that must not serve a value from before Redis went back in time:
-- the epoch is compared on the node, in the same round trip (a cached epoch
-- would leave a window after a failover, and a read-only process sees no
-- error to tell it).
local raw = redis.call('GET', KEYS[1])
if not raw then return {} end
local _, _, _, _, _, e = parse(raw)
return {raw, e == epoch() and 1 or 0}
