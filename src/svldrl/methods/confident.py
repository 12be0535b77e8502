"""The confident target update (docs/method.md section 6, ``rl.target_update = confident``) and
``supervised_confident``, plain training with that update alone.

After the warm-up share of the budget (``rl.warmup``), at each epoch end, the voxels where the model is
confident (``p > rl.tau`` or ``p < 1 - rl.tau``) and disagrees with the current target take the model's label
(:func:`svldrl.rules.relabel`). SVL-DRL applies it with ``--set rl.target_update=confident``;
``supervised_confident`` applies it on the same schedule without any reinforcement learning, which tells the
update's share of SVL-DRL's result from the agents'.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from svldrl.engine.trainer import Trainer
from svldrl.rl.stages import stage_at
from svldrl.rules import confident_flags, relabel


class ConfidentTargetUpdate(Trainer):
    """Base for methods that relabel confident, disagreeing voxels of their targets after the warm-up."""

    def past_warmup(self) -> bool:
        """Whether the epoch's last step is past the warm-up (SVL-DRL's stage 1)."""
        rl = self.cfg["rl"]
        return stage_at(self.iteration - 1, self.iterations, rl["warmup"], rl["transition"]) > 1

    def confident_target_update(self, tau: float) -> dict[str, float]:
        """Relabel every case's target where the model is confident and disagrees.

        Returns:
            The share of voxels changed, as ``charts/target_changed``.
        """
        changed = total = 0
        for i, img in enumerate(self.images):
            p, t = self.predict_probs(img), self.targets[i]
            fg, bg = confident_flags(p, tau)
            new = relabel(t, fg & (t < 0.5), bg & (t >= 0.5))
            changed += int(np.count_nonzero(new != t))
            total += t.size
            t[...] = new  # in place: the targets may live in shared memory (rl.async_workers)
        return {"charts/target_changed": changed / max(total, 1)}


class SupervisedConfidentTrainer(ConfidentTargetUpdate):
    """Plain Dice + CE training whose targets take the confident update after the warm-up (an ablation)."""

    name = "supervised_confident"
    checkpointed = ("targets",)

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        if not self.past_warmup():
            return {}
        return self.confident_target_update(float(self.cfg["rl"]["tau"]))
