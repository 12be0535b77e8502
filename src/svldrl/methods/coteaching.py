"""``coteaching``: voxel-wise Co-teaching (Han et al., "Co-teaching: Robust training of deep neural networks
with extremely noisy labels", NeurIPS 2018).

Two networks of the same architecture, started from different initialisations, learn side by side. At every
step each one ranks the voxels of the batch by its own cross-entropy against the target and keeps the
``1 - forget_rate(t)`` fraction with the smallest loss; each network is then trained on the voxels its PEER
kept, so that the two filter each other's mistakes instead of confirming their own. Small-loss voxels are
the likely clean ones while the networks are still in their early-learning phase, which is why the forget
rate starts at 0 and ramps up linearly.

Config keys: ``coteaching.forget_rate`` (final forget rate, default 0.2), ``coteaching.forget_ramp``
(share of ``train.iterations`` over which the rate ramps linearly from 0, default 0.3). The loss on the
kept voxels is the run's Dice + CE restricted to those voxels (CE alone ranks them, as in the paper and
PyMIC's ``NLLCoTeaching``), so that a forget rate of 0 is exactly two independent ``supervised`` runs.
Prediction and validation use the first network; the second and its optimiser live in the checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import MaskedDiceLoss

from svldrl.engine import distributed as D
from svldrl.engine.trainer import Batch, Trainer, seg_target


def small_loss_mask(loss_map: torch.Tensor, keep_fraction: float) -> torch.Tensor:
    """The ``keep_fraction`` share of entries with the smallest loss (Co-teaching's small-loss trick).

    Args:
        loss_map: per-voxel losses of any shape (the whole batch is ranked together, as in the paper's
            minibatch selection and PyMIC).
        keep_fraction: share kept, in [0, 1]; ``round(keep_fraction * numel)`` entries are kept.

    Returns:
        A bool mask of ``loss_map``'s shape with exactly that many True entries, on the lowest losses
        (ties broken by position).
    """
    flat = loss_map.detach().reshape(-1)
    k = int(round(min(max(keep_fraction, 0.0), 1.0) * flat.numel()))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.argsort(flat, stable=True)[:k]] = True
    return mask.reshape(loss_map.shape)


def forget_rate_at(iteration: int, total: int, final_rate: float, ramp: float) -> float:
    """Co-teaching's schedule: 0 at the start, linear to ``final_rate`` at ``ramp * total`` steps, then flat.

    Args:
        iteration: optimiser steps done.
        total: the budget (``train.iterations``).
        final_rate: ``coteaching.forget_rate``.
        ramp: ``coteaching.forget_ramp``, share of the budget the ramp lasts (0: the final rate at once).
    """
    ramp_steps = ramp * total
    if ramp_steps <= 0:
        return float(final_rate)
    return float(final_rate) * min(1.0, iteration / ramp_steps)


_MASKED_DICE = MaskedDiceLoss(softmax=True)  # MONAI's defaults: per sample and class, smooth 1e-5, mean


def masked_dice_ce(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, dice_w: float, ce_w: float
) -> torch.Tensor:
    """Dice (MONAI's ``MaskedDiceLoss``: softmax, then input and target masked) + CE over the voxels where
    ``mask`` holds.

    Args:
        logits: (B, C, ...) network output.
        target: (B, C, ...) soft one-hot target.
        mask: (B, 1, ...) bool, the voxels that count.
        dice_w: ``loss.dice_weight``.
        ce_w: ``loss.ce_weight``.
    """
    m = mask.to(logits.dtype)
    dice = _MASKED_DICE(logits, target, m)
    # MONAI has no masked cross-entropy: the mean CE of the kept voxels, written out
    ce = -(target * F.log_softmax(logits, 1)).sum(1, keepdim=True)
    return dice_w * dice + ce_w * (ce * m).sum() / m.sum().clamp_min(1.0)


def coteaching_losses(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    target: torch.Tensor,
    keep_fraction: float,
    dice_w: float = 1.0,
    ce_w: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Co-teaching's cross update: each network's loss on the voxels its PEER finds small-loss.

    Args:
        logits1: (B, C, ...) first network's logits.
        logits2: (B, C, ...) second network's logits.
        target: (B, C, ...) soft one-hot target.
        keep_fraction: ``1 - forget_rate(t)``.
        dice_w: ``loss.dice_weight``.
        ce_w: ``loss.ce_weight``.

    Returns:
        ``(loss1, loss2, keep1, keep2)``: ``loss1`` trains network 1 on ``keep2`` (network 2's selection) and
        ``loss2`` trains network 2 on ``keep1``; ``keep_i`` = network i's small-loss voxels (B, 1, ...).
    """
    # Each network ranks the voxels by its own per-voxel CE ...
    keep1 = small_loss_mask(-(target * F.log_softmax(logits1, 1)).sum(1, keepdim=True), keep_fraction)
    keep2 = small_loss_mask(-(target * F.log_softmax(logits2, 1)).sum(1, keepdim=True), keep_fraction)
    # ... and teaches its peer with that selection.
    loss1 = masked_dice_ce(logits1, target, keep2, dice_w, ce_w)
    loss2 = masked_dice_ce(logits2, target, keep1, dice_w, ce_w)
    return loss1, loss2, keep1, keep2


class CoTeachingTrainer(Trainer):
    """Two networks; each trains on the small-loss voxels chosen by the other."""

    name = "coteaching"
    sections = ("coteaching",)
    checkpointed = ("peer", "peer_optimizer", "peer_scheduler")

    def build_method_state(self) -> None:
        self.peer = self.build_network().to(self.device)
        D.broadcast_parameters(self.peer)
        self.peer_optimizer = self.build_optimizer(self.peer.parameters())
        self.peer_scheduler = self.build_scheduler(self.peer_optimizer)

    def forget_rate(self) -> float:
        ma = self.cfg.coteaching
        return forget_rate_at(self.iteration, self.iterations, ma.forget_rate, ma.forget_ramp)

    def train_step(self, batch: Batch) -> dict[str, Any]:
        logits1 = self.network(batch["image"], heads=("seg",))["seg"]
        logits2 = self.peer(batch["image"], heads=("seg",))["seg"]
        keep, lc = 1.0 - self.forget_rate(), self.cfg.loss
        loss1, loss2, keep1, keep2 = coteaching_losses(
            logits1, logits2, seg_target(batch["target"]), keep, lc.dice_weight, lc.ce_weight
        )
        self.optimise(loss1)
        self.optimise(loss2, self.peer_optimizer, self.peer)
        self.peer_scheduler.step()  # the base loop steps only the first network's scheduler
        # How much the two selections disagree: near 0 means the networks have collapsed to one view.
        disagree = (keep1 != keep2).float().mean()
        return {
            "train_loss": loss1.detach(),
            "losses/peer_loss": loss2.detach(),
            "charts/forget_rate": 1.0 - keep,
            "charts/selection_disagreement": disagree,
        }
