"""``supervised``: plain Dice + CE training on the given masks (the floor on noisy masks, the oracle on clean ones).

Every hook of the base trainer at its default. ``supervised_confident`` (methods/confident.py) is the same
with SVL-DRL's confident target update.
"""

from __future__ import annotations

from svldrl.engine.trainer import Trainer


class SupervisedTrainer(Trainer):
    """The base trainer as it is."""

    name = "supervised"
