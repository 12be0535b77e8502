"""``supervised``: plain Dice + CE training on the given masks (the floor on noisy masks, the oracle on clean ones)."""

from __future__ import annotations

from svldrl.engine.trainer import Trainer


class SupervisedTrainer(Trainer):
    """The base trainer unchanged: every hook at its default."""

    name = "supervised"
