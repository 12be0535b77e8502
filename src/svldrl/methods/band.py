"""The band target update (ours, docs/method.md section 12): SVL-DRL's ``rl.target_update=band``;
``supervised_band``, plain training with that update alone, and ``tloss_band``, the T-Loss baseline with it
(the ablations that tell the rule's share of a result, and the loss's, from the agents').

Before the first step, every training target becomes the given mask with the voxels of a band around its
boundary relabelled by the image's intensity (:func:`svldrl.rules.band_correct`, half-width ``rl.band_width``
voxels, once or repeated to a fixed point: ``rl.band_passes``): a model of the organ's intensity from the
mask's core and of the background's from a ring beyond the band. It needs no model, so it waits for no
warm-up; it targets one-sided boundary noise (masks drawn too large or too small by a few voxels), which no
method learns from the masks alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from svldrl.engine.trainer import Trainer
from svldrl.methods.tloss import TLossTrainer
from svldrl.rules import band_correct_select, band_lookalike_share, relabel

#: Median share of organ-like surroundings above which a run warns (easy phantoms <= 0.017, standard >= 0.043).
LOOKALIKE_WARNING = 0.03


def band_target_update(trainer: Trainer) -> dict[str, float]:
    """Set every case's target to its given mask corrected by :func:`~svldrl.rules.band_correct_select`: the
    band's fixed point (``rl.band_margin``, ``rl.band_passes``) at ``rl.band_width``, or with
    ``rl.band_width_max`` at a width chosen per case.

    Returns:
        The share of voxels changed, as ``charts/target_changed``, the median over cases of
        :func:`band_lookalike_share` as ``charts/band_lookalike_share`` (above :data:`LOOKALIKE_WARNING` the
        run says that the rule is unlikely to help) and of the width used as ``charts/band_width``.
    """
    rl = trainer.cfg["rl"]
    width, margin, passes = int(rl["band_width"]), float(rl["band_margin"]), int(rl["band_passes"])
    widths = list(range(width, int(rl["band_width_max"]) + 1)) or [width]
    changed = total = 0
    shares, chosen = [], []
    for i, (image, given) in enumerate(zip(trainer.images, trainer.given, strict=True)):
        corrected, case_width = band_correct_select(image, given, widths, margin, passes)
        chosen.append(case_width)
        shares.append(band_lookalike_share(image, given, case_width))
        is_fg = np.asarray(given) >= 0.5
        new = relabel(given, corrected & ~is_fg, is_fg & ~corrected)
        changed += int(np.count_nonzero(new != trainer.targets[i]))
        total += new.size
        trainer.targets[i][...] = new  # in place: the targets may live in shared memory (rl.async_workers)
    share = float(np.nanmedian(shares)) if not np.isnan(shares).all() else math.nan
    if share > LOOKALIKE_WARNING:
        trainer.reporter.warn(
            f"band target update: {share:.0%} of the tissue around the median mask has the organ's intensity "
            f"(within 2 std); the band corrects boundaries only where the organ stands out from its surroundings "
            f"and may damage these masks (docs/method.md section 9); consider rl.target_update=none"
        )
    return {
        "charts/target_changed": changed / max(total, 1),
        "charts/band_lookalike_share": share,
        "charts/band_width": float(np.median(chosen)),
    }


class SupervisedBandTrainer(Trainer):
    """Plain Dice + CE training on the band-corrected targets (an ablation of ``rl.target_update=band``)."""

    name = "supervised_band"
    checkpointed = ("targets",)

    def build_method_state(self) -> None:
        self.band_logs = band_target_update(self)

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        return dict(self.band_logs)


class TLossBandTrainer(TLossTrainer):
    """The T-Loss baseline on the band-corrected targets (the no-RL counterpart of ``rl.target_update=band``
    with ``rl.seg_loss=tloss``)."""

    name = "tloss_band"
    checkpointed = ("nu", "targets")

    def build_method_state(self) -> None:
        super().build_method_state()
        self.band_logs = band_target_update(self)

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        return dict(self.band_logs)
