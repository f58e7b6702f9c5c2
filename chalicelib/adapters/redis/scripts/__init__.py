"""The Lua scripts, one file each, read once per process as package data.

Each script is run as ``HEADER + lib.lua + <name>.lua``: the header is
generated from the event schema (chalicelib.domain.events), so the scripts
cannot drift from the reader; ``lib.lua`` holds the helpers every script
shares.  Each ``<name>.lua`` starts with its KEYS / ARGV / returns comment.
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


#: the header and the shared helpers: what every script starts with
LIB = HEADER + _read("lib.lua")


def load(name: str) -> str:
    """The whole text of script ``name`` (``<name>.lua`` after ``LIB``)."""
    return LIB + _read(f"{name}.lua")


CREATE_SCRIPT = load("create")
UPDATE_SCRIPT = load("update")
DELETE_SCRIPT = load("delete")
TOUCH_SCRIPT = load("touch")
EXPIRE_SCRIPT = load("expire")
SLIDE_GET_SCRIPT = load("slide_get")
RESTORE_SCRIPT = load("restore")
VOUCH_SCRIPT = load("vouch")
SETTLE_SCRIPT = load("settle")
HOLD_SCRIPT = load("hold")
EPOCH_SCRIPT = load("epoch")
GET_SCRIPT = load("get")
BLOCK_SCRIPT = load("block")
