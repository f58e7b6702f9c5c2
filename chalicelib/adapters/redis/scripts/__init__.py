"""The Lua scripts, one file each, read once per process as package data.

A read or a repair runs as ``lib.lua + <name>.lua``; a write (a script that
commits a change event) as ``lib.lua + HEADER + write.lua + <name>.lua``:
``write.lua`` is the write protocol (one ARGV layout, the checks before a
write, the commit and its reply), and the header is generated from the
event schema (chalicelib.domain.events), so the scripts cannot drift from
the reader.  Each ``<name>.lua`` starts with its KEYS / ARGV / returns
comment.
"""
from __future__ import annotations

from importlib.resources import files

from chalicelib.domain.events import CREATED, DELETED, EVENT_SCHEMA_VERSION, EXPIRED, TOUCHED, UPDATED

HEADER = f"""
local EVENT_SCHEMA_VERSION = {EVENT_SCHEMA_VERSION}
local CREATED, UPDATED, DELETED = '{CREATED}', '{UPDATED}', '{DELETED}'
local TOUCHED, EXPIRED = '{TOUCHED}', '{EXPIRED}'
"""


def _read(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


#: what every script starts with: the value's format and the epoch
LIB = _read("lib.lua")
#: what every write starts with: LIB, the event schema and the write protocol
WRITE_PRELUDE = LIB + HEADER + _read("write.lua")


def load(name: str) -> str:
    """The whole text of read or repair script ``name``."""
    return LIB + _read(f"{name}.lua")


def load_write(name: str) -> str:
    """The whole text of write script ``name`` (scripts/write.lua)."""
    return WRITE_PRELUDE + _read(f"{name}.lua")


CREATE_SCRIPT = load_write("create")
UPDATE_SCRIPT = load_write("update")
DELETE_SCRIPT = load_write("delete")
TOUCH_SCRIPT = load_write("touch")
EXPIRE_SCRIPT = load_write("expire")
BLOCK_SCRIPT = load_write("block")
GET_SCRIPT = load("get")
SLIDE_GET_SCRIPT = load("slide_get")
RESTORE_SCRIPT = load("restore")
VOUCH_SCRIPT = load("vouch")
SETTLE_SCRIPT = load("settle")
HOLD_SCRIPT = load("hold")
REVOKE_BEGIN_SCRIPT = load("revoke_begin")
LEASE_SCRIPT = _read("lease.lua")  # the relay's lease: none of lib.lua
#: the previous release's marker keys moved into the marker hashes
#: (sessionsync migrate-markers): an operator's, not the Lambda's
MIGRATE_MARKERS_SCRIPT = _read("migrate_markers.lua")
#: a session's marker, as the scripts read it (SessionStore.marker)
MARKER_SCRIPT = load("marker")
