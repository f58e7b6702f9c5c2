"""scripts/perfdoc_render.py (``make perfdoc``): docs/performance.md is the
rendering of docs/performance.template.md with the bench's JSON, so no
figure in it can drift from the run it names."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.constants import PROJECT_DIR

SCRIPT = PROJECT_DIR / "scripts" / "perfdoc_render.py"
_spec = importlib.util.spec_from_file_location("perfdoc_render", SCRIPT)
assert _spec is not None and _spec.loader is not None
perfdoc_render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(perfdoc_render)

RESULTS = {
    "machine": {"git": {"commit": "abcdef0123456789", "dirty": False}, "load_average_at_start": [0.5, 1, 2]},
    "profile": "full",
    "sections": {"store": {"latency": {"get": {"p50_us": 71.456}}, "ratios": {"get/floor_get": {"p50": 1.08}},
                           "count": 20000}},
    "targets": [{"target": "get <= 1.3x raw GET (p50)", "measured": 1.08, "limit": 1.3, "met": True},
                {"target": "cold start: import + first GET", "measured": 81.3, "limit": None, "met": None},
                {"target": "update p99 < 1 ms", "measured": 2.1, "limit": 1.0, "met": False}],
}


def _render(template: str, artifacts: Path = Path("/nonexistent")) -> str:
    page = perfdoc_render.render(template, RESULTS, artifacts)
    assert page.startswith(perfdoc_render.HEADER)
    return page[len(perfdoc_render.HEADER):]


def test_a_placeholder_becomes_the_figure_at_its_path_with_its_format():
    page = _render("get p50 {{store.latency.get.p50_us:.1f}} us over {{ store.count:, }} calls, "
                   "ratio {{store.ratios.get/floor_get.p50}}, commit `{{machine.git.commit:.7}}` "
                   "({{machine.git.dirty:tree}}), load {{machine.load_average_at_start[0]}}, {{profile}}")

    assert page == ("get p50 71.5 us over 20,000 calls, ratio 1.08, commit `abcdef0` (clean tree), "
                    "load 0.5, full")


def test_a_target_renders_its_status_and_fields_by_name_even_with_a_colon_in_it():
    page = _render("{{target:get <= 1.3x raw GET (p50)|status}} at "
                   "{{target:get <= 1.3x raw GET (p50)|measured:.2f}}; "
                   "{{target:cold start: import + first GET|status}}; "
                   "{{target:update p99 < 1 ms|status}}")

    assert page == "met at 1.08; no number; missed"


def test_the_targets_table_has_a_row_for_every_target_of_the_run():
    rows = _render("{{targets:table}}").splitlines()

    assert rows[2:] == [
        "| get <= 1.3x raw GET (p50) | 1.08  | 1.3  | **met** |  |",
        "| cold start: import + first GET | 81.3  | (none) | **no number** |  |",
        "| update p99 < 1 ms | 2.1  | 1.0  | **missed** |  |",
    ]


def test_a_bench_artifact_is_read_from_its_file_and_a_dotted_key_is_quoted(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "steps.json").write_text(json.dumps({"latency": {"pool.get": {"p50_us": 79.93}}}))

    page = _render('before {{bench/steps.json:latency["pool.get"].p50_us:.1f}} us', tmp_path)

    assert page == "before 79.9 us"


@pytest.mark.parametrize("placeholder", ["store.latency.gett.p50_us", "store.latency.get.p50_us.x",
                                         "machine.load_average_at_start[7]", "target:no such target|status",
                                         "target:get <= 1.3x raw GET (p50)|nothing", "store.latency",
                                         "target:cold start: import + first GET|limit",
                                         "bench/missing.json:a.b"])
def test_a_placeholder_that_names_no_value_fails_naming_it(placeholder):
    with pytest.raises(perfdoc_render.RenderError) as failure:
        _render(f"text {{{{{placeholder}}}}} more")

    assert f"{{{{{placeholder}}}}}" in str(failure.value)


def test_the_script_exits_1_naming_the_placeholder_and_writes_nothing(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "performance.json").write_text(json.dumps(RESULTS))
    (tmp_path / "docs" / "performance.template.md").write_text("p50 {{store.latency.get.p99_us}}\n")

    result = subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path)], capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 1
    assert "{{store.latency.get.p99_us}}" in result.stderr
    assert not (tmp_path / "docs" / "performance.md").exists()


def test_json_of_a_new_run_is_copied_with_its_chart_and_rendered(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "performance.template.md").write_text("commit {{machine.git.commit:.7}}\n")
    run = tmp_path / "bench-results" / "bench-full-1.json"
    run.parent.mkdir()
    run.write_text(json.dumps(RESULTS))
    run.with_suffix(".png").write_bytes(b"\x89PNG")

    result = subprocess.run([sys.executable, str(SCRIPT), "--root", str(tmp_path), "--json", str(run)],
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "docs" / "performance.json").read_text()) == RESULTS
    assert (tmp_path / "docs" / "performance.png").read_bytes() == b"\x89PNG"
    assert (tmp_path / "docs" / "performance.md").read_text().endswith("commit abcdef0\n")


def test_the_committed_page_is_the_rendering_of_the_template_with_the_committed_results():
    rendered = perfdoc_render.render_repo(PROJECT_DIR)

    assert (PROJECT_DIR / "docs" / "performance.md").read_text() == rendered, (
        "docs/performance.md was edited by hand: edit docs/performance.template.md, then `make perfdoc`")
