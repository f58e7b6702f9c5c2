-- migrate_markers: markers of the previous format (a key each) moved into
-- their bucket's marker hash, a batch at a time (sessionsync migrate-markers)
-- KEYS[1] the bucket's marker hash  KEYS[2]... marker keys "<KEYS[1]>:<id>"
-- returns {moved, already, gone, kept}
-- moved: the field held no marker or an older one; already: it held this
-- version or a newer one (a write of this release, or an earlier run); both
-- delete the key.  gone: the key vanished since the SCAN (a write moved it);
-- kept: a key with a TTL, SESSION_MARKER_TTL's form, which stays a key.
-- One script per batch: atomic with the writes, so a live write and the move
-- never interleave, and a second run finds nothing to do.
local moved, already, gone, kept = 0, 0, 0, 0
local prefix = #KEYS[1] + 2
for i = 2, #KEYS do
  local k = redis.call('GET', KEYS[i])
  if not k then
    gone = gone + 1
  elseif redis.call('PTTL', KEYS[i]) >= 0 then
    kept = kept + 1
  else
    local id = string.sub(KEYS[i], prefix)
    local f = redis.call('HGET', KEYS[1], id)
    if f and tonumber(string.match(f, '^(%d+)')) >= tonumber(string.match(k, '^(%d+)')) then
      already = already + 1
    else
      redis.call('HSET', KEYS[1], id, k)
      moved = moved + 1
    end
    redis.call('DEL', KEYS[i])
  end
end
return {moved, already, gone, kept}
