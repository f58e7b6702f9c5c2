#!/usr/bin/env python3
"""Check that docs/performance.md's figures come from the code they describe.

docs/performance.json records the commit ``sessionsync bench`` ran at
(``machine.git``).  This fails when that commit is not in the history, was
measured on a dirty tree, is older than the last change to the code the
bench measures, or is not the commit docs/performance.md names; and, when
docs/performance.template.md exists, when docs/performance.md is not its
rendering with docs/performance.json (scripts/perfdoc_render.py), so the
page cannot be edited by hand away from the figures.

``make perfdoc-check``; not part of ``make test``: the figures are
regenerated last, once the code has landed.  Exit 0 when current, 1 when
stale (with the commits since), 2 when it cannot tell.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import perfdoc_render  # this script's directory is on sys.path when it runs

# What the figures depend on: the service code, the bench itself, and the
# pinned dependencies.  Docs, tests and infrastructure templates do not move them.
MEASURED = ("app.py", "chalicelib", "sessionsync/bench", "requirements.txt")
# commits listed in a report (the newest)
SHOWN = 10


class Unknown(Exception):
    """The check cannot be made (exit 2)."""


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise Unknown(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def problems(root: Path) -> list[str]:
    """What makes the published figures stale ([] when they are current)."""
    try:
        results = json.loads((root / "docs" / "performance.json").read_text())
        git = results["machine"]["git"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Unknown(f"docs/performance.json has no machine.git record: {exc!r}") from exc
    commit = git.get("commit")
    if not commit:
        return ["docs/performance.json records no commit"]
    found: list[str] = []
    if git.get("dirty"):
        found.append(f"measured on a tree with uncommitted changes at {commit[:12]}")
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        return [*found, f"the measured commit {commit[:12]} is not in this repository's history"]
    last = _git(root, "log", "-1", "--format=%H", "--", *MEASURED).stdout.strip()
    if last and _git(root, "merge-base", "--is-ancestor", last, commit, check=False).returncode != 0:
        since = _git(root, "log", "--format=  %h %<(80,trunc)%s", f"{commit}..HEAD", "--",
                     *MEASURED).stdout.rstrip().splitlines()
        more = f"\n  ... and {len(since) - SHOWN} more" if len(since) > SHOWN else ""
        shown = "\n".join(since[:SHOWN]) + more
        found.append(f"measured at {commit[:12]}; {', '.join(MEASURED)} changed since, in "
                     f"{len(since)} commit(s):\n{shown}")
    try:
        doc = (root / "docs" / "performance.md").read_text()
    except OSError:
        doc = ""
    if commit[:7] not in doc:
        found.append(f"docs/performance.md does not name the measured commit {commit[:7]}")
    if (root / perfdoc_render.TEMPLATE).exists():
        try:
            rendered = perfdoc_render.render_repo(root)
        except perfdoc_render.RenderError as exc:
            found.append(f"docs/performance.template.md does not render: {exc}")
        else:
            if rendered != doc:
                found.append("docs/performance.md is not the rendering of docs/performance.template.md "
                             "with docs/performance.json (edit the template, then `make perfdoc`)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the repository (default: this one)")
    args = parser.parse_args(argv)
    try:
        found = problems(args.root)
    except Unknown as exc:
        print(f"perfdoc-check: cannot tell: {exc}", file=sys.stderr)
        return 2
    if found:
        print("perfdoc-check: docs/performance.* are stale (rerun `sessionsync bench` and update them):",
              file=sys.stderr)
        for problem in found:
            print(f"- {problem}", file=sys.stderr)
        return 1
    print("perfdoc-check: docs/performance.* were measured at the code they describe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
