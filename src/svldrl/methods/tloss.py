"""``tloss``: the Robust T-Loss (Gonzalez-Jimenez et al., "Robust T-Loss for Medical Image Segmentation",
MICCAI 2023; public code github.com/Digital-Dermatology/t-loss), and ``tloss_band``, the same on the band-corrected
targets (the no-RL counterpart of the recommended preset).

The Dice + CE loss is replaced by the negative log-likelihood of a multivariate Student-t distribution of the
residual between the foreground probability and the target mask (the formula and its one home:
:mod:`svldrl.methods.kit.losses`). Config keys: ``tloss.init`` (initial ``nu``, default 1.0 as the public code).
``nu`` is in the optimiser and in the checkpoint (``extra.nu``) and logged as ``charts/nu``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from svldrl.engine.trainer import Batch, Trainer
from svldrl.methods.kit.losses import learned_tolerance, t_loss
from svldrl.methods.kit.targets import Band


class TLossTrainer(Trainer):
    """Segmentation trained with the T-Loss on the softmax foreground probability; ``nu`` learned with it."""

    name = "tloss"
    sections = ("tloss",)
    checkpointed = ("nu",)

    def build_method_state(self) -> None:
        self.nu, self._trainable = learned_tolerance(self.network, float(self.cfg.tloss.init), self.device)

    def optimised_module(self) -> nn.Module:
        return self._trainable

    def trainable_parameters(self) -> Any:
        return [{"params": list(self.network.parameters())}, {"params": [self.nu], "weight_decay": 0.0}]

    def train_step(self, batch: Batch) -> dict[str, Any]:
        logits = self.network(batch["image"], heads=("seg",))["seg"]
        loss = t_loss(torch.softmax(logits, 1)[:, 1], batch["target"][:, 0], self.nu)
        self.optimise(loss)
        return {"train_loss": loss.detach(), "charts/nu": self.nu.detach()}


class TLossBandTrainer(TLossTrainer):
    """The T-Loss baseline on the band-corrected targets (the no-RL counterpart of ``rl.target_update=band``
    with ``rl.seg_loss=tloss``)."""

    name = "tloss_band"
    sections = ("rl", "tloss")  # rl.band_*
    checkpointed = ("nu", "targets")

    def build_method_state(self) -> None:
        super().build_method_state()
        self.band_logs = Band(self.cfg.rl).apply(self)

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        return dict(self.band_logs)
