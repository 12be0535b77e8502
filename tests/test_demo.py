"""`svldrl demo`, the README's first command: the whole pipeline at tiny size, its report, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from svldrl import demo

TINY_DEMO = {
    "cases": 6,
    "test_cases": 3,
    "size": 32,
    "patch": 32,
    "iterations": 4,
    "steps_per_epoch": 2,
    "features": [4, 8, 16, 32],
}


def test_demo_reports_on_at_least_30_test_cases():
    # fewer test cases let one hard phantom move the mean Dice by several points (benchmark rule)
    assert all(s["test_cases"] >= 30 for s in demo.SETTINGS.values())


@pytest.mark.slow
def test_demo_runs_reports_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(demo.SETTINGS, "quick", TINY_DEMO)
    out = tmp_path / "demo"
    first = demo.run_demo(out, quick=True)

    rows = first["rows"]
    assert [r["run"] for r in rows] == ["supervised_clean", "supervised_noisy", "svldrl_noisy"]
    assert rows[0]["label Dice"] == 1.0 and 0.0 < rows[1]["label Dice"] < 1.0
    assert all(0.0 <= r["Dice"] <= 1.0 for r in rows)
    report = out / "report"
    text = (report / "results.md").read_text()
    assert "3 test cases" in text and "svldrl_noisy" in text
    assert json.loads((report / "results.json").read_text()) == rows
    assert (report / "svldrl_action_map.png").stat().st_size > 0
    assert len(list(report.glob("overlay_*.png"))) >= 1
    summaries = sorted((out / "predictions").glob("*/summary.json"))
    assert len(summaries) == 3
    assert all(len(json.loads(p.read_text())["metric_per_case"]) == 3 for p in summaries)

    # a rerun trains nothing again and reports the same table
    ckpts = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/checkpoint_final.pt")}
    assert len(ckpts) == 3
    again = demo.run_demo(out, quick=True)
    assert again["rows"] == rows
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts
