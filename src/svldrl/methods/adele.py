"""``adele``: adaptive early-learning correction (Liu et al., "Adaptive Early-Learning Correction for
Segmentation from Noisy Annotations", CVPR 2022).

A network trained on noisy masks first fits the clean structure (early learning) and only later memorises
the noise. ADELE watches each class's training IoU (prediction vs the given mask on the training patches of
an epoch); when that curve flattens, memorisation is about to begin, and from then on, at every epoch end,
the labels of that class are corrected where the model is confident. A consistency loss between the
predictions at two input scales keeps the model's confident predictions stable enough to be trusted.

Rules (each a pure function below):

- flattening (:func:`iou_curve_flattened`, the paper code's ``curve_func`` / ``if_update``): fit
  ``f(t) = a (1 - exp(-t^b / c))`` to the IoU of epochs ``t = 1..n``; the curve has flattened once the
  fitted slope at the current epoch has fallen by more than ``r`` (0.9) relative to the slope at epoch 1:
  ``|f'(1) - f'(n)| / f'(1) > r``. (The paper's code also forces the update at epoch 16 at the latest;
  budgets here are in iterations, so that cap is left out.)
- correction (:func:`adele_correct`): in a flagged class ``c``, voxels with ``p_c > threshold`` take label
  ``c``; every other voxel keeps its current target.
- consistency (:func:`scale_consistency`): the mean KL divergence of the predictions at scales 1 and
  ``SCALE`` (rescaled input, logits resized back) from their average (the Jensen-Shannon form of the
  paper's multi-scale consistency).

Config keys: ``adele.threshold`` (confidence for a correction, default 0.7), ``adele.consistency`` (weight of
the consistency loss, default 1.0).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import OptimizeWarning, curve_fit

from svldrl.engine import distributed as D
from svldrl.engine.trainer import Batch, Trainer, seg_target
from svldrl.rules import confident_flags, relabel

SCALE = 0.75  # the second input scale of the consistency loss
FLATTEN_RATIO = 0.9  # r of the paper's code: relative drop of the fitted slope that counts as flat


def _saturation(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * (1.0 - np.exp(-(t**b) / c))


def _saturation_slope(t: np.ndarray | float, a: float, b: float, c: float) -> np.ndarray:
    t = np.asarray(t, dtype=float) + 1e-6  # the paper's guard for t**(b - 1) at 0
    return a * b / c * np.exp(-(t**b) / c) * t ** (b - 1.0)


def iou_curve_flattened(ious: Sequence[float], ratio: float = FLATTEN_RATIO, min_epochs: int = 3) -> bool:
    """Whether a training-IoU curve has flattened (ADELE's ``if_update`` rule).

    Fits ``f(t) = a (1 - exp(-t^b / c))`` (``0 <= a, b <= 1``, ``c >= 0``; later epochs weighted more, as in
    the paper's code) to ``ious[t - 1]`` at epochs ``t = 1..n`` and compares the fitted slope at the
    current epoch ``n`` with the slope at epoch 1.

    Args:
        ious: one class's training IoU per epoch so far, oldest first.
        ratio: ``r``; flattened when ``(f'(1) - f'(n)) / f'(1) > r`` (0.9: the slope dropped below 10%).
        min_epochs: fewer points than this never count as flattened (three parameters need three points).

    Returns:
        True once the curve is flat by that rule; False while it still rises, stays at zero (the class is
        not learned yet) or cannot be fitted. Epochs without an IoU (NaN) are skipped.
    """
    y = np.asarray(ious, dtype=float)
    t = np.arange(1, y.size + 1, dtype=float)
    now = float(y.size)  # the current epoch, even when its own IoU is undefined
    ok = np.isfinite(y)  # an epoch whose patches held no voxel of the class has no IoU
    t, y = t[ok], y[ok]
    if y.size < max(min_epochs, 3):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            (a, b, c), _ = curve_fit(
                _saturation,
                t,
                y,
                p0=(1.0, 1.0, 1.0),
                method="trf",
                sigma=np.geomspace(1.0, 0.1, y.size),
                absolute_sigma=True,
                bounds=([0.0, 0.0, 0.0], [1.0, 1.0, np.inf]),
                maxfev=10000,
            )
    except (RuntimeError, ValueError):
        return False
    first, last = float(_saturation_slope(1.0, a, b, c)), float(_saturation_slope(now, a, b, c))
    if not first > 1e-12:
        # Flat from the start: saturated by epoch 1 (flattened), or stuck at zero: nothing learned yet.
        return bool(a > 1e-3)
    return abs(first - last) / first > ratio


def adele_correct(
    target: np.ndarray, probs: np.ndarray, threshold: float, classes: Sequence[bool] = (True, True)
) -> np.ndarray:
    """ADELE's label correction for a binary task: confident voxels of flagged classes take the model's label.

    Args:
        target: current training target (foreground probability / mask), any shape.
        probs: the model's foreground probability, same shape.
        threshold: confidence above which a voxel is corrected (``adele.threshold``).
        classes: ``(background, foreground)``: which classes' curves have flattened; only their confident
            voxels change (``1 - p > threshold`` -> 0, ``p > threshold`` -> 1).

    Returns:
        A new float32 target; voxels that are not confident keep their value.
    """
    to_fg, to_bg = confident_flags(probs, threshold)
    return relabel(target, to_fg & bool(classes[1]), to_bg & bool(classes[0]))


def scale_consistency(logits: torch.Tensor, logits_scaled: torch.Tensor) -> torch.Tensor:
    """Mean over voxels of ``sum_s KL(p_mean || p_s) / 2`` for the two scales (both already at one size)."""
    p1, p2 = torch.softmax(logits, 1), torch.softmax(logits_scaled, 1)
    log_mix = ((p1 + p2) / 2).clamp(1e-7, 1.0).log()

    def kl_from_mix(p: torch.Tensor) -> torch.Tensor:  # KL(p || mix) per voxel
        return (p * (p.clamp_min(1e-7).log() - log_mix)).sum(1)

    return ((kl_from_mix(p1) + kl_from_mix(p2)) / 2).mean()


class ADELETrainer(Trainer):
    """Dice + CE on targets corrected per class once that class's training IoU curve flattens."""

    name = "adele"
    sections = ("adele",)
    checkpointed = ("iou_history", "correcting", "targets")

    def build_method_state(self) -> None:
        self.iou_history: list[list[float]] = []  # per epoch: [IoU background, IoU foreground]
        self.correcting = [False, False]  # once a class's curve has flattened it stays corrected
        self._inter, self._union = np.zeros(2), np.zeros(2)

    def _scaled_size(self) -> int:
        # The rescaled patch must still be a multiple of the network's divisor.
        div = int(getattr(self.network, "divisor", 1))
        return max(div, int(round(self.patch * SCALE / div)) * div)

    def train_step(self, batch: Batch) -> dict[str, Any]:
        x = batch["image"]
        logits = self.network(x, heads=("seg",))["seg"]
        seg = self.seg_loss(logits, seg_target(batch["target"]))
        size = (self._scaled_size(),) * 3
        small = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
        back = F.interpolate(
            self.network(small, heads=("seg",))["seg"],
            size=x.shape[2:],
            mode="trilinear",
            align_corners=False,
        )
        cons = scale_consistency(logits, back)
        loss = seg + float(self.cfg.adele.consistency) * cons
        self.optimise(loss)
        # Training IoU per class against the GIVEN masks: the curve ADELE watches.
        pred, given = logits.detach().argmax(1), batch["given"][:, 0] > 0.5
        for c, (p, g) in enumerate(((pred == 0, ~given), (pred == 1, given))):
            self._inter[c] += float((p & g).sum())
            self._union[c] += float((p | g).sum())
        return {"train_loss": loss.detach(), "losses/seg": seg.detach(), "losses/consistency": cons.detach()}

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        # Pool the counts of all ranks so that every rank takes the same correction decision.
        acc = D.mean_over_ranks(
            {f"{k}{c}": float(v[c]) for k, v in (("i", self._inter), ("u", self._union)) for c in range(2)}
        )
        ious = [acc[f"i{c}"] / acc[f"u{c}"] if acc[f"u{c}"] else float("nan") for c in range(2)]
        self._inter, self._union = np.zeros(2), np.zeros(2)
        self.iou_history.append(ious)
        for c in range(2):
            if not self.correcting[c]:
                self.correcting[c] = iou_curve_flattened([h[c] for h in self.iou_history])
        logs: dict[str, Any] = {
            "charts/train_iou_bg": ious[0],
            "charts/train_iou_fg": ious[1],
            "charts/correcting_bg": float(self.correcting[0]),
            "charts/correcting_fg": float(self.correcting[1]),
            "charts/target_changed": 0.0,
        }
        if any(self.correcting):
            thr, changed, total = float(self.cfg.adele.threshold), 0, 0
            for i, img in enumerate(self.images):  # one case at a time: memory stays bounded
                new = adele_correct(self.targets[i], self.predict_probs(img), thr, self.correcting)
                changed += int((new != self.targets[i]).sum())
                total += new.size
                self.targets[i] = new
            logs["charts/target_changed"] = changed / max(total, 1)
        return logs
