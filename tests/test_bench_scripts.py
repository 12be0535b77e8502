"""The benchmark helper scripts: RL diagnostics over run folders, and sizing a config from a sample."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _metrics(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def test_rl_diagnostics_averages_rl_runs_over_seeds_and_skips_the_rest(tmp_path: Path) -> None:
    diag = _script("rl_diagnostics")
    out = tmp_path / "bench"
    for seed, entropy, keep in ((0, 1.0, 0.3), (1, 0.8, 0.1)):
        _metrics(
            out / "runs" / "mt0.5" / "svldrl" / f"seed{seed}" / "metrics.csv",
            [
                {"epoch": 0, "iteration": 50, "stage": 1, "val_dice": 0.5, "charts/entropy": ""},
                {"epoch": 1, "iteration": 100, "stage": 3, "val_dice": 0.6, "charts/entropy": entropy,
                 "charts/action_frac/keep": keep, "losses/value": 2.0},
            ],
        )  # fmt: skip
    _metrics(out / "runs" / "mt0.5" / "supervised" / "seed0" / "metrics.csv", [{"epoch": 0, "train_loss": 1}])
    assert diag.main([str(out)]) == 0
    with (out / "rl_diagnostics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["epoch"], r["seeds"]) for r in rows] == [
        ("svldrl", "0", "2"),
        ("svldrl", "1", "2"),
    ]
    assert float(rows[1]["charts/entropy"]) == pytest.approx(0.9)
    assert float(rows[1]["charts/action_frac/keep"]) == pytest.approx(0.2)
    assert rows[0]["charts/entropy"] == "nan"  # stage 1 logs no policy
    md = (out / "rl_diagnostics.md").read_text()
    assert "| mt0.5 | svldrl | 1 | 100 | 2 | 3 | 0.6 |" in md and "supervised" not in md

    # a later step of the search, run where the first step's folders are gone: their rows are kept, the new
    # runs' rows are added, and a method with folders here is recomputed from them
    _metrics(
        out / "runs" / "markov" / "svldrl" / "seed0" / "metrics.csv",
        [{"epoch": 0, "iteration": 50, "stage": 3, "charts/entropy": 0.5, "losses/value": 1.0}],
    )
    shutil.rmtree(out / "runs" / "mt0.5" / "svldrl")
    assert diag.main([str(out)]) == 0
    with (out / "rl_diagnostics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["noise"], r["epoch"], r["seeds"]) for r in rows] == [
        ("markov", "0", "1"),
        ("mt0.5", "0", "2"),
        ("mt0.5", "1", "2"),
    ]
    assert float(rows[2]["charts/entropy"]) == pytest.approx(0.9)


def test_rl_diagnostics_refuses_a_folder_without_rl_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    diag = _script("rl_diagnostics")
    assert diag.main([str(tmp_path)]) == 2
    _metrics(
        tmp_path / "runs" / "clean" / "supervised" / "seed0" / "metrics.csv", [{"epoch": 0, "train_loss": 1}]
    )
    assert diag.main([str(tmp_path)]) == 2
    assert "no RL runs" in capsys.readouterr().err


def test_sizing_packs_heavy_methods_apart() -> None:
    sizing = _script("sizing")
    groups = sizing._split(["a", "b", "rl1", "rl2", "c"], {"rl1": 4.0, "rl2": 4.0}, 2)
    assert groups == [["rl1", "a", "c"], ["rl2", "b"]]  # the two RL methods in different processes
    assert sizing._split(["a"], {}, 2) == [["a"]]
    # greedy longest-first packs 5+3 against 4+3+3 (8 / 10); the best split is 9 / 9
    weights = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 3.0, "e": 3.0}
    groups = sizing._split(list(weights), weights, 2)
    assert sorted(sum(weights[n] for n in g) for g in groups) == [9.0, 9.0]
    assert sorted(n for g in groups for n in g) == list("abcde")


@pytest.mark.slow
def test_sizing_runs_a_one_seed_sample_and_scales_it_to_the_matrix(tmp_path: Path) -> None:
    sizing = _script("sizing")
    out = tmp_path / "sizing"
    argv = [str(ROOT / "benchmarks" / "tiny_test.yaml"), "--out", str(out), "--target-min", "0.5"]
    # the reference: any finished benchmark of the config, here the sample itself
    argv += ["--reference", str(out / "sample")]
    assert sizing.main(argv) == 0
    summary = json.loads((out / "sizing.json").read_text())
    # the recorded command reproduces the call, target included
    assert "--target-min 0.5 --reference" in summary["command"] and summary["target_min"] == 0.5
    # tiny_test: 2 methods x 2 settings + the oracle = 5 runs; the sample trains 3 (first setting + oracle)
    assert summary["runs"] == 5 and summary["sample_runs"] == 3 and summary["sample_runs_kept"] == 0
    runs = {name: v["runs"] for name, v in summary["per_method"].items()}
    assert runs == {"supervised (clean)": 1, "supervised": 2, "tloss_t2": 2}
    # the prediction is the heaviest of the --only lists that together name every method once
    assert sorted(n for group in summary["only_lists"] for n in group) == ["supervised", "tloss_t2"]
    per_method = summary["per_method"]
    loads = [
        sum(v["seconds"] for name, v in per_method.items() if name.split(" ")[0] in group)
        for group in summary["only_lists"]
    ]
    assert summary["predicted_wall_min"] == pytest.approx(max(loads) / 60, abs=0.06)
    assert summary["overhead_per_run_s"] >= 0 and len(summary["process_wall_s"]) == len(summary["groups"])
    assert "Predicted wall time" in (out / "results.md").read_text()
    # the reference's Dice of the same runs stand beside the sample's
    assert all(v["reference_dice"] == v["dice"] for v in per_method.values())
    assert "same run" in (out / "results.md").read_text()
    # a --reference that is no benchmark folder is refused before anything trains
    assert sizing.main([*argv[:-1], str(tmp_path / "nowhere"), "--keep-sample"]) == 2
    # a second call refuses the finished sample unless told to keep it; kept, nothing trains again
    assert sizing.main(argv) == 2
    assert sizing.main([*argv, "--keep-sample"]) == 0
    again = json.loads((out / "sizing.json").read_text())
    assert again["sample_runs_kept"] == 3 and again["kept_from"] == summary["date"]
    assert again["overhead_per_run_s"] == pytest.approx(summary["overhead_per_run_s"], abs=0.1)
    assert again["overhead_runs"] == summary["overhead_runs"] == 3
    for name, v in again["per_method"].items():  # the same runs' seconds and scores
        assert (v["seconds_per_run"], v["dice"]) == (
            per_method[name]["seconds_per_run"],
            per_method[name]["dice"],
        )
    # the pooled overhead is the earlier call's, so the prediction is the same (the minutes are rounded to 0.1 and
    # may print one step apart at a rounding boundary; the seconds are compared)
    assert again["predicted_wall_s"] == pytest.approx(summary["predicted_wall_s"], abs=0.01)
    assert "--keep-sample" in again["command"]


def test_refactor_check_finds_any_changed_figure_in_benchmark_demo_and_audit_folders(tmp_path: Path) -> None:
    check = _script("refactor_check")

    def bench(root: Path, dice: float, loss: float) -> Path:
        run = root / "runs" / "mt0.5" / "supervised" / "seed0"
        _metrics(run / "metrics.csv", [{"epoch": 0, "loss": loss, "epoch_time": dice * 7}])
        (run / "result.json").write_text(json.dumps({k: 1 for k in check.SCORES} | {"dice": dice}))
        return root

    def demo(root: Path, dice: float) -> Path:
        _metrics(root / "runs" / "supervised_clean" / "metrics.csv", [{"epoch": 0, "loss": 0.5}])
        (root / "runs" / "supervised_clean" / "checkpoint_final.pt").write_bytes(b"")
        row = {k: 1.0 for k in check.DEMO_SCORES} | {"run": "supervised_clean", "Dice": dice}
        (root / "report").mkdir(parents=True)
        (root / "report" / "results.json").write_text(json.dumps([row]))
        return root

    def audit(root: Path, auroc: float) -> Path:
        _metrics(root / "results.csv", [{"setting": "mt", "detector": "cl", "case_auroc": auroc}])
        return root

    a = bench(tmp_path / "a", 0.9, 0.3)
    assert check.compare(a, bench(tmp_path / "b", 0.9, 0.3)) == (["mt0.5/supervised/seed0"], [])
    assert "scores differ" in check.compare(a, bench(tmp_path / "c", 0.8, 0.3))[1][0]
    assert "metrics.csv differs" in check.compare(a, bench(tmp_path / "d", 0.9, 0.4))[1][0]
    d = demo(tmp_path / "e", 0.7)
    assert check.compare(d, demo(tmp_path / "f", 0.7)) == (["supervised_clean"], [])
    assert check.compare(d, demo(tmp_path / "g", 0.6))[1]
    u = audit(tmp_path / "h", 0.9)
    assert check.compare(u, audit(tmp_path / "i", 0.9)) == (["mt/cl"], [])
    assert check.compare(u, audit(tmp_path / "j", 0.8))[1] == ["mt/cl: figures differ"]


def test_band_safety_reports_the_guarded_and_unguarded_targets_per_set(tmp_path: Path, monkeypatch) -> None:
    """benchmarks/band_safety.py: every set's targets with and without the guard, by role, from svldrl targets;
    a set whose data is missing is skipped with a line, not a crash."""
    import argparse

    safety = _script("band_safety")

    def tiny(root: Path) -> None:
        from svldrl.data.synth import synthesize

        synthesize(root, cases=3, size=32, seed=3, test_cases=1, difficulty="easy")

    def missing(root: Path) -> None:
        raise FileNotFoundError("no such data")

    monkeypatch.setattr(safety, "SETS", [("tiny", "dev", tiny, []), ("absent", "test", missing, [])])
    args = argparse.Namespace(sets="", settings="clean,mt_dilate1.0", work=str(tmp_path / "work"), quiet=True)
    payload = safety.run(args)
    rows = {(r["set"], r["setting"], r["variant"]): r for r in payload["rows"]}
    assert {k[0] for k in rows} == {"tiny"} and len(rows) == 4
    guarded, unguarded = (
        rows[("tiny", "clean", "recommended")],
        rows[("tiny", "clean", "recommended, unguarded")],
    )
    assert guarded["label_dice_given"] == 1.0 and guarded["n_cases"] == 3
    assert guarded["label_dice_target"] >= unguarded["label_dice_target"]
    assert rows[("tiny", "mt_dilate1.0", "recommended")]["label_dice_given"] < 1.0
    payload.update(command="python benchmarks/band_safety.py", date="today", machine="here", wall_s=1.0)
    safety.write_results(tmp_path / "out", payload)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Development sets" in md and "| tiny (3) | given | 1.000 |" in md
    assert len(list(csv.DictReader(open(tmp_path / "out" / "results.csv")))) == 4


@pytest.mark.parametrize("column", ["charts/shift_mm", "charts/agents_keep"])
def test_shift_cost_takes_the_updates_extra_seconds_from_inside_each_run(tmp_path: Path, column: str) -> None:
    """Validating epochs with the update (the shift's or the mask agents') against those without it, in the same
    run: 4 validating epochs of 10 s, 2 of them with the update at 16 s, 4 other epochs of 5 s: 12 extra seconds
    of 72."""
    shift_cost = _script("shift_cost")
    run = tmp_path / "bench" / "runs" / "dilate_t8" / "recommended" / "seed0"
    run.mkdir(parents=True)
    rows = [("10", "0.5", ""), ("5", "nan", ""), ("10", "0.6", ""), ("5", "nan", "")]
    rows += [("16", "0.7", "2.0"), ("5", "nan", ""), ("16", "0.8", "2.1"), ("5", "nan", "")]
    text = f"epoch,epoch_time,val_dice,{column}\n" + "".join(
        f"{i},{t},{v},{s}\n" for i, (t, v, s) in enumerate(rows)
    )
    (run / "metrics.csv").write_text(text)
    assert shift_cost.run_ratio(run / "metrics.csv") == pytest.approx(72 / 60)
    plain = tmp_path / "bench" / "runs" / "dilate_t8" / "supervised_all" / "seed0"
    plain.mkdir(parents=True)
    (plain / "metrics.csv").write_text("epoch,epoch_time,val_dice\n0,5,0.5\n")
    assert shift_cost.main([str(tmp_path / "bench"), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| bench | recommended | 1 | 1.20 |" in md and "supervised_all" not in md


def test_learned_correction_forward_models_and_calls_that_add_rows(tmp_path: Path) -> None:
    """benchmarks/learned_correction.py: an outward offset grows the mask, the cube model dilates it, a prior of the
    mask alone reproduces it; each call's rows join the folder's, a row of the same correction replaced."""
    import numpy as np
    import torch

    lc = _script("learned_correction")
    rng = np.random.default_rng(0)
    mask = np.zeros((16, 16, 16), bool)
    mask[5:11, 5:11, 5:11] = True
    grown = lc.perturb(mask, rng, 2.0, 2.0, 0.0, cube=False)
    assert grown[mask].all() and grown.sum() > mask.sum()
    assert not lc.perturb(mask, rng, -2.0, -2.0, 0.0, cube=False)[~mask].any()
    cubed = lc.perturb(mask, rng, 0.0, 1.0, 0.0, cube=True)  # sides 1-3
    assert cubed[mask].all() and cubed.sum() in (216, 512, 1000)

    class Zero(torch.nn.Module):
        def segment(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 2, *x.shape[2:])

    assert (lc.correct(Zero(), mask.astype(np.float32), mask, prior=1.0) == mask).all()

    def call(command: str, corrected: float, prior: float) -> dict:
        row = {"structure": "thalamus", "setting": "dilate_t8", "seed": 0, "forward": "f", "prior": prior}
        row.update(iterations=10, cases=40, given=0.6, corrected=corrected, corrected_min=0.5)
        row.update(clean_through=0.9, seconds=1.0)
        return {"rows": [row], "command": command, "date": "d", "machine": "m", "wall_s": 1.0, "settings": {}}

    lc.write_results(tmp_path, lc.merged(tmp_path, call("first", 0.8, 0.0), []))
    lc.write_results(tmp_path, lc.merged(tmp_path, call("second", 0.85, 2.0), []))
    lc.write_results(tmp_path, lc.merged(tmp_path, call("third", 0.7, 0.0), []))
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert sorted((r["command"], r["corrected"]) for r in rows) == [("second", 0.85), ("third", 0.7)]
    assert "| 70.0 (50.0) |" in (tmp_path / "results.md").read_text()
