"""``supervised_agents``: plain training on the given masks as voxel agents, rewarded against the trusted cases'
masks, correct them (ours, after PixelDRL-MG; docs/method.md section 15; the update itself:
:func:`svldrl.methods.kit.agents.trusted_agents_update`, the agents: :mod:`svldrl.rl.mask`).

SVL-DRL's agents as the paper describes them act on the image and are rewarded against the given masks, which the
segmentation already fits: they learn nothing the masks do not say. These act on the mask, as every published
pixel-level RL segmentation method does, and their reward is the move of each voxel's own mask value towards the
trusted mask. After the warm-up share of the budget (``rl.warmup``), every ``rl.shift_every`` epochs, they train
for ``rl.agent_episodes`` episodes on the trusted cases, starting from the model's own mask of each (it carries the
given masks' systematic error), and every training target becomes its given mask as the agents correct it, where
they pass the check on the trusted cases (``rl.agent_keep``); otherwise the given masks stay. The no-RL
counterpart, the same idea without agents, is ``supervised_shift``. Without trusted cases it trains as
``supervised``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from svldrl.engine.trainer import Trainer
from svldrl.methods.kit.agents import trusted_agents_update
from svldrl.methods.kit.targets import shift_due
from svldrl.nets import build_network


class SupervisedAgentsTrainer(Trainer):
    """Plain Dice + CE training whose targets the mask agents correct (from the warm-up on, with trusted cases)."""

    name = "supervised_agents"
    sections = ("rl",)  # rl.agent_*, rl.warmup, rl.shift_every
    checkpointed = ("targets", "target_notes", "agents", "agents_optimizer")

    def build_method_state(self) -> None:
        # a network of their own, trained by the RL loss alone (PixelRL): the segmentation's is left as plain
        # training makes it
        nets = replace(self.cfg.nets, heads="light")
        self.agents = build_network(nets, in_channels=1, aux_channels=1, rl_heads=True).to(self.device)
        self.agents_optimizer = torch.optim.Adam(self.agents.parameters(), lr=float(self.cfg.rl.agent_lr))

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        return trusted_agents_update(self) if self.trusted_ids and shift_due(self, epoch) else {}
