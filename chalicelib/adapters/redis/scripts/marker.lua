-- KEYS[1] session  KEYS[2] the bucket's marker hash
-- returns the marker "<version>|<L|D|E>", or nil: both of its forms read in
-- one step, as the write scripts read them (lib.lua's marker_raw)
return marker_raw()
