-- KEYS[1] the bucket's epoch record "<epoch>|<ms when first seen>|<the epoch it
--         is proven to continue, or ''>|<the record it replaced: epoch@ms, or ''>"
--         (older records end after the ms)
-- ARGV[1] settle time in ms
-- ARGV[2] '1': a missing record means a new deployment, already settled,
--         unless the caller saw the node in another epoch (ARGV[3]) before;
--         'spread': only pass the evidence on to an existing record (below)
-- ARGV[3] the first epoch the caller saw this node in, or ''
-- ARGV[4] the epoch of the value the caller asks about, or '' (none: a new id)
-- ARGV[5], ARGV[6]... pairs (replication id, offset): histories the caller
--         saw end, and the offset each ended at (client.ended_histories)
-- returns {ms left to wait, 0 | 1 (the record was of another epoch) | 2 (no
--          record: Redis lost it, or a new deployment) | 3 (this node
--          continues the record's history: nothing was lost), the node's epoch,
--          1 when evidence may still end the wait (this node says it
--          continues the history the bucket was in, unproven yet) else 0}
-- After Redis went back in time, a session it may hold stale waits until
-- the changes still in the queue had time to reach PostgreSQL.  The first
-- call in a new epoch starts the clock (Redis's own: one clock for all); a
-- record of a new deployment is written as settled long ago.
--
-- Evidence ends the wait: a promoted replica's master_replid2 names the
-- history it continues, and second_repl_offset - 1 is how far it holds it.
-- When that history is one the caller saw END (its primary demoted: the
-- offset is final, no write can follow it) at an offset this node holds,
-- every write ever acknowledged in it is here: values of that epoch are
-- current and the bucket's clock carries over (status 3).  The record keeps
-- "|<continued epoch>" so that every caller, with or without the evidence,
-- trusts values of that epoch from now on (the caller that found the
-- evidence passes it on to every bucket's record: 'spread').  No evidence,
-- or evidence this node contradicts (it holds less than the history's
-- end): the wait as before.
local info = redis.call('INFO', 'replication')
-- a replica (a pooled connection still on a demoted primary): refused as a
-- write is, whatever the branch below, so that the client asks it where its
-- history ended and sends this again on a new connection (client.py)
if string.find(info, 'role:slave', 1, true) then
  return redis.error_reply('READONLY the epoch record is written on the primary')
end
local ep = string.sub(string.match(info, 'master_replid:(%x+)'), 1, 8)
-- all zeros: the node continues no other history (never a replica since it started)
local replid2 = string.match(info, 'master_replid2:(%x+)') or ''
if not string.find(replid2, '[^0]') then replid2 = '' end
local second = tonumber(string.match(info, 'second_repl_offset:(%-?%d+)') or '-1')
local prev = string.sub(replid2, 1, 8)
local proven = false
for i = 5, #ARGV - 1, 2 do
  if ARGV[i] == replid2 and second - 1 >= tonumber(ARGV[i + 1]) then proven = true end
end
local settle = tonumber(ARGV[1])
local now = now_ms()
local rec = redis.call('GET', KEYS[1])
local rep, since, from, was_rep, was_since = nil, 0, '', '', ''
if rec then
  rep, since, from, was_rep, was_since = string.match(rec .. '|||', '^(%x+)|(%d+)|(%x*)|(%x*)@?(%d*)|')
  since = tonumber(since)
end
local function left() return math.max(0, settle - (now - since)) end
if ARGV[2] == 'spread' and not (rec and proven) then return {0, rec and 0 or 2, ep} end
if rep == ep then
  if from == '' and proven then
    -- evidence came after this epoch's clock started (from the record of
    -- the history it continues, replaced a moment ago): that record's clock
    from = prev
    if was_rep == prev and was_since ~= '' then since = tonumber(was_since) end
    redis.call('SET', KEYS[1], ep .. '|' .. since .. '|' .. prev .. '|')
  end
  -- continued: values of the epoch it continues are current; older ones
  -- wait for the clock the old history carried over
  if from ~= '' then return {ARGV[4] == from and 0 or left(), 3, ep} end
  return {left(), 0, ep, (prev ~= '' and from == '' and was_rep == prev) and 1 or 0}
end
if proven then
  -- the same history, continued: the bucket is as settled as it was in it
  -- (no record there: as a bucket without one is, for a caller of that
  -- history); a record of an older epoch starts the clock, as it would have
  if rep ~= prev then
    since = (not rec and ARGV[2] == '1' and (ARGV[3] == '' or ARGV[3] == ep or ARGV[3] == prev))
            and 0 or now
  end
  redis.call('SET', KEYS[1], ep .. '|' .. since .. '|' .. prev .. '|')
  if ARGV[4] == prev then return {0, 3, ep} end
  return {left(), 3, ep}
end
if not rec and ARGV[2] == '1' and (ARGV[3] == '' or ARGV[3] == ep) then
  redis.call('SET', KEYS[1], ep .. '|0||')
  return {0, 2, ep}
end
redis.call('SET', KEYS[1], ep .. '|' .. now .. '||' .. (rep and (rep .. '@' .. since) or ''))
return {settle, rec and 1 or 2, ep, (prev ~= '' and rep == prev) and 1 or 0}
