"""``supervised``: plain Dice + CE training on the given masks (the floor on noisy masks, the oracle on clean ones).

With ``--set rl.target_update=confident`` it applies SVL-DRL's confident target update (method.md section 6)
on the same schedule, after the ``rl.warmup`` share of the iterations: the ablation that tells the update's
share of SVL-DRL's result from the reinforcement learning's.
"""

from __future__ import annotations

from typing import Any

from svldrl.engine.trainer import Trainer
from svldrl.rl.stages import stage_at


class SupervisedTrainer(Trainer):
    """The base trainer; every hook at its default unless ``rl.target_update = confident``."""

    name = "supervised"

    def _updates_targets(self) -> bool:
        return self.cfg["rl"]["target_update"] == "confident"

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        rl = self.cfg["rl"]
        # Same moment as SVL-DRL's update: once the epoch's last step is past the warmup stage.
        past_warmup = stage_at(self.iteration - 1, self.iterations, rl["warmup"], rl["transition"]) > 1
        logs = super().on_epoch_end(epoch)
        if self._updates_targets() and past_warmup:
            logs.update(self.confident_target_update(float(rl["tau"])))
        return logs

    def extra_state(self) -> dict[str, Any]:
        if not self._updates_targets():
            return {}
        return {"targets": self.targets_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "targets" in state:
            self.load_targets_state(state["targets"])
