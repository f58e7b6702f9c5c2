"""The named mutants stay armed: every replacement still finds its text
exactly once in today's code, every test that must kill a mutant exists,
and docs/guarantees.md lists them.  (``make mutants`` runs them.)"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.mutants.catalog import MUTANTS, Edit, Mutant
from tests.mutants.runner import HarnessError, apply, restore
from tests.support.constants import PROJECT_DIR

GUARANTEES = (PROJECT_DIR / "docs" / "guarantees.md").read_text()


def _copy(mutant: Mutant, tmp_path: Path) -> Path:
    for name in mutant.files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_DIR / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_every_mutant_still_applies_to_today_s_code_and_changes_it(mutant, tmp_path):
    tree = _copy(mutant, tmp_path)

    originals = apply(mutant, tree)

    assert {p.relative_to(tree).as_posix() for p in originals} == set(mutant.files)
    assert all(path.read_text() != text for path, text in originals.items())
    restore(originals)
    assert all((PROJECT_DIR / name).read_text() == (tree / name).read_text() for name in mutant.files)


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_every_test_that_must_kill_a_mutant_exists(mutant):
    assert mutant.tests
    for node in mutant.tests:
        path, name = node.split("::")
        function = re.sub(r"\[.*\]$", "", name)
        assert re.search(rf"^def {function}\(", (PROJECT_DIR / path).read_text(), re.MULTILINE), node


def test_mutants_have_unique_names_and_attack_a_numbered_guarantee():
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    numbers = {int(n) for n in re.findall(r"^\| (\d+) \|", GUARANTEES, re.MULTILINE)}
    assert {m.guarantee for m in MUTANTS} <= numbers


def test_docs_guarantees_lists_every_mutant():
    section = GUARANTEES[GUARANTEES.index("## Mutants"):]
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.MULTILINE))
    assert listed == {m.name for m in MUTANTS}


@pytest.mark.parametrize("old", ["not in the file", "x = 1\n"], ids=["absent", "twice"])
def test_a_replacement_not_found_exactly_once_is_an_error_and_changes_nothing(old, tmp_path):
    (tmp_path / "f.py").write_text("a = 0\nx = 1\nx = 1\n")
    # the first edit applies; the second does not: neither is written
    mutant = Mutant("m", 1, (Edit("f.py", "a = 0\n", "b = 0\n"), Edit("f.py", old, "z")), ("t",), "")

    with pytest.raises(HarnessError, match=r"occurs [02] times"):
        apply(mutant, tmp_path)

    assert (tmp_path / "f.py").read_text() == "a = 0\nx = 1\nx = 1\n"
