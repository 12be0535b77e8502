"""``supervised_shift``: plain training on the given masks with their systematic boundary shift, learned from the
trusted cases, undone (ours; the update itself: :class:`svldrl.methods.kit.targets.TrustedShift`, docs/method.md
section 14).

Masks drawn too large (or too small) by every annotator alike leave no trace a method can see in the masks
alone: the model learns the shift with the organ. A few trusted masks show it. After the warm-up share of the
budget (``rl.warmup``), every ``rl.shift_every`` epochs, the model is compared with the trusted masks of the cases
it holds out for validation and with the masks it trains on; the difference is the masks' shift, whatever the
model's own error. When it is clear (``rl.shift_z`` standard errors, at least ``rl.shift_min`` voxels), every
target becomes its given mask moved by its own shift (``rl.shift_per_case``); otherwise the given masks stay.
Without trusted cases it trains as ``supervised``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from svldrl.engine.trainer import Trainer
from svldrl.methods.kit.targets import NO_SHIFT_FOUND, TrustedShift, shift_due, shift_found, shift_side


class SupervisedShiftTrainer(Trainer):
    """Plain Dice + CE training whose targets lose the shift the trusted cases show (from the warm-up on)."""

    name = "supervised_shift"
    sections = ("rl",)  # rl.shift_*
    checkpointed = ("targets", "target_notes")  # svldrl targets --from shows the notes
    finish_declined = NO_SHIFT_FOUND
    update_mark = "charts/shift_applied"  # logged only at the epochs whose end ran the shift update

    def finish_wanted(self, before: list[dict[str, Any]]) -> bool:
        return shift_found(before)

    def finish_side(self, before: list[dict[str, Any]]) -> tuple[int, Sequence[np.ndarray]]:
        return shift_side(before), self.given

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        return TrustedShift(self.cfg.rl).apply(self) if shift_due(self, epoch) else {}
