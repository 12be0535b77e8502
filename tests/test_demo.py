"""`svldrl demo`, the README's first command: the whole pipeline at tiny size, its report, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from svldrl import config as C
from svldrl import demo
from svldrl.cli import main

TINY_DEMO = {
    "cases": 6,
    "test_cases": 3,
    "size": 32,
    "difficulty": "easy",
    "patch": 32,
    "iterations": 4,
    "steps_per_epoch": 2,
    "val_every": 2,
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
    assert [r["run"] for r in rows] == ["supervised_clean", "supervised_noisy", "recommended_noisy"]
    assert rows[0]["label Dice"] == 1.0 and 0.0 < rows[1]["label Dice"] < 1.0
    assert all(0.0 <= r["Dice"] <= 1.0 for r in rows)
    report = out / "report"
    text = (report / "results.md").read_text()
    assert "3 test cases" in text and "recommended_noisy" in text
    assert json.loads((report / "results.json").read_text()) == rows
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


def test_demo_shows_the_recommended_preset():
    # the demo shows what we recommend: the shipped preset, where each choice is explained
    from_yaml = C.load_config([C.preset_path("recommended")])
    from_demo = C.load_config(overrides=[f"method={demo.RECOMMENDED_METHOD}", *demo.RECOMMENDED])
    assert from_demo == from_yaml
    assert ("recommended_noisy", demo.RECOMMENDED_METHOD, "noisy/mt0.5", demo.RECOMMENDED) in demo.RUNS


def test_demo_refuses_a_folder_of_another_demo_or_other_files(tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "demo"
    demo._claim(out, {"mode": "quick", "seed": 0})
    before = (out / "demo.json").read_bytes()
    demo._claim(out, {"mode": "quick", "seed": 0})  # the same demo again: resumes
    # the full demo would otherwise reuse the quick demo's phantoms and checkpoints and report them as its own
    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "other settings (quick)" in err and str(out) in err and "Traceback" not in err
    assert (out / "demo.json").read_bytes() == before

    # a folder of the user's whose files the demo would write over: refused, nothing touched
    other = tmp_path / "mine"
    (other / "runs").mkdir(parents=True)
    (other / "runs" / "notes.txt").write_text("keep")
    assert main(["demo", "--out", str(other), "--quick"]) == 2
    assert "files svldrl did not write" in capsys.readouterr().err
    assert sorted(p.name for p in other.rglob("*")) == ["notes.txt", "runs"]

    # nor a dataset's own folder
    dataset = tmp_path / "Dataset001_X"
    (dataset / "imagesTr").mkdir(parents=True)
    (dataset / "dataset.json").write_text("{}")
    assert main(["demo", "--out", str(dataset), "--quick"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in dataset.iterdir()) == ["dataset.json", "imagesTr"]
