"""Cost of one SVL-DRL training iteration against one supervised iteration (issue "SVL-DRL core").

Measured in one run, on the same backbone, patch and batch:

- ``t_sup``: one supervised iteration (segmentation-only network, forward + backward + step),
- ``t_rl``: one full-RL iteration (stage 3 intensity episode of t_max steps + backward + step),
- ``t_fb3`` / ``t_fb1``: one forward + backward of the three-head network (all heads) / of the
  segmentation-only network,
- floor = (t_max + 1) * t_fb3 / t_fb1 and the figure of merit ratio / floor (target <= 1.15),
- step memory: growth of the max RSS of a fresh process over 3 iterations of each kind,
- inference: sliding-window prediction of a volume with ``infer.refine_steps = t_max`` vs 0.

Timings interleave the variants round by round and take medians, so background load hits all alike.
Host memory is managed as the trainer manages it (``train.keep_freed_memory``: glibc keeps freed blocks,
see ``svldrl/engine/allocator.py``); ``--malloc system`` measures glibc's default instead, under which
large activations are page-faulted in afresh on every step and an RL iteration, which holds t_max + 1
passes at once, paid ~20% over its floor of separate passes (light heads, 64^3).

    python benchmarks/rl_cost.py --out benchmarks/results/rl_cost [--patch 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

from svldrl import config as C
from svldrl.engine.allocator import keep_freed_memory
from svldrl.engine.trainer import seg_target
from svldrl.nets.factory import build_network
from svldrl.rl.a3c import RewardConv
from svldrl.rl.episode import intensity_episode
from svldrl.rl.reward import RunningStd


def make(kind: str, heads: str, patch: int, batch: int, t_max: int):
    """A closure doing one iteration of ``kind`` (sup | rl | fb1 | fb3)."""
    cfg = C.load_config(overrides=[f"nets.heads={heads}", f"rl.t_max={t_max}"])
    torch.manual_seed(0)
    net = build_network(cfg.nets, rl_heads=kind in ("rl", "fb3"))
    loss_fn = DiceCELoss(softmax=True)
    conv = RewardConv(3)
    opt = torch.optim.AdamW(list(net.parameters()) + list(conv.parameters()), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, patch, patch, patch, generator=gen)
    y = (torch.rand(batch, 1, patch, patch, patch, generator=gen) > 0.7).float()
    norm = RunningStd()

    def seg_loss(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return loss_fn(logits, seg_target(q))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if kind == "sup":
            loss = seg_loss(net(x)["seg"], y)
        elif kind == "rl":
            loss = intensity_episode(net, x, y, cfg.rl, 3, gen, seg_loss, norm, conv).loss
        else:
            heads = ("seg", "value", "policy") if kind == "fb3" else ("seg",)
            out = net(x, heads=heads)
            loss = sum(o.float().mean() for o in out.values())
        loss.backward()
        if kind in ("sup", "rl"):
            opt.step()

    return step, net, cfg


def time_variants(variants: dict, rounds: int, warmup: int = 1) -> dict[str, float]:
    steps = {k: make(*v)[0] for k, v in variants.items()}
    for s in steps.values():
        for _ in range(warmup):
            s()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


KEEP = [True]  # --malloc kept (the trainer's default) or system


def peak_rss_mb(kind: str, heads: str, patch: int, batch: int, t_max: int, threads: int) -> float:
    """Growth of the max RSS of a fresh process over its first 3 iterations of ``kind`` (MB): the training
    step's own peak memory (activations, gradients, optimiser state), without the imports and the model
    that every variant shares. The first iteration counts: with ``train.keep_freed_memory`` the process
    keeps its peak from then on, so later iterations alone would show no growth."""
    # Linux: writing 5 to clear_refs resets the high-water mark (VmHWM), so import-time peaks do not count.
    here = str(Path(__file__).parent)
    code = (
        f"import sys, torch; sys.path.insert(0, {here!r}); torch.set_num_threads({threads});"
        + ("from svldrl.engine.allocator import keep_freed_memory; keep_freed_memory();" if KEEP[0] else "")
        + f"import rl_cost as b; s = b.make({kind!r}, {heads!r}, {patch}, {batch}, {t_max})[0];"
        "kb = lambda k: int(next(l for l in open('/proc/self/status') if l.startswith(k)).split()[1]);"
        "open('/proc/self/clear_refs', 'w').write('5'); r0 = kb('VmRSS'); [s() for _ in range(3)];"
        "print((kb('VmHWM') - r0) / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@torch.no_grad()
def inference_times(patch: int, t_max: int, size: int, rounds: int) -> dict[str, float]:
    from svldrl.engine.predict import segment_volume
    from svldrl.methods.svldrl import SVLDRLTrainer

    cfg = C.load_config(overrides=["method=svldrl", f"train.patch={patch}", f"rl.t_max={t_max}"])
    net = build_network(cfg.nets, **SVLDRLTrainer.network_kwargs(cfg)).eval()
    image = np.random.default_rng(0).random((size, size, size), dtype=np.float32)
    out = {}
    for steps in (0, t_max):
        cfg.infer.refine_steps = steps
        segment_volume(SVLDRLTrainer, net, cfg, image)
        ts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            segment_volume(SVLDRLTrainer, net, cfg, image)
            ts.append(time.perf_counter() - t0)
        out[f"refine_{steps}"] = statistics.median(ts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/rl_cost")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--t-max", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--infer-size", type=int, default=96)
    ap.add_argument(
        "--malloc", choices=["kept", "system"], default="kept", help="train.keep_freed_memory on / off"
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    KEEP[0] = a.malloc == "kept" and keep_freed_memory()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    rows = []
    for heads in ("decoders", "light"):
        v = {k: (k, heads, a.patch, a.batch, a.t_max) for k in ("sup", "rl", "fb1", "fb3")}
        t = time_variants(v, a.rounds)
        mem = {k: peak_rss_mb(k, heads, a.patch, a.batch, a.t_max, a.threads) for k in ("sup", "rl")}
        ratio = t["rl"] / t["sup"]
        floor = (a.t_max + 1) * t["fb3"] / t["fb1"]
        rows.append(
            {
                "heads": heads,
                "t_sup_s": t["sup"],
                "t_rl_s": t["rl"],
                "t_fb1_s": t["fb1"],
                "t_fb3_s": t["fb3"],
                "ratio": ratio,
                "floor": floor,
                "ratio_over_floor": ratio / floor,
                "target_met": ratio / floor <= 1.15,
                "peak_rss_sup_mb": mem["sup"],
                "peak_rss_rl_mb": mem["rl"],
                "peak_rss_ratio": mem["rl"] / mem["sup"],
            }
        )
    inf = inference_times(a.patch, a.t_max, a.infer_size, max(2, a.rounds // 2))
    cmd = "python benchmarks/rl_cost.py " + " ".join(sys.argv[1:])
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "threads": a.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backbone": "unet",
        "patch": a.patch,
        "batch": a.batch,
        "t_max": a.t_max,
        "rounds": a.rounds,
        "malloc": "kept (train.keep_freed_memory)" if KEEP[0] else "system default",
        "seed": 0,
        "command": cmd,
        "wall_s": time.monotonic() - t_start,
    }
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "training": rows, "inference": inf}, indent=2)
    )
    lines = [
        f"unet backbone, patch {a.patch}^3, batch {a.batch}, t_max {a.t_max}, {a.threads} thread(s), CPU "
        f"({meta['cpus']} cores), torch {meta['torch']}, {meta['date']}, medians of {a.rounds} interleaved rounds, "
        f"host memory: {meta['malloc']}. Command: `{cmd}`",
        "",
        "| nets.heads | supervised it (s) | full-RL it (s) | ratio | floor (t_max+1) x fb3/fb1 | ratio / floor "
        "| target <= 1.15 | step memory sup (MB) | step memory RL (MB) | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['heads']} | {r['t_sup_s']:.3f} | {r['t_rl_s']:.3f} | {r['ratio']:.2f} | {r['floor']:.2f} | "
            f"{r['ratio_over_floor']:.2f} | {'met' if r['target_met'] else 'missed'} | {r['peak_rss_sup_mb']:.0f} | "
            f"{r['peak_rss_rl_mb']:.0f} | {r['peak_rss_ratio']:.2f} |"
        )
    lines += [
        "",
        f"Inference, sliding window over a {a.infer_size}^3 volume (three-decoder network): refine_steps=0 "
        f"{inf['refine_0']:.2f} s, refine_steps={a.t_max} {inf[f'refine_{a.t_max}']:.2f} s "
        f"(x{inf[f'refine_{a.t_max}'] / inf['refine_0']:.2f}).",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
