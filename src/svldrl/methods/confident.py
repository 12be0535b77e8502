"""The confident target update (docs/method.md section 6, ``rl.target_update = confident``) and
``supervised_confident``, plain training with that update alone.

After the warm-up share of the budget (``rl.warmup``), at each epoch end, the voxels where the model is
confident (``p > rl.tau`` or ``p < 1 - rl.tau``) and disagrees with the current target take the model's label
(:class:`svldrl.methods.kit.targets.Confident`). SVL-DRL applies it with ``--set rl.target_update=confident``;
``supervised_confident`` applies it on the same schedule without any reinforcement learning, which tells the
update's share of SVL-DRL's result from the agents'.
"""

from __future__ import annotations

from typing import Any

from svldrl.engine.trainer import Trainer
from svldrl.methods.kit.targets import Confident, past_warmup


class SupervisedConfidentTrainer(Trainer):
    """Plain Dice + CE training whose targets take the confident update after the warm-up (an ablation)."""

    name = "supervised_confident"
    sections = ("rl",)  # rl.tau, and the stages' warmup for when the update starts
    checkpointed = ("targets",)

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        if not past_warmup(self):
            return {}
        return Confident(self.cfg.rl).apply(self)
