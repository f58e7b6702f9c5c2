"""scripts/perfdoc_check.py (``make perfdoc-check``) on a repository of the
test's own: published figures are stale once the code they measure changed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.constants import PROJECT_DIR

SCRIPT = PROJECT_DIR / "scripts" / "perfdoc_check.py"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          cwd=root, check=True, capture_output=True, text=True, timeout=30).stdout.strip()


def _commit(root: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "change")
    return _git(root, "rev-parse", "HEAD")


def _publish(root: Path, commit: str, *, dirty: bool = False, named: str | None = None) -> None:
    """The docs commit after a bench run at ``commit``."""
    record = {"machine": {"git": {"commit": commit, "dirty": dirty}}}
    _commit(root, {"docs/performance.json": json.dumps(record),
                   "docs/performance.md": f"| Commit | `{(named or commit)[:7]}` (clean tree) |\n"})


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--root", str(root)], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def repo(tmp_path) -> tuple[Path, str]:
    _git(tmp_path, "init", "-q")
    measured = _commit(tmp_path, {"app.py": "app = 1\n", "chalicelib/adapters/redis/store.py": "x = 1\n",
                                  "requirements.txt": "redis==8.1.0\n", "tests/test_x.py": ""})
    return tmp_path, measured


def test_figures_measured_at_the_last_change_to_the_code_are_current(repo):
    root, measured = repo
    _publish(root, measured)
    _commit(root, {"tests/test_x.py": "# a test changed\n", "docs/other.md": "more docs\n"})

    result = _check(root)

    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("changed", ["chalicelib/adapters/redis/store.py", "app.py", "requirements.txt",
                                     "sessionsync/bench/runner.py"])
def test_a_change_to_the_measured_code_after_the_run_makes_them_stale(repo, changed):
    root, measured = repo
    _commit(root, {changed: "changed = True\n"})  # landed after the run, before the docs
    _publish(root, measured)

    result = _check(root)

    assert result.returncode == 1
    assert f"measured at {measured[:12]}" in result.stderr and "change" in result.stderr


def test_a_run_on_a_dirty_tree_or_a_doc_naming_another_commit_is_stale(repo):
    root, measured = repo
    _publish(root, measured, dirty=True, named="0000000")

    result = _check(root)

    assert result.returncode == 1
    assert "uncommitted changes" in result.stderr
    assert f"does not name the measured commit {measured[:7]}" in result.stderr


def test_a_commit_that_is_not_in_the_history_is_stale(repo):
    root, _ = repo
    _publish(root, "f" * 40)

    result = _check(root)

    assert result.returncode == 1 and "not in this repository's history" in result.stderr


def test_a_page_that_is_not_the_rendering_of_its_template_is_stale(repo):
    root, measured = repo
    _publish(root, measured)
    _commit(root, {"docs/performance.template.md": "| Commit | `{{machine.git.commit:.7}}` |\n"})

    result = _check(root)

    assert result.returncode == 1
    assert "docs/performance.md is not the rendering of docs/performance.template.md" in result.stderr

    _commit(root, {"docs/performance.md": _render(root)})
    assert _check(root).returncode == 0, _check(root).stderr


def test_a_template_placeholder_the_results_lack_is_reported_by_name(repo):
    root, measured = repo
    _publish(root, measured)
    template = "`{{machine.git.commit:.7}}` {{store.latency.get.p50_us}}\n"
    _commit(root, {"docs/performance.template.md": template})

    result = _check(root)

    assert result.returncode == 1 and "{{store.latency.get.p50_us}}" in result.stderr


def _render(root: Path) -> str:
    subprocess.run([sys.executable, str(SCRIPT.parent / "perfdoc_render.py"), "--root", str(root)],
                   check=True, capture_output=True, text=True, timeout=60)
    return (root / "docs" / "performance.md").read_text()
