"""Run the named mutants: ``python -m tests.mutants [--list] [--only NAME ...]``.

The tree is copied once to a scratch directory (the real tree is never
touched); the tests of every mutant are first run there unmutated (they
must pass, or a "kill" would mean nothing), then each mutant is applied,
its tests run with a timeout, and the files are put back.  A mutant is
killed when its tests fail (pytest exit status 1); a timeout, a collection
error or a missing test is an error, not a kill.  Exit status: 0 when every
mutant was killed, 1 when one survived or errored, 2 when the harness
could not run (an ``old`` text not found exactly once, a failing baseline).

The copy is imported through PYTHONPATH, ahead of the editable install, and
runs the same services as ``make test`` (REDIS_TEST_URL and friends from the
environment): one mutant at a time, because the tests flush their Redis
database.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.mutants.catalog import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".localstack-venv", ".run", "__pycache__", ".pytest_cache", ".ruff_cache",
    ".hypothesis", "*.egg-info", "bench-results", "build")
# a mutant's selection is a few tests of seconds each; one that hangs is an
# error (each test also has pytest's own timeout, from pyproject.toml)
DEFAULT_TIMEOUT_SECONDS = 300
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


class HarnessError(Exception):
    """The harness cannot run as asked (exit status 2)."""


def apply(mutant: Mutant, tree: Path) -> dict[Path, str]:
    """Apply ``mutant`` in ``tree``; return the original text of each file
    it changed.  Raises HarnessError, leaving nothing changed, when an
    ``old`` text is not found exactly once."""
    originals: dict[Path, str] = {}
    texts: dict[Path, str] = {}
    for edit in mutant.edits:
        path = tree / edit.file
        if path not in texts:
            originals[path] = texts[path] = path.read_text()
        count = texts[path].count(edit.old)
        if count != 1:
            raise HarnessError(f"mutant {mutant.name}: the text to replace occurs {count} times in "
                               f"{edit.file} (must be exactly once):\n{edit.old}")
        texts[path] = texts[path].replace(edit.old, edit.new)
    for path, text in texts.items():
        path.write_text(text)
    return originals


def restore(originals: dict[Path, str]) -> None:
    for path, text in originals.items():
        path.write_text(text)


def _environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree), env.get("PYTHONPATH")) if p)
    # no bytecode: a restored file must never be read from the mutant's .pyc
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _pytest(tree: Path, tests: Sequence[str], timeout: float, log: Path) -> tuple[int | None, str]:
    """(pytest's exit status, or None on timeout; its output)."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=tree, env=_environment(tree), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # pytest and the servers it started
            proc.wait()
            status = None
    return status, log.read_text()


def _check_imports(tree: Path) -> None:
    probe = subprocess.run(
        [sys.executable, "-c",
         "import app, chalicelib.adapters.redis.store as s; print(s.__file__); print(app.__file__)"],
        cwd=tree, env=_environment(tree), capture_output=True, text=True, timeout=60)
    paths = probe.stdout.split()
    if probe.returncode != 0 or len(paths) != 2 or not all(Path(p).is_relative_to(tree) for p in paths):
        raise HarnessError(f"the scratch copy is not what Python imports: {probe.stdout}{probe.stderr}")


def _select(names: Sequence[str], tests: Sequence[str]) -> list[Mutant]:
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise HarnessError(f"unknown mutant(s) {unknown}; see --list")
    chosen = [known[n] for n in names] if names else list(MUTANTS)
    if tests:
        chosen = [dataclasses.replace(m, tests=tuple(tests)) for m in chosen]
    return chosen


def run(mutants: Sequence[Mutant], *, timeout: float, baseline: bool, keep: bool,
        echo=print) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="sessionsync-mutants-"))
    tree = scratch / "tree"
    try:
        shutil.copytree(ROOT, tree, ignore=COPY_IGNORE)
        for m in mutants:  # every mutant must still apply before anything runs
            restore(apply(m, tree))
        _check_imports(tree)
        if baseline:
            tests = list(dict.fromkeys(t for m in mutants for t in m.tests))
            echo(f"baseline: {len(tests)} test selection(s) on the unmutated copy ...")
            started = time.monotonic()
            status, output = _pytest(tree, tests, timeout * 3, scratch / "baseline.log")
            if status != 0:
                raise HarnessError("the mutants' tests fail without any mutant (status "
                                   f"{status}); fix them first:\n{output[-4000:]}")
            echo(f"baseline: passed in {time.monotonic() - started:.0f}s")
        survivors, errors = [], []
        for number, m in enumerate(mutants, 1):
            originals = apply(m, tree)
            started = time.monotonic()
            try:
                status, output = _pytest(tree, m.tests, timeout, scratch / f"{m.name}.log")
            finally:
                restore(originals)
            elapsed = time.monotonic() - started
            if status == 1:
                by = _FAILED.findall(output)
                verdict = f"killed    by {by[0] if by else '(see log)'}"
            elif status == 0:
                verdict = "SURVIVED"
                survivors.append(m)
            else:
                verdict = "ERROR     " + ("timed out" if status is None else f"pytest status {status}")
                errors.append(m)
            echo(f"[{number:2}/{len(mutants)}] G{m.guarantee:<2} {m.name:<45} {elapsed:5.1f}s  {verdict}")
            if status != 1:
                echo("    " + "\n    ".join(output.rstrip().splitlines()[-15:]))
        killed = len(mutants) - len(survivors) - len(errors)
        echo(f"{killed} of {len(mutants)} mutants killed"
             + (f"; survived: {', '.join(m.name for m in survivors)}" if survivors else "")
             + (f"; errors: {', '.join(m.name for m in errors)}" if errors else ""))
        return 0 if killed == len(mutants) else 1
    finally:
        if keep:
            echo(f"scratch copy and logs kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run this mutant (repeatable); default: all")
    parser.add_argument("--tests", nargs="+", default=[], metavar="NODEID",
                        help="run these tests instead of each mutant's own (to explore what else "
                        "catches a mutant; the catalogue's selection is what counts)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                        help="seconds per mutant (default %(default)s)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running the tests on the unmutated copy first")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy and the logs")
    args = parser.parse_args(argv)
    try:
        mutants = _select(args.only, args.tests)
        if args.list:
            for m in mutants:
                print(f"G{m.guarantee:<2} {m.name:<45} {', '.join(m.files)}\n    {m.what}")
                for test in m.tests:
                    print(f"    - {test}")
            return 0
        return run(mutants, timeout=args.timeout, baseline=not args.no_baseline, keep=args.keep)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
