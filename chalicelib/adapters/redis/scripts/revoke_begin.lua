-- revoke_begin: a revoke-all begins.  The ids the owner's index holds now
-- join the ids still to revoke (those a call that stopped left), and no id
-- registered from now on does: the walk is bounded by the sessions created
-- before the call, however many creates race it (the timeline above
-- keys.owner_index_key).  The index keeps its entries: the listing reads it.
-- KEYS[1] the owner's index  KEYS[2] the ids still to revoke
-- KEYS[3] where the walk of PostgreSQL stopped
-- ARGV[1] '1': take nothing, only tell the node's epoch (the call's end: a
--         failover or a restart since its start may have lost the set)
-- returns {Redis's time in ms (when the call began), the position or '',
--          the node's epoch}
if ARGV[1] ~= '1' then
  redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], KEYS[1], 'AGGREGATE', 'MIN')
end
return {now_ms(), redis.call('GET', KEYS[3]) or '', epoch()}
