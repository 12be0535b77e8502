"""``supervised_band``: plain training on the band-corrected targets, the ablation that tells the band rule's share
of a result from the agents' (the update itself: :class:`svldrl.methods.kit.targets.Band`, ours, docs/method.md
sections 12-13; ``tloss_band``, the T-Loss baseline with it, is in :mod:`svldrl.methods.tloss`).

Before the first step, every training target becomes the given mask with the voxels of a band around its
boundary relabelled by the image's intensity (:func:`svldrl.rules.band_correct`, half-width ``rl.band_width``
voxels, once or repeated to a fixed point: ``rl.band_passes``): a model of the organ's intensity from the
mask's core and of the background's from a ring beyond the band. It needs no model, so it waits for no
warm-up; it targets one-sided boundary noise (masks drawn too large or too small by a few voxels), which no
method learns from the masks alone. Its guard (``rl.band_guard``, on by default) keeps the given mask wherever
the image does not support the rule: cases whose surroundings look like the organ, stretches of boundary
where the two intensity models do not separate, and moves smaller than a partial-volume layer.

With trusted cases and ``rl.trusted_shift`` (the recommended preset), the band-corrected masks' remaining
systematic shift is learned from the trusted cases and undone after the warm-up, every ``rl.shift_every``
epochs, as
``supervised_shift`` does on the given masks (:func:`svldrl.methods.kit.targets.trusted_shift_update`); without
trusted cases nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from svldrl.engine.trainer import Trainer
from svldrl.methods.kit.targets import (
    NO_SHIFT_FOUND,
    Band,
    shift_due,
    shift_found,
    shift_side,
    trusted_shift_update,
)


class SupervisedBandTrainer(Trainer):
    """Plain Dice + CE training on the band-corrected targets (an ablation of ``rl.target_update=band``)."""

    name = "supervised_band"
    sections = ("rl",)  # rl.band_*
    checkpointed = ("targets", "target_notes")  # svldrl targets --from shows the notes
    finish_declined = NO_SHIFT_FOUND
    update_mark = "charts/shift_applied"  # the band's own logs come every epoch; the shift's when it measured

    def finish_wanted(self, before: list[dict[str, Any]]) -> bool:
        # with the trusted shift on, the finish needs its evidence that the masks are wrong
        return shift_found(before) if self.cfg.rl.trusted_shift else True

    def finish_side(self, before: list[dict[str, Any]]) -> tuple[int, Sequence[np.ndarray]]:
        # the shift measured the band-corrected masks, and the band can overshoot (on the easy phantoms it cut 4% of
        # the true organ out of masks drawn too large): known is only what the given and the band's masks agree on
        side = shift_side(before) if self.cfg.rl.trusted_shift else 0
        if not side:
            return 0, []
        agree = np.maximum if side > 0 else np.minimum
        return side, [agree(np.asarray(g), b) for g, b in zip(self.given, self.band_targets, strict=True)]

    def build_method_state(self) -> None:
        self.band_logs = Band(self.cfg.rl).apply(self)
        # what the shift update starts from each time; restore() replaces the targets, never this
        self.band_targets = [t.copy() for t in self.targets]

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        logs = dict(self.band_logs)
        if self.cfg.rl.trusted_shift and self.trusted_ids and shift_due(self, epoch):
            logs.update(trusted_shift_update(self, self.band_targets))
        return logs
