-- KEYS[1] session
-- ARGV[1] the version the caller read  ARGV[2] the version PostgreSQL holds
-- returns {'ok'} | {'changed'} (another write came first: it carries the
--         epoch already) | {'behind', version}
-- Marks a value of another epoch as confirmed by PostgreSQL, keeping its TTL.
local raw = redis.call('GET', KEYS[1])
if not raw then return {'changed'} end
local v, c, u, t, f, e = parse(raw)
if v < tonumber(ARGV[2]) then return {'behind', v} end
if v ~= tonumber(ARGV[1]) then return {'changed'} end
local ep = epoch()
if e ~= ep then
  local h = head(v, c, u, t, f)
  redis.call('SET', KEYS[1], h .. ep .. string.sub(raw, #h + #e + 1), 'KEEPTTL')
end
return {'ok'}
