"""Assemble BENCHMARKS.md from the committed results folders, and README.md's tables and figures (never edit
numbers by hand).

Each benchmark command writes ``benchmarks/results/<name>/results.md`` (table, machine, date,
command, seed); this script stitches them in a fixed order with a short heading each, copies the headline
tables into README.md between ``<!-- results:NAME -->`` markers, and fills every single figure written
``<!--fig KEY-->VALUE<!--/fig-->`` in README.md, docs/method.md and the paragraphs below from the files KEY
names (:mod:`svldrl.bench.figures` defines the keys).

    python benchmarks/collect.py            # rewrite README.md, BENCHMARKS.md and docs/method.md
    python benchmarks/collect.py --check    # write nothing; exit 1 if any is out of date

Exit code 2, one line naming the marker: a key that names nothing (an unknown folder, file, setting, method,
column) or a marker without its pair; nothing is written then.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from svldrl.bench.figures import FigureError, fill

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
METHOD_MD = ROOT.parent / "docs" / "method.md"  # its measured figures are markers too
STALE = (
    " **Stale:** measured on the earlier 6 clean test cases, with MT-Noise sized by the array (before 2026-11-29), "
    "at a smoke-test budget (200 iterations, models far from trained out); not yet rerun on 30 test cases. Read "
    "it as history, not as a ranking."
)
SECTIONS = [
    (
        "band_safety",
        "Does the recommended preset's mask correction do harm? (`benchmarks/band_safety.py`)",
        "The training targets that `svldrl targets` writes for the recommended preset (the band update with its "
        "guard) and for the same band without the guard (the recommended configuration until 2026-12-05), on every "
        "set of real volumes that can be had here and on the phantoms, clean masks and four kinds of noise; nothing "
        "trains. The guard's thresholds were chosen on the development sets only (docs/method.md section 13).",
    ),
    (
        "real_anatomy",
        "Real anatomy, trained out (`benchmarks/real_anatomy.yaml`)",
        "Colin27's T1 with the AAL atlas drawn on it, the putamen (its surroundings hold grey matter of its own "
        "intensity): 48 augmented 32^3 crops of the left hemisphere to train, 40 of the right to test, all from "
        "one subject; 1000 iterations, where plain training on the clean masks is on its plateau (learning curve "
        "below, from `benchmarks/real_anatomy_curve.yaml`, made before any other method ran on this data), 3 seeds. "
        "`recommended_tloss` is the recommended preset of the morning of 2026-12-06, stopped after seed 0.",
    ),
    (
        "real_anatomy_dev",
        "Development check on real anatomy (`benchmarks/real_anatomy_dev.yaml`)",
        "The caudate of the same brain, one seed: where the recommended preset was chosen (the T-Loss and the "
        "agents dropped), kept apart from real_anatomy's reported putamen. Rows stopped where the answer was clear.",
    ),
    (
        "phantom_standard_converged",
        "Standard phantoms, below the plateau (`benchmarks/phantom_standard_converged.yaml`)",
        "The standard 40^3 phantoms, whose look-alike structure touches the organ (the unguarded band damages their "
        "clean masks), 2000 iterations (the budget one session afforded for the 27 runs), 40 test cases, 3 seeds. "
        "The learning curve below (`benchmarks/phantom_standard_converged_curve.yaml`) shows that plain training "
        "is NOT on its plateau there: methods are compared at equal budget, below it.",
    ),
    (
        "real_anatomy_trusted",
        "A trusted subset on real anatomy: 8 of 48 masks trusted (`benchmarks/real_anatomy_trusted.yaml`)",
        "real_anatomy's putamen, crops and budget (1000 iterations, 40 test crops of the right hemisphere, 3 seeds) "
        "with 8 training cases left clean by the noise and recorded as trusted. `recommended` is the preset of "
        "today: its guarded band (which keeps every putamen mask), the trusted shift (docs/method.md section 14) "
        "and the trusted finish (section 16); `band_shift` is the same without the finish (the preset until the "
        "finish joined it: these runs were made as `recommended` and renamed, the settings unchanged); "
        "`supervised_trusted` trains on the 8 trusted crops alone; `mtcl` is MTCL with the trusted cases as its "
        "clean subset, as published; `supervised_shift` and `supervised_agents` are "
        "the mask agents and their no-RL counterpart (section 15). Plain training, the preset without trusted "
        "cases and the clean-mask oracle on the same crops: real_anatomy above.",
    ),
    (
        "real_anatomy_trusted_dev",
        "Trusted subset, development check on real anatomy: the thalamus "
        "(`benchmarks/real_anatomy_trusted_dev.yaml`)",
        "A second development set beside the caudate (docs/method.md sections 14-18), never the putamen whose figures "
        "are reported: the thalamus of the same brain, crops and budget, 8 trusted of 48, one seed. Whether the "
        "trusted cases should join training where the preset declines its finish (`finish_join`, section 18) "
        "was checked here before its rows ran on the putamen, and the finish that keeps the other cases on their "
        "masks' reliable side (section 19: `recommended` since 2026-12-07, when it joined the preset; `finish` is "
        "the preset before it, the rows renamed where their settings are unchanged).",
    ),
    (
        "phantom_trusted_dev",
        "Trusted subset, development check on phantoms: the draw of seed 101 "
        "(`benchmarks/phantom_trusted_dev.yaml`)",
        "The phantom draw on which the trusted shift's, the finish's and the threshold's settings were chosen "
        "(docs/method.md sections 14-17), 8 trusted of 48, 2000 iterations, one seed: the recommended preset with and "
        "without `data.trusted_join` (section 18), where the band has corrected the masks and the finish is declined, "
        "and with `data.trusted_bound` (section 19; in the preset since 2026-12-07: `recommended` now, `finish` the "
        "preset before it).",
    ),
    (
        "mask_sides",
        "Is the error of noisy masks one-sided? (`benchmarks/mask_sides.py`)",
        "What `data.trusted_bound` assumes (docs/method.md section 19), read on the development sets' training masks "
        "against their clean versions; nothing trains: the share of the true foreground outside each mask, and "
        "beyond 1 and 2 voxels of it.",
    ),
    (
        "correction_ceiling",
        "The ceiling of a per-case shift (`benchmarks/correction_ceiling.py`)",
        "Why the trusted shift cannot bring dilated masks to the oracle (docs/method.md section 20): the training "
        "masks of the trusted benchmarks moved, in their own geometry, to each case's true volume (what the shift "
        "would do with a perfect estimate); nothing trains.",
    ),
    (
        "correction_ceiling_train",
        "Training on masks moved to their true volume (`benchmarks/correction_ceiling.yaml`)",
        "A diagnostic, not a method (it knows each case's true volume): the putamen's dilated masks "
        "(real_anatomy_trusted, dilate_t8) each moved to its true volume, plain training on them and the same with "
        "the trusted finish; what a model learns from masks corrected as well as any per-case shift can.",
    ),
    (
        "learned_correction",
        "A correction learned on the trusted cases alone (`benchmarks/learned_correction.py`)",
        "A diagnostic (docs/method.md section 22): a U-Net on (image, mask) trained on the 8 trusted cases, their "
        "clean masks perturbed by a forward model of the error, run on the other cases' dilated masks; the label "
        "Dice of what it makes of them, against the per-case shift's in the section above.",
    ),
    (
        "shift_cost",
        "What the trusted corrections cost (`benchmarks/shift_cost.py`)",
        "The extra time of the trusted shift's update and of the mask agents' update (`supervised_agents`), as a "
        "ratio to the same run without it, from each run's own epochs (validating epochs with and without the "
        "update), so that it holds on a shared machine.",
    ),
    (
        "phantom_trusted",
        "A trusted subset: 8 of 48 masks trusted (`benchmarks/phantom_trusted.yaml`)",
        "phantom_converged's easy phantoms and budget (2000 iterations, 40 test cases, 3 seeds) with 8 training cases "
        "left clean by the noise and recorded as trusted: they validate and select checkpoints and teach the "
        "trusted shift (docs/method.md section 14) and the mask agents (`supervised_agents`, section 15, whose no-RL "
        "counterpart is `supervised_shift`), and the recommended preset ends on them (the trusted finish, section "
        "16; `band_shift` is the preset without it, run as `recommended` before the finish joined it and renamed, "
        "the settings unchanged; `finish` is the preset before its bound joined it on 2026-12-07, section 19, renamed "
        "the same way: the bound cannot act where the finish is declined, and `recommended`, rerun for three of "
        "its six runs, trains what `finish_join` trains). Run in part (2026-12-06, its header says which rows and "
        "settings); the clean-mask oracle is phantom_converged's plain training on the same clean masks. The "
        "shift's settings were chosen on a development draw of phantoms (seed 101) and the caudate, never here.",
    ),
    (
        "phantom_standard_trusted",
        "A trusted subset where intensity rules fail: standard phantoms (`benchmarks/phantom_standard_trusted.yaml`)",
        "phantom_standard_converged's standard phantoms (the look-alike touches the organ) and budget (2000 "
        "iterations: below plain training's plateau there, a check of harm at equal budget, not a ranking), 40 test "
        "cases, 3 seeds, with 8 training cases left clean and recorded as trusted. First question: with trusted "
        "cases, does the recommended preset (guarded band, trusted shift, trusted finish and its bound) do harm on "
        "clean masks? Run in part (2026-12-07, its header says which rows); nothing here chose any setting.",
    ),
    (
        "phantom_converged",
        "Methods where models are trained out (`benchmarks/phantom_converged.yaml`)",
        "The comparison that counts (docs/method.md sections 10-11): the easy 40^3 phantoms, where plain training "
        "on clean masks is on its plateau at the 2000-iteration budget (learning curve below, from "
        "`benchmarks/phantom_converged_curve.yaml`, 3 seeds, before any other method ran on these phantoms), 40 "
        "clean test cases, 3 seeds. Run as two 1-thread processes: disjoint `--only` lists, or (2026-12-01/02) a "
        "queue of copies of the config holding one noise setting and one seed each, each in its own folder (the "
        "same runs), whose run folders were then moved here and the report rewritten by the full config with "
        "`--only supervised`; rows of earlier sessions' runs are kept from the committed results.csv. ADELE and "
        "MTCL use the test-time sliding-window pass for their per-epoch segmentation of the training cases "
        "(`infer.train_pass=whole` cost ADELE 20 to 40 Dice points: see the config's header); their rows and "
        "the `svldrl_recommended` row (the recommended configuration of 2026-12-02 to 12-05: SVL-DRL with the "
        "unguarded band and the T-Loss, chosen on this benchmark's test scores, as every step of its search was "
        "ranked) were trained after `train.memory_format` and the bf16 training-set pass, the other rows before "
        "(the layout changes the kernels' summation order only). `recommended` is today's preset "
        "(`svldrl/presets/recommended.yaml`: the guarded band on plain training, 2026-12-06). SVL-DRL's search "
        "and variants in this regime: `svldrl_robust_converged` below.",
    ),
    (
        "sizing_converged",
        "Sizing of phantom_converged (`benchmarks/sizing.py benchmarks/phantom_converged.yaml`)",
        "Whether the trained-out comparison fits the 3 hours it is meant to take on this 2-core machine: every "
        "method trained once (MT-Noise 0.5, seed 0, plus the oracle) as two 1-thread processes on the otherwise "
        "idle machine, each method's measured seconds scaled to its runs in the 48-run matrix, packed into the two "
        "`--only` lists that balance the processes best. It does since the networks train with channels_last "
        "weights under bf16 on this CPU and the methods' passes over the training cases run in bf16 "
        "(`train.memory_format`, `train.amp`, 2026-12-02); the same sample predicted 196-209 minutes before "
        "(git history of this folder). Machines of this kind differ by ~30 % in speed: plain training took 195 to "
        "287 s a run in the contiguous layout on earlier sessions' machines (`svldrl_robust_converged/"
        "plain_reruns.csv`, the previous sample). The last column holds the Dice of the same runs in "
        "phantom_converged's results.csv (`--reference`): ADELE's and MTCL's rows, retrained with this code, match "
        "exactly; the others, trained in the contiguous layout, within half a point (the first call, before the "
        "retraining, found ADELE 2.4 points apart: its thresholded corrections amplify small differences). The "
        "recommended SVL-DRL row, added to the config after the sample, was measured by a second call with "
        "`--keep-sample` (one run trained, the others kept) on the same machine.",
    ),
    (
        "svldrl_search_converged",
        "SVL-DRL's open decisions where models are trained out (`benchmarks/svldrl_search_converged.yaml`)",
        "One change per row to a fast base (light heads, one-step episodes), against the paper's defaults and "
        "plain training, 3 seeds, at phantom_converged's budget; per-epoch RL diagnostics of every run: "
        "[rl_diagnostics.md](benchmarks/results/svldrl_search_converged/rl_diagnostics.md). Rows with one seed are "
        "still running (resumable); compare them with plain training on the same seed (in `results.csv`), not "
        "with its 3-seed mean.",
    ),
    (
        "svldrl_robust_converged",
        "SVL-DRL with robust targets and losses where models are trained out "
        "(`benchmarks/svldrl_robust_converged.yaml`)",
        "Step 3 of the search (docs/method.md section 12): the T-Loss as the agents' segmentation loss, targets "
        "corrected near the boundary by the image's intensity (`rl.target_update=band`, with its no-RL counterpart "
        "`supervised_band`), and both, under all three of phantom_converged's noise settings, 3 seeds, with plain "
        "training's rows kept from phantom_converged (the baselines' scores are there). The cost column's `x plain` "
        "compares with those rows, made on an earlier day's slower machine; in this session three plain runs "
        "repeated at its end (seed 0; clean, mt0.5, markov) took 170-179 s, Dice 97.94 / 89.11 / 85.55 against "
        "the kept rows' <!--fig svldrl_robust_converged/clean/supervised/seed0-->97.75<!--/fig--> / "
        "<!--fig svldrl_robust_converged/mt0.5/supervised/seed0-->88.92<!--/fig--> / "
        "<!--fig svldrl_robust_converged/markov/supervised/seed0-->86.11<!--/fig--> (not bitwise: another "
        "machine). Run "
        "as a queue of copies of the config holding one noise setting and one seed each (two 1-thread processes), "
        "whose run folders were then moved here and the report rewritten by the full config. Step 4 (the band's "
        "fixed point: `tloss_band_fp`, `svldrl_fast_band_fp_tloss`, `supervised_band_fp`) ran the same way in a "
        "later session; three plain runs repeated in it are in "
        "[plain_reruns.csv](benchmarks/results/svldrl_robust_converged/plain_reruns.csv). Steps 5 and 6 "
        "(`svldrl_fast_band_fp_tloss_orig`, `svldrl_fast_band_auto_tloss_orig`) ran the same way in the session "
        "of the sizing of phantom_converged (plain training 268-283 s a run there); step 5's first four runs "
        "shared the cores with `band_rule.py`. RL diagnostics: "
        "[rl_diagnostics.md](benchmarks/results/svldrl_robust_converged/rl_diagnostics.md).",
    ),
    (
        "band_rule",
        "The band target update on the training masks (`benchmarks/band_rule.py`)",
        "No training: each variant of the rule applied to phantom_converged's 48 training masks and scored against "
        "their clean versions (label Dice, corrected volume / clean volume). The test cases are not read. The "
        "fixed point at width 4 (`rl.band_margin` ln 9, `rl.band_passes` 10) was chosen here, before any training "
        "with it (docs/method.md section 9).",
    ),
    (
        "band_rule_standard",
        "The band target update on the standard phantoms' training masks (`benchmarks/band_rule.py --config "
        "benchmarks/phantom_cpu.yaml`)",
        "The same table on phantom_cpu's standard phantoms, whose look-alike structure touches the organ and whose "
        "texture and noise are stronger: the band's intensity model cannot tell organ from surroundings, and every "
        "variant lowers the clean masks' label Dice. Measured after the runs with the fixed point, not used to "
        "choose it.",
    ),
    (
        "demo",
        "Demo (`svldrl demo`)",
        "The main job on phantoms, in phantom_converged's regime (easy 40^3 phantoms, 48 training cases, 2000 "
        "iterations): supervised on clean / noisy masks and SVL-DRL in its recommended configuration under "
        "MT-Noise 0.5, one seed on 30 clean test cases (an illustration of phantom_converged, not evidence). "
        "This copy of the demo's report folder comes from the README's command 1 run verbatim from a fresh "
        "clone on the idle 2-core development machine (11:12 wall including the install; the demo's own wall "
        "time is in the table's header).",
    ),
    (
        "rl_cost",
        "SVL-DRL iteration cost",
        "One full-RL iteration against one supervised iteration, same backbone, "
        "patch and batch, with the floor (t_max + 1) x fb3 / fb1 measured in the same run. This run shared the "
        "2-core machine with four benchmark processes (absolute times are inflated and noisy; the ratios "
        "interleave their variants round by round). With glibc's default allocator (before "
        "`train.keep_freed_memory`), the same command on an otherwise idle machine gave ratio / floor 1.06 "
        "(decoders) and 1.20 (light): an episode holds t_max + 1 passes at once, and every large activation "
        "was page-faulted in afresh.",
    ),
    (
        "phantom_cpu",
        "Phantom benchmark (`benchmarks/phantom_cpu.yaml`)",
        "A smoke test, not a ranking: at 200 iterations plain training on clean masks is far from its plateau on "
        "these phantoms (see the config's header). Methods x noise settings x seeds on 30 clean test cases. Seed 0 "
        "comes from the restructuring check (the same runs made before and after it, identical); seeds 1 and 2 "
        "ran as 1-thread processes beside other benchmarks on the 2-core machine, so wall times say nothing about "
        "an idle machine: see the config's header and the sizing below. `svldrl_recommended` "
        "(benchmarks/svldrl_recommended.yaml, unchanged) was run again on 2026-12-02 when that file took the band's "
        "fixed point (its earlier rows, single pass at width 2, are in git history), and again in a later session "
        "when it took `rl.seg_on_refined=false`; its `x plain` compares runs of different machines (see the "
        "robust step's cost on phantom_converged).",
    ),
    (
        "sizing",
        "Sizing of the phantom benchmark (`benchmarks/sizing.py`)",
        "Whether `benchmarks/phantom_cpu.yaml` fits its 90-minute target on this 2-core machine: every method "
        "trained once (first setting, first seed, plus the oracle) as two 1-thread processes on the otherwise "
        "idle machine, each method's measured seconds scaled to its runs in the full matrix. An earlier sample "
        "on the same day, with a first version of the script that charged one process's idle wait for the other "
        "to every run as overhead, predicted 92.0 min; its per-run seconds were up to 30% higher (coteaching "
        "114 s, svldrl 225 s), and with the per-process overhead used here they give about 85 min. Read the "
        "prediction as +- 10%.",
    ),
    (
        "svldrl_search_cpu",
        "Why SVL-DRL falls short: method.md's open decisions (`benchmarks/svldrl_search_cpu.yaml`)",
        "Each row changes one open decision against the defaults (`svldrl`), 3 seeds, on the paper's setting "
        "and the one-sided one; `supervised` and `svldrl` at 200 iterations are copied from the phantom "
        "benchmark (`--reuse`). Per-epoch policy entropy, action shares, losses and reward terms of every RL "
        "run: [rl_diagnostics.md](benchmarks/results/svldrl_search_cpu/rl_diagnostics.md) "
        "(`python benchmarks/rl_diagnostics.py benchmarks/results/svldrl_search_cpu`; the phantom "
        "benchmark's: [rl_diagnostics.md](benchmarks/results/phantom_cpu/rl_diagnostics.md)). Run as two "
        "1-thread processes with disjoint `--only` lists." + STALE,
    ),
    (
        "ablations_cpu",
        "SVL-DRL ablations (`benchmarks/ablations_cpu.yaml`)",
        "Three seeds on MT-Noise 0.5 (one setting: the CPU budget allowed no more), 30 clean test cases, 200 "
        "iterations: a smoke-test budget (models far from trained out), so it shows what each part changes at "
        "that budget, not what it is worth where models are trained out. The rows shared with phantom_cpu are "
        "its committed rows (copied into this folder's results.csv); the rest ran on 2026-12-02 as two 1-thread "
        "processes with disjoint `--only` lists.",
    ),
    (
        "noise_sweep_cpu",
        "MT-Noise ratio sweep (`benchmarks/noise_sweep_cpu.yaml`)",
        "Three seeds, 30 clean test cases, 200 iterations: a smoke-test budget like phantom_cpu's (models far from "
        "trained out), so read it as how the methods degrade with the ratio at that budget, not as a ranking. "
        "ADELE is the best baseline of the phantom benchmark, MTCL the peers' MT-Noise reference. The mt0.5 rows "
        "and the oracle are phantom_cpu's (its committed rows, copied into this folder's results.csv: same "
        "phantoms, masks and settings); the rest ran on 2026-12-02 as two 1-thread processes (`--only "
        "svldrl,supervised` and `--only adele,mtcl`), `svldrl_recommended` (all five settings, its own runs) later "
        "that day on a faster machine (its `x plain` understates its cost), again when the file took the band's "
        "fixed point, and again in a later session when it took `rl.seg_on_refined=false` (its mt0.5 and clean "
        "runs equal phantom_cpu's of that session).",
    ),
    ("audit", "Label audit (`benchmarks/audit_bench.py`)", "Which training masks are wrong, and where."),
    (
        "memory",
        "Memory (`benchmarks/memory_bench.py`)",
        "Bounded prediction memory and training RSS over epochs. Training now runs with "
        "`train.keep_freed_memory` (glibc keeps freed blocks): the RSS steps up to the peak of training plus "
        "validation and stays there (here "
        "<!--fig memory/results.json:train.rss_after_epoch_mib.10 - :train.rss_after_epoch_mib.9-->+197<!--/fig--> "
        "MiB at epoch 10, when a validation pass needed a larger block, then "
        "<!--fig memory/results.json:train.rss_after_epoch_mib.19 - :train.rss_after_epoch_mib.10-->+5<!--/fig--> "
        "MiB over the last 10 epochs). With the system allocator (earlier run of the same command, in "
        "git history) it was 855 -> 834 MiB over 20 epochs; `--set train.keep_freed_memory=false` restores that.",
    ),
    ("reliability", "Resume overhead", ""),
    (
        "cpu_speed",
        "Training speed on the CPU (`benchmarks/cpu_speed.py`)",
        "What PyTorch offers on this CPU, as ratios measured in one run; the accuracy at equal iterations of the "
        "option adopted (bf16 autocast, `train.amp=auto`) is in the next section.",
    ),
    (
        "cpu_speed_accuracy",
        "bf16 autocast and channels_last at equal iterations (`benchmarks/cpu_speed_accuracy.yaml`)",
        "Plain training on the clean masks of phantom_converged's phantoms, 3 seeds: float32 against bf16 "
        "autocast, and under bf16 the weights channels_last against contiguous (those two rows trained in one "
        "call, so their seconds compare as a ratio).",
    ),
    (
        "lung_ct_norm",
        "Real CT: the lung tumour set before and after nnU-Net's CT normalisation (`benchmarks/lung_ct_norm.yaml`)",
        "Six CTs, 3-fold cross-validation, one seed, a CPU budget (1000 iterations, 32^3 patches). Neither "
        "variant learns the tumours at this budget (Dice <!--fig lung_ct_norm/clean/after-->3<!--/fig-->-"
        "<!--fig lung_ct_norm/clean/before-->6<!--/fig-->%, several held-out cases near 0; tumours of 382 to "
        "106,030 voxels, 4 training cases per fold): real CT runs end to end with both normalisations, and the "
        "difference between them is noise here, not a ranking.",
    ),
]


def benchmarks_md(changed: list[str] | None = None) -> str:
    """BENCHMARKS.md as the results folders give it."""
    parts = [
        "# Benchmarks\n",
        "Every table below is written by a committed command (named in each section) into "
        "`benchmarks/results/<name>/`; this file is assembled from those outputs by "
        "`python benchmarks/collect.py`. Ratios are measured within one run, since these machines are noisy.\n",
    ]
    for name, title, blurb in SECTIONS:
        md = RESULTS / name / "results.md"
        parts.append(f"\n## {title}\n")
        if blurb:
            parts.append(fill(blurb, RESULTS, f"collect.py SECTIONS {name}", changed) + "\n")
        if md.exists():
            text = md.read_text().strip()
            # demote the results file's own headings below this section's
            text = "\n".join("##" + line if line.startswith("#") else line for line in text.splitlines())
            # images linked relative to the results folder (e.g. plots/...) are relative to the repo here
            text = re.sub(
                r"!\[([^\]]*)\]\((?!https?:|/|benchmarks/)", rf"![\1](benchmarks/results/{name}/", text
            )
            parts.append("\n" + text + "\n")
            extra = RESULTS / name / "learning_curve.md"
            if extra.exists():
                parts.append(
                    "\n### Learning curve of plain training on clean masks\n\n" + _relink(extra, name) + "\n"
                )
            pngs = sorted(p for p in (RESULTS / name).glob("*.png") if p.stem != "learning_curve")
            for png in pngs:
                parts.append(f"\n![{png.stem}](benchmarks/results/{name}/{png.name})\n")
        else:
            parts.append(f"\nNot measured yet: no `benchmarks/results/{name}/results.md`.\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; list the figures that would change and exit 1 if README.md, BENCHMARKS.md or "
        "docs/method.md is out of date with benchmarks/results",
    )
    args = parser.parse_args(argv)
    changed: list[str] = []
    try:  # everything is computed before anything is written: a bad marker leaves both files as they are
        outputs = {
            ROOT.parent / "BENCHMARKS.md": benchmarks_md(changed),
            ROOT.parent / "README.md": readme_md(changed),
            METHOD_MD: fill(METHOD_MD.read_text(), RESULTS, "docs/method.md", changed),
        }
    except FigureError as e:
        print(f"collect.py: {e}", file=sys.stderr)
        return 2
    stale = [path for path, text in outputs.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for line in changed:
            print(f"collect.py: {line}", file=sys.stderr)
        for path in stale:
            print(
                f"collect.py: {path.name} is out of date with benchmarks/results (run python benchmarks/collect.py)",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in stale:
        path.write_text(outputs[path])
    return 0


def _relink(md: Path, name: str) -> str:
    """A results file's text with its relative image links made relative to the repository."""
    text = md.read_text().strip()
    return re.sub(r"!\[([^\]]*)\]\((?!https?:|/|benchmarks/)", rf"![\1](benchmarks/results/{name}/", text)


def section(md: Path, heading: str) -> str:
    """The table under ``heading`` in a results.md (its first markdown table), or a placeholder."""
    if not md.exists():
        return "*not measured yet*"
    lines = md.read_text().splitlines()
    try:
        start = lines.index(heading) if heading else -1  # "": the file's first table
    except ValueError:
        return "*not measured yet*"
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    return "\n".join(table)


def readme_md(changed: list[str] | None = None) -> str:
    """README.md with the headline tables copied between ``<!-- results:NAME -->`` markers and every
    ``<!--fig KEY-->`` figure filled."""
    text = (ROOT.parent / "README.md").read_text()
    converged = RESULTS / "phantom_converged" / "results.md"
    blocks = {
        "real_anatomy_dice": section(
            RESULTS / "real_anatomy" / "results.md", "## Dice by method and setting (final checkpoint)"
        ),
        "phantom_standard_converged_dice": section(
            RESULTS / "phantom_standard_converged" / "results.md",
            "## Dice by method and setting (final checkpoint)",
        ),
        "real_anatomy_trusted_dice": section(
            RESULTS / "real_anatomy_trusted" / "results.md",
            "## Dice by method and setting (final checkpoint)",
        ),
        "phantom_trusted_dice": section(
            RESULTS / "phantom_trusted" / "results.md",
            "## Dice by method and setting (final checkpoint)",
        ),
        "phantom_converged": section(converged, "## Where noise hurts"),
        "phantom_converged_dice": section(converged, "## Dice by method and setting (final checkpoint)"),
        "learning_curve": section(RESULTS / "phantom_converged" / "learning_curve.md", ""),
        "phantom_cpu": section(RESULTS / "phantom_cpu" / "results.md", "## Where noise hurts"),
        "demo": section(RESULTS / "demo" / "results.md", ""),
        "svldrl_search_converged": section(
            RESULTS / "svldrl_search_converged" / "results.md",
            "## Dice by method and setting (final checkpoint)",
        ),
        "band_rule": section(RESULTS / "band_rule" / "results.md", ""),
        "svldrl_robust_converged": section(
            RESULTS / "svldrl_robust_converged" / "results.md",
            "## Dice by method and setting (final checkpoint)",
        ),
        "phantom_cpu_dice": section(
            RESULTS / "phantom_cpu" / "results.md",
            "## Dice by method and setting (final checkpoint)",
        ),
    }
    for name, table in blocks.items():
        pattern = re.compile(rf"(<!-- results:{name} -->\n)(?:.*?\n)?(<!-- /results:{name} -->)", re.S)
        text = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text)
    return fill(text, RESULTS, "README.md", changed)


if __name__ == "__main__":
    sys.exit(main())
