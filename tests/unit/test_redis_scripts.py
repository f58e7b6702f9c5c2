"""scripts.shake: each script carries the prelude functions it calls, and only those."""
from __future__ import annotations

import re

import pytest

from chalicelib.adapters.redis import scripts


def _functions(text: str) -> list[str]:
    return re.findall(r"^local function (\w+)\(", text, re.M)


PRELUDE = """-- header comment
local A = ARGV[1]
-- a's comment
local function a()
  return A
end
-- b calls a
local function b()
  return a() .. 'x'
end
local function c()
  return 1
end
-- d: named in a comment of the body only
local function d()
  return 2
end
"""


def test_a_function_the_body_calls_is_kept_with_what_it_calls_in_turn():
    text = scripts.shake(PRELUDE, "-- d() is not called\nreturn b()\n")

    assert _functions(text) == ["a", "b"]
    assert "local A = ARGV[1]\n" in text  # the prelude's other lines stay
    assert "-- a's comment\n" in text and "-- d: named" not in text  # a function leaves with its comment
    assert text.endswith("return b()\n")


def test_a_function_assigned_in_the_body_is_kept():
    # the mutants replace a prelude function by assigning to its local
    assert _functions(scripts.shake(PRELUDE, "c = function() end\nreturn b()\n")) == ["a", "b", "c"]


def test_each_script_carries_the_prelude_functions_it_calls_and_no_other():
    prelude = _functions(scripts.WRITE_PRELUDE)
    for name, text in vars(scripts).items():
        if not name.endswith("_SCRIPT") or name == "LEASE_SCRIPT":
            continue
        kept = [f for f in _functions(text) if f in prelude]
        # every kept function is named outside its own definition
        rest = re.sub(r"--[^\n]*", "", text)
        for function in kept:
            uses = len(re.findall(rf"\b{function}\b", rest))
            assert uses > 1, (name, function)
        # and every prelude function named outside a comment is kept
        body = re.sub(r"--[^\n]*", "", text[text.rindex("\nend\n") + 5:] if kept else text)
        for function in prelude:
            if re.search(rf"\b{function}\(", body):
                assert function in kept, (name, function)
    update = _functions(scripts.UPDATE_SCRIPT)
    assert {"epoch", "parse", "open_live", "commit", "event"} <= set(update)
    assert not {"open_new", "now_ms"} & set(update)  # create's, restore's and settle's
    assert _functions(scripts.GET_SCRIPT) == ["epoch", "parse"]


def test_a_call_after_a_double_dash_in_a_string_keeps_its_function():
    text = scripts.shake(PRELUDE, "return '--' .. b()\n")

    assert _functions(text) == ["a", "b"]


def test_a_one_line_prelude_function_is_refused_rather_than_take_the_next_one_with_it():
    prelude = "local function one() return 1 end\nlocal function two()\n  return 2\nend\n"

    with pytest.raises(ValueError, match="two"):
        scripts.shake(prelude, "return two()\n")
