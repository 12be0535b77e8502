"""Assemble BENCHMARKS.md from the committed results folders (never edit numbers by hand).

Each benchmark command writes ``benchmarks/results/<name>/results.md`` (table, machine, date,
command, seed); this script stitches them in a fixed order with a short heading each.

    python benchmarks/collect.py
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SECTIONS = [
    (
        "demo",
        "Demo (`svldrl demo`)",
        "The main job on phantoms: supervised on clean / noisy masks and SVL-DRL, one seed. This copy of the "
        "demo's report folder comes from `OMP_NUM_THREADS=1 svldrl demo --out DIR` on the 2-core development "
        "machine while two other benchmarks ran, which inflates its wall time (11:53 in an earlier run with the "
        "same sizes and 2 threads; `svldrl demo --quick` took 2:44 from a fresh clone).",
    ),
    (
        "rl_cost",
        "SVL-DRL iteration cost",
        "One full-RL iteration against one supervised iteration, same backbone, "
        "patch and batch, with the floor (t_max + 1) x fb3 / fb1 measured in the same run.",
    ),
    ("phantom_cpu", "Phantom benchmark (`benchmarks/phantom_cpu.yaml`)", "Methods x noise settings x seeds."),
    ("ablations_cpu", "SVL-DRL ablations (`benchmarks/ablations_cpu.yaml`)", ""),
    ("noise_sweep_cpu", "MT-Noise ratio sweep (`benchmarks/noise_sweep_cpu.yaml`)", ""),
    ("audit", "Label audit (`benchmarks/audit_bench.py`)", "Which training masks are wrong, and where."),
    (
        "memory",
        "Memory (`benchmarks/memory_bench.py`)",
        "Bounded prediction memory and training RSS over epochs.",
    ),
    ("reliability", "Resume overhead", ""),
]


def main() -> None:
    parts = [
        "# Benchmarks\n",
        "Every table below is written by a committed command (named in each section) into "
        "`benchmarks/results/<name>/`; this file is assembled from those outputs by "
        "`python benchmarks/collect.py`. Ratios are measured within one run, since these machines are noisy.\n",
    ]
    for name, title, blurb in SECTIONS:
        md = ROOT / "results" / name / "results.md"
        parts.append(f"\n## {title}\n")
        if blurb:
            parts.append(blurb + "\n")
        if md.exists():
            text = md.read_text().strip()
            # demote the results file's own headings below this section's
            text = "\n".join("##" + line if line.startswith("#") else line for line in text.splitlines())
            # images linked relative to the results folder (e.g. plots/...) are relative to the repo here
            text = re.sub(
                r"!\[([^\]]*)\]\((?!https?:|/|benchmarks/)", rf"![\1](benchmarks/results/{name}/", text
            )
            parts.append("\n" + text + "\n")
            pngs = sorted((ROOT / "results" / name).glob("*.png"))
            for png in pngs:
                parts.append(f"\n![{png.stem}](benchmarks/results/{name}/{png.name})\n")
        else:
            parts.append(f"\nNot measured yet: no `benchmarks/results/{name}/results.md`.\n")
    (ROOT.parent / "BENCHMARKS.md").write_text("".join(parts))


if __name__ == "__main__":
    main()
