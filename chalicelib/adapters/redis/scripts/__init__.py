"""The Lua scripts, one file each, read once per process as package data.

A read or a repair runs as ``lib.lua + <name>.lua``; a write (a script that
commits a change event) as ``lib.lua + HEADER + write.lua + <name>.lua``:
``write.lua`` is the write protocol (one ARGV layout, the checks before a
write, the commit and its reply), and the header is generated from the
event schema (chalicelib.domain.events), so the scripts cannot drift from
the reader.  Each ``<name>.lua`` starts with its KEYS / ARGV / returns
comment.

Each script carries only the prelude's functions it calls (``shake``):
Redis runs a script's whole text on every call, and each ``local
function`` is a closure built anew each time (docs/performance.md, "Where
a write's server time goes").
"""
from __future__ import annotations

import re
from importlib.resources import files

from chalicelib.domain.events import CREATED, DELETED, EVENT_SCHEMA_VERSION, EXPIRED, TOUCHED, UPDATED

HEADER = f"""
local EVENT_SCHEMA_VERSION = {EVENT_SCHEMA_VERSION}
local CREATED, UPDATED, DELETED = '{CREATED}', '{UPDATED}', '{DELETED}'
local TOUCHED, EXPIRED = '{TOUCHED}', '{EXPIRED}'
"""


def read(name: str) -> str:
    """The text of one file of the package, as it is."""
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


#: what every script starts with: the value's format and the epoch
LIB = read("lib.lua")
#: what every write starts with: LIB, the event schema and the write protocol
WRITE_PRELUDE = LIB + HEADER + read("write.lua")


# a prelude's top-level function, with the comment lines right above it; the
# prelude's functions end with an ``end`` at the start of a line, and only
# they do (their bodies are indented)
_FUNCTION = re.compile(r"(?:^--[^\n]*\n)*^local function (\w+)\(.*?^end\n", re.M | re.S)
_DEFINED = re.compile(r"^local function (\w+)\(", re.M)
# a comment, or a quoted string (kept whole: a '--' in it starts no comment)
_COMMENT = re.compile(r"""('(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*")|--[^\n]*""")


def _code(text: str) -> str:
    """``text`` without its comments (what a call can be in)."""
    return _COMMENT.sub(lambda m: m.group(1) or "", text)


def shake(prelude: str, body: str) -> str:
    """``prelude + body`` without the prelude's functions that ``body``
    never calls, directly or through another kept function.  The rest of
    the prelude (its locals from ARGV, the header) stays as it is, and the
    kept functions keep their order (a local is defined before its use)."""
    functions = {m.group(1): m.group(0) for m in _FUNCTION.finditer(prelude)}
    if list(functions) != _DEFINED.findall(prelude):
        # a function _FUNCTION cannot tell apart (one on a single line, one
        # whose ``end`` is indented) would take the next ones with it
        raise ValueError("each prelude function must end with an 'end' line of its own: "
                         f"{sorted(set(_DEFINED.findall(prelude)) - set(functions))} do not")
    kept: set[str] = set()
    todo = [_code(_FUNCTION.sub("", prelude) + body)]
    while todo:
        code = todo.pop()
        for name, text in functions.items():
            if name not in kept and re.search(rf"\b{name}\b", code):
                kept.add(name)
                todo.append(_code(text))
    return _FUNCTION.sub(lambda m: m.group(0) if m.group(1) in kept else "", prelude) + body


def load(name: str) -> str:
    """The whole text of read or repair script ``name``."""
    return shake(LIB, read(f"{name}.lua"))


def load_write(name: str) -> str:
    """The whole text of write script ``name`` (scripts/write.lua)."""
    return shake(WRITE_PRELUDE, read(f"{name}.lua"))


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
LEASE_SCRIPT = read("lease.lua")  # the relay's lease: none of lib.lua
#: the previous release's marker keys moved into the marker hashes
#: (sessionsync migrate-markers): an operator's, not the Lambda's
MIGRATE_MARKERS_SCRIPT = read("migrate_markers.lua")
#: a session's marker, as the scripts read it (SessionStore.marker)
MARKER_SCRIPT = load("marker")
