"""The band target update (ours, docs/method.md sections 12-13): SVL-DRL's ``rl.target_update=band``;
``supervised_band``, plain training with that update alone, and ``tloss_band``, the T-Loss baseline with it
(the ablations that tell the rule's share of a result, and the loss's, from the agents').

Before the first step, every training target becomes the given mask with the voxels of a band around its
boundary relabelled by the image's intensity (:func:`svldrl.rules.band_correct`, half-width ``rl.band_width``
voxels, once or repeated to a fixed point: ``rl.band_passes``): a model of the organ's intensity from the
mask's core and of the background's from a ring beyond the band. It needs no model, so it waits for no
warm-up; it targets one-sided boundary noise (masks drawn too large or too small by a few voxels), which no
method learns from the masks alone. Its guard (``rl.band_guard``, on by default) keeps the given mask wherever
the image does not support the rule: cases whose surroundings look like the organ, stretches of boundary
where the two intensity models do not separate, and moves smaller than a partial-volume layer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from svldrl.engine.trainer import Trainer
from svldrl.methods.tloss import TLossTrainer
from svldrl.rules import BandGuard, band_correct_guarded, relabel


def band_guard(rl: dict[str, Any]) -> BandGuard | None:
    """The guard ``rl.band_*`` ask for; None when ``rl.band_guard`` is off."""
    if not rl["band_guard"]:
        return None
    return BandGuard(max_lookalike=float(rl["band_max_lookalike"]), min_shift=float(rl["band_min_shift"]))


def band_target_update(trainer: Trainer) -> dict[str, float]:
    """Set every case's target to its given mask corrected by :func:`~svldrl.rules.band_correct_guarded`: the
    band's fixed point (``rl.band_margin``, ``rl.band_passes``) at ``rl.band_width`` (or with
    ``rl.band_width_max`` at a width chosen per case), kept only where the guard's tests pass (``rl.band_guard``).

    Returns:
        The share of voxels changed as ``charts/target_changed``, the share of cases the guard left as given as
        ``charts/band_abstained``, the median over cases of :func:`~svldrl.rules.band_lookalike_share` as
        ``charts/band_lookalike_share`` and of the width used as ``charts/band_width``. A run whose cases the
        guard mostly leaves alone, or an unguarded run on surroundings that look like the organ, says so.
    """
    rl = trainer.cfg["rl"]
    width, margin, passes = int(rl["band_width"]), float(rl["band_margin"]), int(rl["band_passes"])
    widths = list(range(width, int(rl["band_width_max"]) + 1)) or [width]
    guard = band_guard(rl)
    changed = total = 0
    outcomes = []
    for i, (image, given) in enumerate(zip(trainer.images, trainer.given, strict=True)):
        outcome = band_correct_guarded(image, given, widths, margin, passes, guard)
        outcomes.append(outcome)
        trainer.target_notes[trainer.train_ids[i]] = {
            "band": f"kept as given ({outcome.abstained})" if outcome.abstained else "corrected",
            "band_lookalike_share": outcome.lookalike,
            "band_width": outcome.width,
            "band_held_back": outcome.held_back,
        }
        is_fg = np.asarray(given) >= 0.5
        new = relabel(given, outcome.mask & ~is_fg, is_fg & ~outcome.mask)
        changed += int(np.count_nonzero(new != trainer.targets[i]))
        total += new.size
        trainer.targets[i][...] = new  # in place: the targets may live in shared memory (rl.async_workers)
    shares = [o.lookalike for o in outcomes]
    share = float(np.nanmedian(shares)) if not np.isnan(shares).all() else math.nan
    abstained = sum(bool(o.abstained) for o in outcomes) / max(len(outcomes), 1)
    if guard is not None and abstained > 0.5:
        trainer.reporter.info(
            f"band target update: the guard kept {abstained:.0%} of the given masks as they are (the organ does not "
            f"stand out from its surroundings there, or is too small for a band of {width}); docs/method.md "
            "section 13"
        )
    elif guard is None and share > BandGuard().max_lookalike:
        trainer.reporter.warn(
            f"band target update without its guard: {share:.0%} of the tissue around the median mask has the "
            "organ's intensity; the band may move right masks into it (docs/method.md section 13); consider "
            "rl.band_guard=true"
        )
    return {
        "charts/target_changed": changed / max(total, 1),
        "charts/band_abstained": abstained,
        "charts/band_lookalike_share": share,
        "charts/band_width": float(np.median([o.width for o in outcomes])),
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
