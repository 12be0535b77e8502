"""Benchmark figures: Dice per method and setting (grouped bars), and Dice against the noise ratio."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from svldrl.data.io import atomic_write

#: (setting, method) -> {"dice": (mean, std), ..., "n": seeds}, as made by report.aggregate.
Stats = dict[tuple[str, str], dict[str, Any]]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(methods: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    # "tight" keeps a legend placed outside the axes inside the image.
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    plt.close(fig)
    return path


def bar_chart(
    path: Path,
    stats: Stats,
    settings: list[str],
    methods: list[str],
    label_dice: dict[str, float],
    title: str,
) -> Path | None:
    """Grouped bars: one group per setting, one bar per method (mean Dice %, error bar = std over seeds).

    Args:
        path: PNG to write.
        stats: aggregated results.
        settings: x groups in order (the clean oracle first).
        methods: bar order and colours.
        label_dice: setting -> label Dice of its training masks, shown under the group name.
        title: figure title.

    Returns:
        ``path``, or None when there is nothing to plot.
    """
    groups = [(s, [m for m in methods if (s, m) in stats]) for s in settings]
    groups = [(s, ms) for s, ms in groups if ms]
    if not groups:
        return None
    plt = _pyplot()
    colors = _colors(methods)
    width = 0.8 / max(len(ms) for _, ms in groups)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 2.0), 4.8), dpi=110)

    seen: set[str] = set()
    for x, (s, ms) in enumerate(groups):
        # The bars of a group are centred on its tick whatever the number of methods it holds.
        for k, m in enumerate(ms):
            mean, std = stats[(s, m)]["dice"]
            pos = x + (k - (len(ms) - 1) / 2) * width
            ax.bar(
                pos,
                100 * mean if not math.isnan(mean) else 0.0,
                width * 0.92,
                color=colors[m],
                yerr=None if math.isnan(std) else 100 * std,
                capsize=2,
                error_kw={"lw": 0.8},
                label=None if m in seen else m,
            )
            seen.add(m)
    oracle = stats.get(("clean", "supervised"), {}).get("dice", (math.nan, math.nan))[0]
    if not math.isnan(oracle):
        # The oracle level across every group shows at a glance how much each setting's noise costs.
        ax.axhline(100 * oracle, color="grey", ls="--", lw=0.8, label="oracle (supervised on clean)")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(
        [
            f"{s}{' (oracle)' if s == 'clean' else ''}\nlabel Dice {100 * label_dice.get(s, math.nan):.1f}"
            for s, _ in groups
        ],
        fontsize=8,
    )
    lows = [
        100 * stats[(s, m)]["dice"][0]
        for s, ms in groups
        for m in ms
        if not math.isnan(stats[(s, m)]["dice"][0])
    ]
    ax.set_ylim(max(0.0, (min(lows) if lows else 0.0) - 10.0), 100.0)
    ax.set_ylabel("Dice on clean test masks (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    # Below the axes: inside, the legend would hide bars.
    ax.legend(
        fontsize=7, ncol=min(5, len(seen) + 1), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False
    )
    return _save(fig, path)


def ratio_chart(
    path: Path,
    stats: Stats,
    points: list[tuple[float, str]],
    methods: list[str],
    label_dice: dict[str, float],
    title: str,
) -> Path | None:
    """Dice against the share of corrupted cases, one line per method; ratio 0 is the clean run if present.

    Args:
        path: PNG to write.
        stats: aggregated results.
        points: (ratio, setting name) pairs of one protocol, sorted by ratio.
        methods: line order and colours.
        label_dice: setting -> label Dice, shown under each ratio.
        title: figure title.

    Returns:
        ``path``, or None when no method has two points.
    """
    plt = _pyplot()
    colors = _colors(methods)
    points = [(0.0, "clean"), *points]
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
    drawn = 0
    for m in methods:
        xs, ys, es = [], [], []
        for ratio, s in points:
            if (s, m) in stats and not math.isnan(stats[(s, m)]["dice"][0]):
                mean, std = stats[(s, m)]["dice"]
                xs.append(ratio)
                ys.append(100 * mean)
                es.append(0.0 if math.isnan(std) else 100 * std)
        if len(xs) < 2:
            continue
        ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=2, lw=1.2, color=colors[m], label=m)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xticks([r for r, _ in points])
    ax.set_xticklabels([f"{r:g}\n({100 * label_dice.get(s, math.nan):.1f})" for r, s in points], fontsize=8)
    ax.set_xlabel("share of corrupted training cases (label Dice of the training masks, %)")
    ax.set_ylabel("Dice on clean test masks (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def ratio_groups(noise: list[Any]) -> dict[str, list[tuple[float, str]]]:
    """Settings sharing a protocol and parameters but not the ratio: ``{group name: [(ratio, setting)]}``.

    Only groups with at least two ratios are returned; the name is the protocol plus any parameters
    (``mt``, ``mt_mode-dilate``).
    """
    groups: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for n in noise:
        key = (n.protocol, json.dumps(n.params, sort_keys=True))
        groups.setdefault(key, []).append((float(n.ratio), n.name))
    out = {}
    for (protocol, params), pts in groups.items():
        if len({r for r, _ in pts}) < 2:
            continue
        extra = "_".join(f"{k}-{v}" for k, v in sorted(json.loads(params).items()))
        name = re.sub(r"[^A-Za-z0-9_.+-]", "", f"{protocol}_{extra}" if extra else protocol)
        out[name] = sorted(pts)
    return out


def write_plots(
    folder: Path,
    bench: Any,
    stats: Stats,
    settings: list[str],
    methods: list[str],
    label_dice: dict[str, float],
) -> list[Path]:
    """``dice_bars.png`` and a ``dice_vs_ratio_<protocol>.png`` per ratio group; returns the files."""
    written = []
    bars = bar_chart(
        folder / "dice_bars.png",
        stats,
        settings,
        methods,
        label_dice,
        f"{bench.name}: Dice per noise setting (mean ± std over seeds)",
    )
    if bars is not None:
        written.append(bars)
    for name, pts in ratio_groups(bench.noise).items():
        p = ratio_chart(
            folder / f"dice_vs_ratio_{name}.png",
            stats,
            pts,
            methods,
            label_dice,
            f"{bench.name}: Dice against the noise ratio ({name})",
        )
        if p is not None:
            written.append(p)
    return written
