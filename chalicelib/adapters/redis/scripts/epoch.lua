-- KEYS[1] any key of the slot whose node is asked
-- returns the node's epoch: the step every write script and verified read
-- carries (``sessionsync bench`` times it alone)
return epoch()
