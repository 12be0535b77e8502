"""README.md and BENCHMARKS.md against the committed results files: every table and every single figure in the
prose (``<!--fig KEY-->VALUE<!--/fig-->``) is what ``benchmarks/collect.py`` generates from them."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from svldrl.bench.figures import MARKER, FigureError, fill, render
from svldrl.bench.report import CSV_COLUMNS, _pct, aggregate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _collect() -> ModuleType:
    spec = importlib.util.spec_from_file_location("collect", ROOT / "benchmarks" / "collect.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_readme_and_benchmarks_are_what_the_results_files_give(
    capsys: pytest.CaptureFixture,
) -> None:
    """Fails when a results file was committed without running ``python benchmarks/collect.py`` (a stale table or
    figure: the message lists each figure as ``README.md:LINE: KEY: written -> generated``), or when a marker
    names nothing (exit 2)."""
    readme = (ROOT / "README.md").read_text()
    assert len(MARKER.findall(readme)) > 150  # the prose's figures are generated, not typed
    assert _collect().main(["--check"]) == 0, capsys.readouterr().err


def _results(folder: Path) -> None:
    """A tiny benchmark folder: plain training (3 seeds) and a method (2 seeds) on clean and mt0.5."""
    rows = []
    dice = {
        ("clean", "supervised"): [0.97, 0.98, 0.99],
        ("mt0.5", "supervised"): [0.80, 0.85, 0.90],
        ("mt0.5", "tloss"): [0.95, 0.97],
    }
    for (noise, method), values in dice.items():
        for seed, d in enumerate(values):
            row = dict.fromkeys(CSV_COLUMNS, "")
            row.update(method=method, noise=noise, seed=seed, base_method=method, dice=d, hd95=2.0 + seed)
            row.update(
                label_dice=1.0 if noise == "clean" else 0.7758,
                train_seconds=100.0 * (1 + (method == "tloss")),
            )
            rows.append(row)
    folder.mkdir(parents=True)
    with (folder / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (folder / "curve.csv").write_text(
        "iterations,dice_mean,gain_of_doubling\n1000,95.1,2.6\n2000,97.9,0.64\n"
    )
    (folder / "results.json").write_text(
        json.dumps({"rows": [{"run": "a", "s": 2.0}, {"run": "b", "s": 0.5}]})
    )


@pytest.mark.parametrize(
    ("key", "written", "expected"),
    [
        ("b/mt0.5/supervised", "98.21 ± 0.17", "85.00 ± 5.00"),  # mean ± std over seeds, as the tables
        ("b/mt0.5/supervised", "85", "85"),  # the shape as written: decimals
        ("b/mt0.5/tloss - supervised", "+8.5", "+11.0"),  # the gain over plain training on the same setting
        ("b/clean/supervised - mt0.5/supervised", "8", "13"),  # the gap noise opens
        ("b/mt0.5/tloss/seed1 - supervised/seed1", "+0.0", "+12.0"),  # one seed against the same seed
        ("b/mt0.5:label_dice", "65.0", "77.6"),
        ("b/mt0.5/supervised:hd95", "1.00 ± 1.00", "3.00 ± 1.00"),  # a distance in mm, not scaled
        ("b/*/tloss xplain", "1.0", "2.0"),  # the report's `x plain`
        ("b/*/tloss:train_seconds mean", "0", "200"),
        ("b/mt0.5/supervised min", "0.0", "80.0"),  # over the seeds
        ("b/curve.csv[iterations=2000]:gain_of_doubling", "+0.6", "+0.6"),
        ("b/results.json:rows[run=a].s / :rows.1.s", "1.0", "4.0"),
        ("b/results.json:rows.1.s *100", "5", "50"),
    ],
)
def test_a_figure_is_computed_as_the_report_computes_it(
    tmp_path: Path, key: str, written: str, expected: str
) -> None:
    _results(tmp_path / "b")
    assert render(key, written, tmp_path) == expected


def test_mean_and_std_reuse_the_reports_aggregate(tmp_path: Path) -> None:
    _results(tmp_path / "b")
    with (tmp_path / "b" / "results.csv").open(newline="") as f:
        stat = aggregate(list(csv.DictReader(f)))[("mt0.5", "tloss")]
    assert render("b/mt0.5/tloss", "0.00 ± 0.00", tmp_path) == _pct(stat["dice"], stat["n"]) == "96.00 ± 1.41"


@pytest.mark.parametrize(
    ("key", "written", "problem"),
    [
        ("nowhere/mt0.5/tloss", "1.0", "no results folder 'nowhere'"),
        ("b/mt9/tloss", "1.0", "no setting 'mt9'"),
        ("b/mt0.5/adele", "1.0", "no method 'adele'"),
        ("b/mt0.5/tloss/seed7", "1.0", "no seed 7"),
        ("b/mt0.5/tloss:dcie", "1.0", "unknown field 'dcie'"),
        ("b/missing.csv:dice", "1.0", "no b/missing.csv"),
        ("b/curve.csv[iterations=3000]:dice_mean", "1.0", "no row of curve.csv matches"),
        ("b/curve.csv:dice", "1.0", "no column 'dice'"),
        ("b/curve.csv:dice_mean", "1.0", "2 rows match"),
        ("b/results.json:rows.7.s", "1.0", "no '7'"),
        ("b/mt0.5/tloss - supervised", "98.21 ± 0.17", "gives one number"),
        ("b/mt0.5/tloss", "n/a", "not a number"),
        ("b/mt0.5/tloss median", "1.0", "unexpected 'median'"),
    ],
)
def test_a_marker_that_names_nothing_is_refused(tmp_path: Path, key: str, written: str, problem: str) -> None:
    _results(tmp_path / "b")
    text = f"Prose\nwith a figure <!--fig {key}-->{written}<!--/fig--> in it.\n"
    with pytest.raises(FigureError, match="README.md:2: <!--fig ") as err:
        fill(text, tmp_path, "README.md")
    assert problem in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "text",
    [
        "a figure <!--fig b/mt0.5/tloss-->96.00 ± 1.41\n<!--/fig--> broken over a line",
        "a figure <!--/fig--> without its opening",
        "a figure <!--fig:b/mt0.5/tloss-->96.00<!--/fig--> with a typo in its marker",
        "a figure\n<!--fig b/mt0.5/tloss-->96.00 ± 1.41<!--/fig--> that starts a line (an HTML block to markdown)",
    ],
)
def test_a_broken_marker_is_refused(tmp_path: Path, text: str) -> None:
    _results(tmp_path / "b")
    with pytest.raises(FigureError, match=r"README.md:\d+: "):
        fill(text, tmp_path, "README.md")


def _tmp_collect(tmp_path: Path, readme: str) -> ModuleType:
    """collect.py writing README.md / BENCHMARKS.md under ``tmp_path`` from the committed results."""
    collect = _collect()
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "README.md").write_text(readme)
    collect.ROOT = tmp_path / "benchmarks"
    return collect


def test_check_names_a_stale_figure_and_a_run_regenerates_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    collect = _tmp_collect(
        tmp_path, "T-Loss: <!--fig phantom_converged/mt0.5/tloss-->99.99 ± 0.01<!--/fig-->.\n"
    )
    assert collect.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "README.md:1: phantom_converged/mt0.5/tloss: 99.99 ± 0.01 -> 98.21 ± 0.17" in err
    assert "99.99" in (tmp_path / "README.md").read_text()  # --check writes nothing
    assert not (tmp_path / "BENCHMARKS.md").exists()
    assert collect.main([]) == 0
    assert "-->98.21 ± 0.17<!--/fig-->" in (tmp_path / "README.md").read_text()
    assert collect.main(["--check"]) == 0


def test_an_unknown_key_fails_collect_with_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    readme = (
        "Fine: <!--fig phantom_converged/mt0.5/tloss-->1.00<!--/fig-->.\n"
        "Bad: <!--fig phantom_converged/mt0.5/tlos-->98.21<!--/fig-->.\n"
    )
    collect = _tmp_collect(tmp_path, readme)
    for argv in ([], ["--check"]):
        assert collect.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            "collect.py: README.md:2: <!--fig phantom_converged/mt0.5/tlos-->: "
            "phantom_converged/results.csv has no method 'tlos' on mt0.5"
        )
    assert (tmp_path / "README.md").read_text() == readme
    assert not (tmp_path / "BENCHMARKS.md").exists()
