"""``svldrl benchmark``: the tiny config end to end, skipping and resuming runs, and config errors."""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from svldrl import config as C
from svldrl.bench import cli as bench_cli
from svldrl.bench import data as bench_data
from svldrl.bench import plan as bench_plan
from svldrl.bench import report as bench_report
from svldrl.bench import runner
from svldrl.bench.plan import RESULT_NAME
from svldrl.bench.report import CSV_COLUMNS
from svldrl.bench.runner import run_benchmark
from svldrl.bench.spec import expand_env, load_benchmark
from svldrl.cli import main
from svldrl.data.io import read_json
from svldrl.errors import UserError

TINY = Path(__file__).resolve().parents[1] / "benchmarks" / "tiny_test.yaml"
REQUIRED = (
    "method",
    "noise",
    "seed",
    "dice",
    "iou",
    "hd95",
    "asd",
    "label_dice",
    "dice_val_selected",
    "iou_val_selected",
    "train_seconds",
)


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny benchmark run once for the module (5 runs of 4 iterations on 32^3 phantoms)."""
    out = tmp_path_factory.mktemp("bench") / "tiny"
    run_benchmark(TINY, out)
    return out


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _forbid_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("train() must not be called")

    monkeypatch.setattr("svldrl.runs.train", fail)


def _record_training(monkeypatch: pytest.MonkeyPatch, out: Path) -> list[str]:
    """Train as usual, recording each run trained (its folder relative to ``out/runs``)."""
    import svldrl.runs as engine_train

    trained: list[str] = []
    real = engine_train.train

    def spy(root, labels, run_dir, *args, **kwargs):
        trained.append(Path(run_dir).relative_to(out / "runs").as_posix())
        return real(root, labels, run_dir, *args, **kwargs)

    monkeypatch.setattr(engine_train, "train", spy)
    return trained


@pytest.mark.slow
def test_tiny_benchmark_writes_results_report_and_plots(bench_out: Path) -> None:
    rows = _rows(bench_out)
    assert set(REQUIRED) <= set(rows[0]) and list(rows[0]) == list(CSV_COLUMNS)
    # 2 methods x 2 settings x 1 seed + the clean oracle, one row per run
    got = sorted((r["noise"], r["method"], r["seed"]) for r in rows)
    assert got == sorted(
        [
            ("clean", "supervised", "0"),
            ("mt0.5", "supervised", "0"),
            ("mt0.5", "tloss_t2", "0"),
            ("mt1.0", "supervised", "0"),
            ("mt1.0", "tloss_t2", "0"),
        ]
    )
    for r in rows:
        assert 0.0 <= float(r["dice"]) <= 1.0 and 0.0 <= float(r["dice_val_selected"]) <= 1.0
        assert float(r["train_seconds"]) > 0
        assert (float(r["label_dice"]) == 1.0) == (r["noise"] == "clean")
        run = bench_out / "runs" / r["noise"] / r["method"] / "seed0"
        assert (run / RESULT_NAME).is_file() and (run / "pred_final" / "summary.json").is_file()
        assert (run / "pred_val" / "summary.json").is_file()
    noisy = {r["noise"]: float(r["label_dice"]) for r in rows}
    assert noisy["mt1.0"] < noisy["mt0.5"] < 1.0
    md = (bench_out / "results.md").read_text()
    assert "clean (oracle)" in md and "gap (clean − noisy)" in md and "val-selected" in md
    assert "torch" in md and "Date:" in md and "Command:" in md
    gap_line = next(
        line for line in md.splitlines() if line.startswith("| mt0.5 |") and "supervised" not in line
    )
    assert "n/a" not in gap_line.split("|")[5]  # the gap column holds a number
    assert (bench_out / "plots" / "dice_bars.png").stat().st_size > 0
    assert (bench_out / "plots" / "dice_vs_ratio_mt.png").stat().st_size > 0


@pytest.mark.slow
def test_rerun_skips_done_runs_and_resumes_a_killed_one(
    bench_out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {(r["noise"], r["method"]): r["dice"] for r in _rows(bench_out)}
    _forbid_training(monkeypatch)
    run_benchmark(TINY, bench_out)  # everything done: no training at all
    assert {(r["noise"], r["method"]): r["dice"] for r in _rows(bench_out)} == before

    # A run killed midway: it has its latest checkpoint but neither a final checkpoint nor a result.
    run = bench_out / "runs" / "mt0.5" / "tloss_t2" / "seed0"
    (run / RESULT_NAME).unlink()
    (run / "checkpoint_final.pt").unlink()
    shutil.rmtree(run / "pred_val")
    monkeypatch.undo()
    real = importlib.import_module("svldrl.runs").train
    calls = []

    def spy(dataset, labels, out, cfg, resume=False, reporter=None):
        calls.append((Path(out), labels, resume))
        return real(
            dataset, labels, out, cfg, resume=resume, **({} if reporter is None else {"reporter": reporter})
        )

    monkeypatch.setattr("svldrl.runs.train", spy)
    run_benchmark(TINY, bench_out)
    assert calls == [(run, "noisy/mt0.5", True)]
    assert (run / RESULT_NAME).is_file() and (run / "checkpoint_final.pt").is_file()
    assert len(_rows(bench_out)) == 5


@pytest.mark.slow
def test_a_fresh_clone_keeps_the_committed_rows_and_trains_only_what_they_lack(
    bench_out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run folders are not committed, results.csv is: resuming on a fresh clone adds to the table."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("results.csv", "results.md", bench_report.SETTINGS_NAME):
        shutil.copy(bench_out / name, clone / name)
    before = _rows(bench_out)
    settings = read_json(clone / bench_report.SETTINGS_NAME)
    assert sorted(settings) == sorted(f"{r['noise']}/{r['method']}/seed{r['seed']}" for r in before)
    assert settings["mt1.0/tloss_t2/seed0"]["tloss.init"] == 2.0
    _forbid_training(monkeypatch)
    md = run_benchmark(TINY, clone)
    assert _rows(clone) == before and read_json(clone / bench_report.SETTINGS_NAME) == settings
    assert "5/5 complete, 5 of them kept from the earlier results.csv" in md.read_text()

    # A method whose settings changed in the YAML file is trained again, though its rows' columns still match.
    changed = yaml.safe_load(TINY.read_text())
    changed["methods"][1]["set"] = ["tloss.init=1.5"]
    changed_yaml = tmp_path / "tiny_changed.yaml"
    changed_yaml.write_text(yaml.safe_dump(changed))
    copy = tmp_path / "copy"
    shutil.copytree(clone, copy)
    monkeypatch.undo()
    trained = _record_training(monkeypatch, copy)
    run_benchmark(changed_yaml, copy)
    assert sorted(trained) == ["mt0.5/tloss_t2/seed0", "mt1.0/tloss_t2/seed0"]
    assert read_json(copy / bench_report.SETTINGS_NAME)["mt1.0/tloss_t2/seed0"]["tloss.init"] == 1.5
    monkeypatch.undo()

    # A row made with other iterations does not count; a missing row is trained; the rest stay as they were.
    rows = _rows(clone)
    stale = next(r for r in rows if (r["noise"], r["method"]) == ("mt1.0", "tloss_t2"))
    stale["iterations"] = "8"
    rows = [r for r in rows if (r["noise"], r["method"]) != ("mt0.5", "supervised")]
    with open(clone / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    monkeypatch.undo()
    trained = _record_training(monkeypatch, clone)
    run_benchmark(TINY, clone)
    assert sorted(trained) == ["mt0.5/supervised/seed0", "mt1.0/tloss_t2/seed0"]
    after = {(r["noise"], r["method"]): r for r in _rows(clone)}
    assert len(after) == 5 and after[("mt1.0", "tloss_t2")]["iterations"] == "4"
    for r in before:
        if (r["noise"], r["method"]) not in {("mt0.5", "supervised"), ("mt1.0", "tloss_t2")}:
            assert after[(r["noise"], r["method"])] == r
    # the three runs still without folders are the kept rows
    assert "kept from the earlier results.csv" in (clone / "results.md").read_text()


@pytest.mark.slow
def test_a_crashing_run_is_recorded_and_the_others_still_run(bench_out: Path, monkeypatch) -> None:
    run = bench_out / "runs" / "mt1.0" / "tloss_t2" / "seed0"
    for name in (RESULT_NAME, "checkpoint_final.pt", "checkpoint_latest.pt"):
        (run / name).unlink()

    def crash(*args, **kwargs):
        raise FloatingPointError("loss is NaN")

    monkeypatch.setattr("svldrl.runs.train", crash)
    with pytest.raises(RuntimeError, match=r"1 run\(s\) failed: mt1.0/tloss_t2/seed0"):
        run_benchmark(TINY, bench_out)
    assert "loss is NaN" in (run / "error.txt").read_text()
    md = (bench_out / "results.md").read_text()
    assert "## Failed runs" in md and "## Missing runs" in md
    assert len(_rows(bench_out)) == 4  # the other runs are still reported


def _write(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(TINY.read_text())
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("methods"), "missing key 'methods'"),
        (lambda d: d["methods"].append({"name": "magic", "method": "magic"}), "unknown method 'magic'"),
        (
            lambda d: d["noise"].append({"name": "x", "protocol": "nope", "ratio": 0.5}),
            "unknown noise protocol 'nope'",
        ),
        (lambda d: d["base"]["train"].update(itrations=3), "unknown config key 'train.itrations'"),
        (lambda d: d["methods"][1].update(set=["rl.t_maxx=2"]), "unknown config key 'rl.t_maxx'"),
        (
            lambda d: d["methods"][0].update(set=["mtcl.ema=0.5"]),
            "config key 'mtcl.ema' is a setting of mtcl; this run's method is supervised, which would ignore it",
        ),
        (lambda d: d["noise"][0].update(params={"mode": "sideways"}), "mode must be one of"),
        (lambda d: d.update(seeds=[]), "seeds must be a non-empty list"),
        (lambda d: d.update(methods_on_clean=["ghost"]), "methods_on_clean names 'ghost'"),
        (lambda d: d.update(extra=1), "unknown key(s) extra"),
        (lambda d: d["dataset"].update(path="/x"), "exactly one of 'synth'"),
    ],
)
def test_bad_config_is_a_user_error_before_training(tmp_path: Path, monkeypatch, edit, message: str) -> None:
    _forbid_training(monkeypatch)
    with pytest.raises(UserError, match=None) as info:
        run_benchmark(_write(tmp_path, edit), tmp_path / "out")
    assert message in str(info.value)
    # Nothing written, not even the phantoms; an unknown protocol is left to run_noise, which raises
    # once the phantoms exist but before any training.
    assert not (tmp_path / "out" / "runs").exists()
    if "protocol" not in message:
        assert not (tmp_path / "out").exists()


def test_only_unknown_method_and_changed_settings_are_refused(
    bench_out: Path, tmp_path: Path, monkeypatch
) -> None:
    _forbid_training(monkeypatch)
    with pytest.raises(UserError, match="--only names unknown method"):
        run_benchmark(TINY, tmp_path / "out", only=["svldrl"])
    # the finished runs were made with 4 iterations: asking for 6 must not silently reuse them
    changed = _write(tmp_path, lambda d: d["base"]["train"].update(iterations=6))
    with pytest.raises(UserError, match=r"train.iterations: 4 there, 6 asked"):
        run_benchmark(changed, bench_out)


def test_settings_and_seeds_pick_the_runs_to_train(tmp_path: Path, monkeypatch) -> None:
    """``--settings`` and ``--seeds`` narrow what trains now, as ``--only`` does; unknown names are refused."""
    out = tmp_path / "out"
    trained = _record_training(monkeypatch, out)
    run_benchmark(TINY, out, settings=["mt1.0"], seeds=[0], only=["supervised"])
    assert trained == ["mt1.0/supervised/seed0"]
    with pytest.raises(
        UserError, match=r"--settings names dilate, which the config does not have \(clean, mt0.5"
    ):
        run_benchmark(TINY, out, settings=["dilate"])
    with pytest.raises(UserError, match="--seeds names 3"):
        run_benchmark(TINY, out, seeds=[3])
    assert main(["benchmark", str(TINY), "--out", str(out), "--seeds", "x"]) == 2


def test_eta_counts_runs_finished_before_a_resume(tmp_path: Path) -> None:
    """A resumed benchmark estimates from the result.json seconds of runs it skipped or reused."""
    from types import SimpleNamespace

    def run(name: str, i: int) -> SimpleNamespace:
        return SimpleNamespace(method=SimpleNamespace(name=name), dir=tmp_path / f"{name}{i}")

    todo = [run("rl", 1), run("rl", 2), run("sup", 1)]
    assert runner._eta(todo, {}, {"rl": [300.0], "sup": [50.0]}) == pytest.approx(650.0)
    # this call's own measurement of a method wins; a method never seen takes the overall mean
    assert runner._eta(todo, {"rl": [200.0]}, {"rl": [300.0]}) == pytest.approx(600.0)
    (tmp_path / "rl1").mkdir()
    (tmp_path / "rl1" / RESULT_NAME).write_text("{}")  # finished meanwhile: costs nothing more
    assert runner._eta(todo, {}, {"rl": [300.0], "sup": [50.0]}) == pytest.approx(350.0)
    assert runner._eta(todo, {}, {}) == 0.0


def test_a_key_newer_than_a_saved_run_differs_only_when_asked_off_its_default() -> None:
    """Runs saved before a config key existed stay valid while the key is asked at its default."""
    asked = {
        "method": "svldrl",
        "nets": {"heads": "decoders", "rl_grad_into_shared": True},
        "rl": {"t_max": 3},
    }
    saved = {"method": "svldrl", "nets": {"heads": "decoders"}, "rl": {"t_max": 3}}
    assert bench_plan.config_differences(asked, saved) == []
    asked["nets"]["rl_grad_into_shared"] = False
    assert bench_plan.config_differences(asked, saved) == [
        "nets.rl_grad_into_shared: None there, False asked"
    ]
    changed = {"method": "svldrl", "nets": {"heads": "decoders"}, "rl": {"t_max": 1}}
    assert bench_plan.config_differences(changed, saved) == ["rl.t_max: 3 there, 1 asked"]
    # a section the method does not read changes nothing it computes (its keys sit at the defaults of their day)
    plain = {**changed, "method": "supervised"}
    assert bench_plan.config_differences(plain, {**saved, "method": "supervised"}) == []


def test_a_key_introduced_with_a_new_default_compares_with_what_older_runs_did() -> None:
    """rl.band_guard arrived on by default, but band runs saved before it ran unguarded: they match a row that
    asks rl.band_guard=false, not one that asks the guard; runs the key does not touch stay valid either way;
    and a record written now keeps the key even at its default, so its absence keeps meaning 'older'."""
    band_old = {"method": "svldrl", "rl": {"target_update": "band"}}
    band = C.load_config(overrides=["method=svldrl", "rl.target_update=band"])
    assert bench_plan.config_differences(band, band_old) == ["rl.band_guard: None there, True asked"]
    band.rl.band_guard = False
    assert bench_plan.config_differences(band, band_old) == []
    plain = C.load_config(overrides=["method=supervised"])
    assert bench_plan.config_differences(plain, {"method": "supervised"}) == []
    guarded = C.load_config(overrides=["method=svldrl", "rl.target_update=band"])
    record = bench_plan.non_default_settings(guarded)
    assert record["rl.band_guard"] is True and "rl.band_guard" not in bench_plan.non_default_settings(plain)
    assert bench_plan.config_differences(guarded, record) == []


def test_neutral_keys_such_as_threads_and_the_weights_layout_never_make_a_run_stale() -> None:
    """They change the kernels' summation order, not what is computed: a rerun may differ in them."""
    saved = {"train": {"threads": 1, "memory_format": "contiguous"}, "rl": {"t_max": 3}}
    asked = {"train": {"threads": 2, "memory_format": "channels_last"}, "rl": {"t_max": 3}}
    assert bench_plan.config_differences(asked, saved) == []
    assert bench_plan.config_differences(asked, {"rl": {"t_max": 3}}) == []


@pytest.mark.slow
def test_reuse_copies_only_identical_runs(bench_out: Path, tmp_path: Path, monkeypatch) -> None:
    """--reuse copies a finished run only when masks, method and settings are the same; the rest train."""

    def edit(d: dict) -> None:
        d["methods"][1]["set"] = ["tloss.init=3.0"]  # other settings: must train
        d["noise"][1]["params"] = {"mode": "dilate"}  # same name, other noisy masks: must train

    cfg, new = _write(tmp_path, edit), tmp_path / "new"
    trained = _record_training(monkeypatch, new)
    with pytest.raises(UserError, match="not a benchmark folder"):
        run_benchmark(cfg, new, reuse=tmp_path / "nothing")
    run_benchmark(cfg, new, reuse=bench_out)
    assert sorted(trained) == ["mt0.5/tloss_t2/seed0", "mt1.0/supervised/seed0", "mt1.0/tloss_t2/seed0"]
    for rel in ("clean/supervised/seed0", "mt0.5/supervised/seed0"):
        a, b = (read_json(o / "runs" / rel / RESULT_NAME, None) for o in (bench_out, new))
        assert b["reused_from"] == str(bench_out / "runs" / rel) and b["dice"] == a["dice"]
    assert len(_rows(new)) == 5
    # several folders (--reuse A --reuse B): each run is taken from the first folder that has it
    trained.clear()
    third = tmp_path / "third"
    run_benchmark(cfg, third, reuse=[bench_out, new])
    assert trained == [] and len(_rows(third)) == 5
    for rel, origin in (("clean/supervised/seed0", bench_out), ("mt1.0/tloss_t2/seed0", new)):
        assert read_json(third / "runs" / rel / RESULT_NAME)["reused_from"] == str(origin / "runs" / rel)


@pytest.mark.slow
def test_reuse_takes_a_run_of_another_row_name_when_its_settings_are_the_same(
    bench_out: Path, tmp_path: Path, monkeypatch
) -> None:
    """A learning curve's row (here ``tloss_t2``) serves another benchmark's row of another name whose method and
    settings are the same; a row of the same method with other settings still trains."""

    def edit(d: dict) -> None:
        d["methods"] = [
            {"name": "tloss_init2", "method": "tloss", "set": ["tloss.init=2.0"]},  # tloss_t2 by another name
            {"name": "tloss_init3", "method": "tloss", "set": ["tloss.init=3.0"]},  # other settings: trains
        ]
        d["methods_on_clean"] = []
        d["noise"] = d["noise"][:1]

    cfg, new = _write(tmp_path, edit), tmp_path / "renamed"
    trained = _record_training(monkeypatch, new)
    run_benchmark(cfg, new, reuse=bench_out)
    assert trained == ["mt0.5/tloss_init3/seed0"]
    got = read_json(new / "runs" / "mt0.5/tloss_init2/seed0" / RESULT_NAME)
    source = read_json(bench_out / "runs" / "mt0.5/tloss_t2/seed0" / RESULT_NAME)
    assert got["reused_from"] == str(bench_out / "runs" / "mt0.5/tloss_t2/seed0")
    assert got["method"] == "tloss_init2" and got["dice"] == source["dice"]
    assert {r["method"] for r in _rows(new)} == {"tloss_init2", "tloss_init3"}


def test_dataset_path_env_substitution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVLDRL_TEST_DATA", str(tmp_path))
    assert expand_env("${SVLDRL_TEST_DATA}/Dataset001") == f"{tmp_path}/Dataset001"
    monkeypatch.delenv("SVLDRL_TEST_DATA")
    with pytest.raises(UserError, match="environment variable SVLDRL_TEST_DATA is not set"):
        expand_env("${SVLDRL_TEST_DATA}/Dataset001")
    # a path dataset without a test part is refused before anything runs
    _forbid_training(monkeypatch)
    monkeypatch.setenv("SVLDRL_TEST_DATA", str(tmp_path / "nothing"))
    cfg = _write(tmp_path, lambda d: d.update(dataset={"path": "${SVLDRL_TEST_DATA}"}))
    with pytest.raises(UserError, match="dataset not found"):
        run_benchmark(cfg, tmp_path / "out")


def test_shipped_configs_are_valid(tmp_path: Path) -> None:
    """Every benchmarks/*.yaml parses and every run config validates (no training, no data); a train config
    shipped beside them validates as one."""
    for path in sorted(TINY.parent.glob("*.yaml")):
        if "methods" not in yaml.safe_load(path.read_text()):
            C.load_config([path])
            continue
        bench = load_benchmark(path)
        runs = bench_plan.plan_runs(bench, tmp_path)
        n_clean = len(bench.methods_on_clean) * len(bench.seeds) * max(bench.cv, 1)
        assert (
            len(runs)
            == (len(bench.noise) * len(bench.methods) * len(bench.seeds) * max(bench.cv, 1)) + n_clean
        )


def test_cli_parser_defaults() -> None:
    parser = argparse.ArgumentParser(prog="svldrl")
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["benchmark", "benchmarks/phantom_cpu.yaml", "--only", "supervised,svldrl"])
    assert a.func is bench_cli.cmd_benchmark and a.out is None
    assert bench_cli.default_out(a.config) == Path("benchmarks/results/phantom_cpu")
    assert bench_cli.parse_only(a.only) == ["supervised", "svldrl"]


def test_cv_folds_hold_out_each_case_once_with_the_shared_noisy_masks(tmp_path: Path) -> None:
    from svldrl.data.dataset import load_dataset
    from svldrl.data.synth import synthesize
    from svldrl.noise import run_noise
    from svldrl.reporter import QUIET

    src = synthesize(tmp_path / "src", cases=6, size=16, seed=1)
    noisy = Path(run_noise(src, "mt", 1.0, 0, name="mt1.0"))
    folds = bench_data._make_folds(load_dataset(src), 3, {"mt1.0": noisy}, tmp_path / "cv", QUIET)
    held_out = []
    for root in folds.values():
        ds = load_dataset(root, labels="noisy/mt1.0")
        assert len(ds.train) == 4 and len(ds.test) == 2 and all(c.label is not None for c in ds.test)
        held_out += [c.case_id for c in ds.test]
        case = ds.train[0]
        assert Path(case.label).read_bytes() == (noisy / f"{case.case_id}.nii.gz").read_bytes()
    assert sorted(held_out) == sorted(load_dataset(src).case_ids)


def test_aggregate_averages_folds_within_a_seed_then_seeds() -> None:
    rows = [
        {"noise": "mt0.5", "method": "a", "seed": 0, "fold": 0, "dice": 0.6},
        {"noise": "mt0.5", "method": "a", "seed": 0, "fold": 1, "dice": 0.8},
        {"noise": "mt0.5", "method": "a", "seed": 1, "fold": 0, "dice": 0.9},
        {"noise": "mt0.5", "method": "a", "seed": 1, "fold": 1, "dice": 0.9},
    ]
    stats = bench_report.aggregate(rows)[("mt0.5", "a")]
    assert stats["n"] == 2
    assert stats["dice"][0] == pytest.approx(0.8) and stats["dice"][1] == pytest.approx(0.1414, abs=1e-3)


def test_peer_rows_are_reported_beside_our_method(tmp_path: Path) -> None:
    """Rows written by scripts/pymic_peer.py under OUT/peers/ appear as an external reference table."""
    import json

    for seed, dice in ((0, 0.5), (1, 0.7)):
        d = tmp_path / "peers" / "pymic_coteaching" / "mt0.5" / f"seed{seed}"
        d.mkdir(parents=True)
        row = {
            "method": "pymic_coteaching",
            "noise": "mt0.5",
            "seed": seed,
            "dice": dice,
            "iou": 0.4,
            "hd95": 3.0,
            "asd": 1.0,
            "dice_val_selected": 0.55,
            "command": "python scripts/pymic_peer.py x",
        }
        (d / "pymic_row.json").write_text(json.dumps(row))
    agg = {("mt0.5", "coteaching"): {"dice": (0.61, 0.01), "n": 3}}
    text = "\n".join(bench_report._peer_section(tmp_path, agg))
    assert "External reference" in text and "python scripts/pymic_peer.py x" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| mt0.5 | pymic_coteaching"))
    assert "60.00 ± 14.14" in line and "61.00 ± 1.00" in line and "| 2 |" in line
    assert bench_report._peer_section(tmp_path / "none", agg) == []


@pytest.mark.slow
def test_processes_sharing_an_out_folder_prepare_the_data_one_at_a_time(tmp_path: Path) -> None:
    """Two `svldrl benchmark --only` processes on one folder must not write the same phantoms at once."""
    out = tmp_path / "shared"
    with bench_data.exclusive(out / bench_data.LOCK_NAME):  # stands in for a first process still preparing
        proc = subprocess.Popen(
            [sys.executable, "-m", "svldrl.cli", "benchmark", str(TINY), "--out", str(out)]
            + ["--only", "supervised", "--quiet"],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        deadline = time.monotonic() + 120
        while not (out / runner.SPEC_NAME).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.5)
        assert proc.poll() is None and not (out / "dataset").exists(), "data prepared without the lock"
    assert proc.wait(timeout=300) == 0
    assert {r["method"] for r in _rows(out)} == {"supervised"}


def test_a_method_entry_may_take_a_config_file(tmp_path: Path) -> None:
    """methods[].config: the YAML a user passes to svldrl train --config, then the entry's set: lines."""
    (tmp_path / "rec.yaml").write_text("rl:\n  t_max: 1\nnets:\n  heads: light\n")
    spec = yaml.safe_load(TINY.read_text())
    spec["methods"] = [{"name": "rec", "method": "svldrl", "config": "rec.yaml", "set": ["rl.t_max=2"]}]
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(spec))
    bench = load_benchmark(path)
    cfg = bench_plan.plan_runs(bench, tmp_path / "out")[1].cfg
    assert cfg.nets.heads == "light" and cfg.rl.t_max == 2  # set: wins over the file
    spec["methods"][0]["config"] = "missing.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match="missing.yaml not found"):
        load_benchmark(path)
    # the file may name the row's method (svldrl train --config FILE then picks it), not another one
    (tmp_path / "rec.yaml").write_text("method: svldrl\nrl:\n  t_max: 1\n")
    spec["methods"][0]["config"] = "rec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert bench_plan.plan_runs(load_benchmark(path), tmp_path / "out2")[1].cfg.method == "svldrl"
    spec["methods"][0]["method"] = "supervised"
    spec["methods"][0].pop("set")
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(UserError, match="a config of method svldrl, this row's is supervised"):
        load_benchmark(path)


def test_the_recommended_preset_is_the_measured_band_row_with_its_guard() -> None:
    """svldrl/presets/recommended.yaml is the band's fixed point on plain training as phantom_converged measured it
    (supervised_band_fp of svldrl_robust_converged, before the guard) with the guard on and the trusted finish, its
    bound and the join (which do nothing without trusted cases, as in that benchmark), and the benchmarks'
    recommended rows are the preset."""
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    cfg = C.load_config([C.preset_path("recommended")])
    search = load_benchmark(root / "svldrl_robust_converged.yaml")
    row = next(m for m in search.methods if m.name == "supervised_band_fp")
    measured = C.flatten(C.load_config(overrides=[f"method={row.method}", *row.overrides]))
    differs = {k for k, v in C.flatten(cfg).items() if measured[k] != v}
    trusted_options = {"data.trusted_finish", "data.trusted_bound", "data.trusted_join"}
    assert differs == {"rl.band_guard", *trusted_options} and cfg.rl.band_guard
    for name in ("phantom_converged", "real_anatomy", "phantom_standard_converged"):
        entry = load_benchmark(root / f"{name}.yaml").method("recommended")
        assert C.load_config(overrides=[f"method={entry.method}", *entry.overrides]) == cfg


@pytest.mark.slow
def test_a_clean_only_benchmark_reports_no_noise_gap(tmp_path: Path) -> None:
    """A benchmark without noise settings (lung_ct_norm: two normalisations on the clean masks) compares
    methods on the clean masks; its report has no empty gap table."""
    spec = yaml.safe_load(TINY.read_text())
    spec["dataset"]["synth"].update(cases=4, test_cases=1)
    spec["noise"] = []
    spec["methods"] = [
        {"name": "before", "method": "supervised", "set": ["data.fold=0"]},
        {"name": "after", "method": "supervised", "set": ["data.fold=all"]},
    ]
    spec["methods_on_clean"] = ["before", "after"]
    path = tmp_path / "clean_only.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_benchmark(path, tmp_path / "out")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Where noise hurts" not in md and "Every method here trains on the clean masks." in md
    assert "| before |" in md and "| after |" in md


def test_a_run_from_before_the_trusted_finish_stands_where_no_case_is_trusted(tmp_path: Path) -> None:
    """The trusted finish acts only with trusted cases: a finished run made before the key existed stays valid on a
    setting without any, or where the row says no case is trusted (data.trusted=none), and is refused on one with
    them."""
    spec = {
        "name": "t",
        "dataset": {"synth": {"cases": 6, "size": 16, "seed": 0, "test_cases": 2}},
        "noise": [
            {"name": "plain", "protocol": "mt", "ratio": 1.0},
            {"name": "with_t2", "protocol": "mt", "ratio": 1.0, "trusted": 2},
        ],
        "methods": [
            {"name": "recommended", "preset": "recommended"},
            {"name": "untrusted", "preset": "recommended", "set": ["data.trusted=none"]},
        ],
        "seeds": [0],
    }
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(spec))
    planned = bench_plan.plan_runs(load_benchmark(path), tmp_path / "out")
    runs = {r.noise: r for r in planned if r.method.name == "recommended"}
    untrusted = next(r for r in planned if r.method.name == "untrusted" and r.noise == "with_t2")
    assert not runs["plain"].trusted and runs["with_t2"].trusted and not untrusted.trusted
    for run in (runs["plain"], runs["with_t2"], untrusted):
        saved = run.cfg.as_dict()
        assert saved["data"].pop("trusted_finish") > 0  # the preset asks for it; the old run never knew it
        run.dir.mkdir(parents=True)
        (run.dir / RESULT_NAME).write_text(json.dumps({"config": saved}))
    bench_plan.check_existing(runs["plain"])
    bench_plan.check_existing(untrusted)
    with pytest.raises(UserError, match="data.trusted_finish: None there, 0.25 asked"):
        bench_plan.check_existing(runs["with_t2"])
