"""Every script as the store sends it (scripts.shake's output) is whole:
Redis compiles it, and every function it calls is defined in it before the
call.  A function shake left out would only fail (a nil global) when the
path that calls it runs, which may be a rare one (a repair, a refusal);
this check covers every path at once."""
from __future__ import annotations

import re

import pytest

from chalicelib.adapters.redis import scripts

# strings and comments: no call is in them
_NOT_CODE = re.compile(r"""'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"|--[^\n]*""")
_KEYWORDS = {"if", "and", "or", "not", "return", "in", "until", "while", "elseif", "then", "do",
             "function", "local", "end", "else", "for", "repeat"}
_LUA = {"tonumber", "tostring", "type", "error", "pcall", "ipairs", "pairs", "select", "unpack",
        "next", "assert"}
SCRIPTS = sorted(name for name in vars(scripts) if name.endswith("_SCRIPT"))


def _code(text: str) -> str:
    return _NOT_CODE.sub(" ", text)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_compiles_on_redis(redis_single, name):
    text = getattr(scripts, name)

    assert redis_single.script_load(text)  # a syntax error is refused here


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_function_a_script_calls_is_defined_before_the_call(name):
    code = _code(getattr(scripts, name))
    defined = {m.group(1): m.start() for m in re.finditer(r"\blocal function (\w+)", code)}
    for call in re.finditer(r"(?<![.:\w])([A-Za-z_]\w*)\s*\(", code):
        called = call.group(1)
        if called in _KEYWORDS or called in _LUA or code[call.start() - 9:call.start()] == "function ":
            continue
        assert called in defined, (name, called)
        assert defined[called] < call.start(), (name, called)
    # and a prelude function named as a value (not called) is defined too
    prelude = set(re.findall(r"^local function (\w+)\(", scripts.WRITE_PRELUDE, re.M))
    named = set(re.findall(r"\b(\w+)\b", code)) & prelude
    assert named <= set(defined), (name, named - set(defined))
