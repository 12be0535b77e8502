"""Resume overhead: what a checkpoint costs each epoch and what ``--resume`` costs once.

For the default CPU network (unet [16, 32, 64, 128]) with the segmentation head only (supervised)
and with the three decoders (svldrl), it measures the size of a checkpoint, the time to write one
atomically (temporary file, fsync, rename), and the time from ``Trainer(..., resume=True).restore()`` to the
first step against a fresh ``Trainer(...)`` on the same data (the difference is the resume cost).

    python benchmarks/resume_bench.py --out benchmarks/results/reliability
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from svldrl import config as C
from svldrl.data.dataset import load_dataset
from svldrl.data.synth import synthesize
from svldrl.methods import get_method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/reliability")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ds_path = synthesize(Path(tmp) / "ds", cases=6, size=48, seed=0, test_cases=0)
        ds = load_dataset(ds_path)
        for method in ("supervised", "svldrl"):
            cfg = C.load_config(
                overrides=[
                    f"method={method}",
                    "train.patch=32",
                    "train.iterations=2",
                    "train.steps_per_epoch=1",
                ]
            )
            cls = get_method(method)
            run = Path(tmp) / method
            trainer = cls(cfg, ds, run)
            trainer.fit()
            saves = []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                trainer._save("checkpoint_bench.pt")
                saves.append(time.perf_counter() - t0)
            size = (run / "checkpoint_bench.pt").stat().st_size
            fresh, resumed = [], []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                cls(C.load_config([run / "config.yaml"]), ds, Path(tmp) / f"fresh_{method}")
                fresh.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                cls(C.load_config([run / "config.yaml"]), ds, run, resume=True).restore()
                resumed.append(time.perf_counter() - t0)
            rows.append(
                {
                    "method": method,
                    "parameters": sum(p.numel() for p in trainer.network.parameters()),
                    "checkpoint_mb": size / 2**20,
                    "save_s": statistics.median(saves),
                    "start_fresh_s": statistics.median(fresh),
                    "start_resume_s": statistics.median(resumed),
                    "resume_overhead_s": statistics.median(resumed) - statistics.median(fresh),
                }
            )
    cmd = "python benchmarks/resume_bench.py " + " ".join(sys.argv[1:])
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "threads": a.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "command": cmd,
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        f"`{cmd}` ({meta['date']}, {meta['cpus']} CPUs, {a.threads} thread(s), torch {meta['torch']}; "
        f"medians of {a.repeats}; unet [16, 32, 64, 128], AdamW state included).",
        "",
        "| method | parameters | checkpoint (MB) | atomic save per epoch (s) | trainer start, fresh (s) "
        "| trainer start, --resume (s) | resume overhead (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['parameters']:,} | {r['checkpoint_mb']:.1f} | {r['save_s']:.3f} | "
            f"{r['start_fresh_s']:.2f} | {r['start_resume_s']:.2f} | {r['resume_overhead_s']:.2f} |"
        )
    lines += [
        "",
        "A kill loses at most the current epoch: `checkpoint_latest.pt` is written at every epoch end.",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
