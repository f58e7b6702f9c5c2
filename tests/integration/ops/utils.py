"""Helpers of the operator tests."""
from __future__ import annotations

import re

from tests.support.ops import PROJECT_DIR

SECTION = "## Conflicts: read again, re-apply, retry"

def readme_blocks() -> list[str]:
    """The ```python blocks of the README's conflicts section, in order."""
    text = (PROJECT_DIR / "README.md").read_text()
    assert SECTION in text, f"the README lost its section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)
