"""Redis as an operator sees it: what ``sessionsync`` reads there and the
Lambda functions never do.

Reads only, on the store's own client.
"""
from __future__ import annotations

from chalicelib.adapters.redis import scripts

#: the node's epoch read alone, the step every write script and verified read
#: carries (``sessionsync bench`` times it), after the write scripts' prelude
#: so that ``return 1`` in its place times the prelude alone
EPOCH_SCRIPT = scripts.WRITE_PRELUDE + "\nreturn epoch()\n"
