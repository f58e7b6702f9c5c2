"""``python -m sessionsync.bench.hot_path`` measures every step of the hot
path and its C-client floors in one run (docs/bench/hot-path-steps.json).

Not a timed test: it asserts the shape of the results, never a speed.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

PROJECT_DIR = Path(__file__).resolve().parents[3]


def test_the_steps_run_measures_every_variant_and_the_c_client_floors(tmp_path):
    output = tmp_path / "steps.json"
    proc = subprocess.run(
        [sys.executable, "-m", "sessionsync.bench.hot_path", "--iterations", "100",
         "--output", str(output)],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(output.read_text())

    ops = {f"{variant}.{op}" for variant in ("pool", "single", "hot")
           for op in ("get", "evalsha_get_script", "store_get", "store_update")}
    ops |= {"raw.get", "raw.evalsha_get_script", "pool.handler_get", "hot.handler_get"}
    assert set(results["latency"]) == ops
    assert all(results["latency"][op]["p50_us"] > 0 for op in ops)
    floors = results["c_client"]
    assert set(floors) == {"c_get", "c_get_verified", "c_update", "c_create"}
    assert all(len(floor["slices"]) == 3 and floor["p50_us"] > 0 for floor in floors.values())
    assert results["ratios"]["hot.store_update/c_update"] > 0
    assert results["ratios"]["hot.handler_get/hot.store_get"] > 0
