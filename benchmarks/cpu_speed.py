"""Training speed on the CPU: what PyTorch offers, measured as ratios in one run (issue "real data as users
bring it", part 10).

One training iteration (forward, Dice + CE, backward, AdamW step; batch 2) of the segmentation network for
every variant below, on the default U-Net (features [16, 32, 64, 128]) and Swin UNETR (feature size 24), at
patch 32 / 48 / 64, interleaved round by round (medians), so background load hits every variant alike:

- ``fp32``: float32, contiguous tensors (the trainer's default before this benchmark),
- ``fp32_cl``: float32 with channels_last_3d weights and inputs (oneDNN's preferred layout),
- ``bf16``: bfloat16 autocast of the forward (``train.amp``), which runs oneDNN's AMX / AVX512-BF16 kernels
  on CPUs that have them,
- ``bf16_cl``: both,
- ``compile``: ``torch.compile`` of the network (float32; ``--compile`` only, it costs a minute per shape),
- threads: the best variant with 1 and with 2 intra-op threads.

A profile of one fp32 step (top operators by self CPU time) shows where the time goes.
Accuracy at equal iterations is measured separately, by training: ``svldrl benchmark
benchmarks/cpu_speed_accuracy.yaml`` (float32 against bfloat16 autocast, 3 seeds).

    python benchmarks/cpu_speed.py --out benchmarks/results/cpu_speed [--rounds 5] [--compile]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.losses import DiceCELoss

from svldrl import config as C
from svldrl.engine.allocator import keep_freed_memory
from svldrl.engine.device import bf16_supported
from svldrl.engine.trainer import seg_target
from svldrl.nets.factory import build_network

VARIANTS = ("fp32", "fp32_cl", "bf16", "bf16_cl")
BACKBONES = {"unet": ["nets.backbone=unet"], "swinunetr": ["nets.backbone=swinunetr"]}


def make_step(backbone: str, patch: int, variant: str, batch: int = 2) -> Callable[[], None]:
    """One training iteration of ``backbone`` at ``patch`` in ``variant``, as a closure."""
    cfg = C.load_config(overrides=[*BACKBONES[backbone], f"train.patch={max(patch, 64)}"])
    torch.manual_seed(0)
    net = build_network(cfg.nets, rl_heads=False)
    channels_last = variant.endswith("_cl")
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
    if variant == "compile":
        torch._dynamo.reset()  # a fresh graph per shape: compiled once, without symbolic (dynamic) shapes
    model: Callable = torch.compile(net, dynamic=False) if variant == "compile" else net
    loss_fn = DiceCELoss(softmax=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, patch, patch, patch, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = (torch.rand(batch, 1, patch, patch, patch, generator=gen) > 0.7).float()
    amp = variant.startswith("bf16")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(x, heads=("seg",))["seg"]
        loss = loss_fn(logits.float(), seg_target(y))
        loss.backward()
        opt.step()

    return step


def fits(backbone: str, patch: int) -> bool:
    """Swin UNETR's 1/32 bottleneck needs a patch that is a multiple of 32 and at least 64."""
    return backbone != "swinunetr" or (patch % 32 == 0 and patch >= 64)


def time_steps(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Median seconds per step, the variants interleaved round by round after one warm-up step each."""
    warm = {}
    for k, s in steps.items():
        t0 = time.perf_counter()
        s()
        warm[k] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()} | {f"{k}_first": v for k, v in warm.items()}


def profile_top(backbone: str, patch: int, n: int = 8) -> list[dict[str, float | str]]:
    """The ``n`` operators with the most self CPU time in one fp32 step."""
    step = make_step(backbone, patch, "fp32")
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total}
        for e in events[:n]
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/cpu_speed")
    ap.add_argument("--patches", default="32,48,64")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (unet only)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    keep_freed_memory()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    patches = [int(p) for p in a.patches.split(",")]
    rows = []
    for backbone in BACKBONES:
        for patch in patches:
            if not fits(backbone, patch):
                rows.append({"backbone": backbone, "patch": patch, "fits": False})
                continue
            variants = list(VARIANTS)
            t = time_steps({v: make_step(backbone, patch, v) for v in variants}, a.rounds)
            if a.compile and backbone == "unet":
                # timed on its own after the others: its graph is compiled for this one shape
                variants.append("compile")
                t |= time_steps({"compile": make_step(backbone, patch, "compile")}, a.rounds)
            best = min(VARIANTS, key=lambda v: t[v])
            torch.set_num_threads(2 if a.threads == 1 else 1)
            other = time_steps({best: make_step(backbone, patch, best)}, a.rounds)[best]
            torch.set_num_threads(a.threads)
            rows.append(
                {
                    "backbone": backbone,
                    "patch": patch,
                    "fits": True,
                    **{f"s_{v}": t[v] for v in variants},
                    **{f"first_{v}": t[f"{v}_first"] for v in variants},
                    "best": best,
                    "s_best_other_threads": other,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    profile = profile_top("unet", 48 if 48 in patches else patches[0])
    cmd = "python benchmarks/cpu_speed.py " + " ".join(sys.argv[1:])
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "threads": a.threads,
        "bf16_kernels": bf16_supported(torch.device("cpu")),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "batch": 2,
        "rounds": a.rounds,
        "seed": 0,
        "command": cmd,
        "wall_s": time.monotonic() - t_start,
    }
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows, "profile": profile}, indent=2))
    other_threads = 2 if a.threads == 1 else 1
    cols = list(VARIANTS) + (["compile"] if a.compile else [])
    lines = [
        f"One training iteration (batch 2, forward + Dice/CE + backward + AdamW), {a.threads} thread(s), "
        f"CPU ({meta['cpus']} cores, bf16 kernels: {'yes' if meta['bf16_kernels'] else 'no'}), torch "
        f"{meta['torch']}, {meta['date']}, medians of {a.rounds} interleaved rounds. Iterations per second, "
        f"and in brackets the speed-up over `fp32` measured in the same run. Command: `{cmd}`",
        "",
        "| backbone | patch | "
        + " | ".join(f"{c} it/s" for c in cols)
        + f" | best with {other_threads} threads |",
        "|---|---|" + "---|" * (len(cols) + 1),
    ]
    for r in rows:
        if not r["fits"]:
            lines.append(
                f"| {r['backbone']} | {r['patch']} | "
                + " | ".join("n/a" for _ in cols)
                + " | n/a (needs a multiple of 32, >= 64) |"
            )
            continue
        base = r["s_fp32"]
        cells = [f"{1 / r[f's_{c}']:.2f} (x{base / r[f's_{c}']:.2f})" if f"s_{c}" in r else "-" for c in cols]
        thr = f"{1 / r['s_best_other_threads']:.2f} ({r['best']}, x{base / r['s_best_other_threads']:.2f})"
        lines.append(f"| {r['backbone']} | {r['patch']} | " + " | ".join(cells) + f" | {thr} |")
    lines += [
        "",
        f"Where an fp32 step of the U-Net goes (patch {48 if 48 in patches else patches[0]}, self CPU time):",
        "",
        "| operator | self CPU (ms) | share |",
        "|---|---|---|",
    ]
    lines += [f"| `{p['op']}` | {p['self_cpu_ms']:.0f} | {100 * p['share']:.0f}% |" for p in profile]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
