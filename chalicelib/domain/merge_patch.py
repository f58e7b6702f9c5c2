"""JSON Merge Patch (RFC 7396): the pure algorithm, no I/O.

``apply(target, patch)`` is the RFC's MergePatch function (section 2): an
object patch merges member by member, a ``null`` member removes that member
from the target, and anything that is not an object (an array, a string, a
number, true, false, null) replaces the target whole.  Arrays are never
merged: a patch member that is an array replaces the target's.

Neither argument is modified; the result shares the patch's non-object
values (they are plain JSON values, never mutated afterwards).  Members the
target already had keep their place; new ones follow, in the patch's order.
Recursion is as deep as the patch, which request validation bounds
(``validation.MAX_DEPTH``).
"""
from __future__ import annotations

from typing import Any


def apply(target: Any, patch: Any) -> Any:
    """The result of applying ``patch`` to ``target`` (RFC 7396 section 2)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = apply(result.get(name), value)
    return result
