"""``mtcl``: mean-teacher-assisted confident learning (Xu et al., "Noisy Labels are Treasure: Mean-Teacher-
Assisted Confident Learning for Hepatic Vessel Segmentation", MICCAI 2021; extended in IEEE TMI 2022).

An exponential-moving-average (EMA) teacher of the network gives stable probabilities, which feed
confident learning (Northcutt et al., JAIR 2021; cleanlab's ``find_label_issues``) to find the voxels whose
given label is probably wrong; those are corrected in the training targets of the noisy cases. A
mean-teacher consistency loss (MSE between the student's and the teacher's softmax on a noise-perturbed
input) regularises the student throughout.

Rules (each a pure function below):

- thresholds (:func:`~svldrl.rules.cl_thresholds`): ``t_j`` = the mean self-confidence ``p_j`` over the
  voxels whose given label is ``j``.
- flagging (:func:`~svldrl.rules.confident_learning_flags`, the off-diagonal of cleanlab's confident joint,
  shared with the audit's ``cl`` detector): a voxel with
  given label ``y`` is a label error when ``p_y < t_y`` while some other class ``k`` has ``p_k >= t_k``.
- correction (:func:`svldrl.methods.kit.targets.mtcl_correct`): flagged voxels take the other class (hard), or
  move ``SOFT_STEP`` (0.8) towards it (soft: MTCL's ``smooth`` correction, ``label + flag * (-1)^label * 0.8``).
  The correction is redone from the given masks at every epoch end with the current teacher, so it never drifts.

Schedule: the first ``mtcl.warmup`` (30%) of the iterations train on the given masks; corrections start after.
The clean subset of the original method (its small high-quality set) is the dataset's trusted cases
(``labelsTr_trusted/``, a noisy set made with ``svldrl noise --trusted N``, or ``--trusted FILE``; see
svldrl.data.dataset): they train on their trusted masks (``data.train_on=auto`` trains every case for MTCL), are
never corrected, the thresholds come from them, and they also validate. Without trusted cases, ``mtcl.clean_cases``
= K makes the first K training cases (sorted ids) the clean subset, on their clean masks (the way before trusted
cases; with trusted cases it is refused: the trusted cases are the clean subset). Without either, nothing is
clean and the thresholds come from all cases (cleanlab's default). ``mtcl.soft``: soft instead of hard
correction (default false). ``mtcl.ema`` (0.99, the
teacher's decay), ``mtcl.consistency`` (0.1, the weight of the consistency loss after its sigmoid ramp-up over
the warm-up), ``mtcl.noise`` (0.1, std of the noise on the teacher's input, clipped at 2 std), as in MTCL and
UA-MT.
Memory stays bounded: the teacher segments one case at a time, thresholds are accumulated as per-class sums
and counts, and the flags are computed per case (never one (voxels x classes) table of all cases, which is
what makes cleanlab on whole datasets run out of memory). Between the threshold pass and the flagging pass
the teacher's foreground probability of each case is kept in float16 (2 bytes a voxel, less than the
float32 targets already held) rather than segmenting every case twice.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from svldrl.data.dataset import Case
from svldrl.engine.ema import ema_teacher
from svldrl.engine.trainer import Batch, Trainer, seg_target
from svldrl.errors import UserError
from svldrl.methods.kit.targets import cl_target_update


def sigmoid_rampup(current: float, length: float) -> float:
    """Laine and Aila's ramp ``exp(-5 (1 - t)^2)``, ``t = current / length`` clipped to [0, 1]."""
    if length <= 0:
        return 1.0
    t = min(max(current / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


class MTCLTrainer(Trainer):
    """Student trained on confident-learning-corrected targets, plus a mean-teacher consistency loss."""

    name = "mtcl"
    sections = ("mtcl",)
    checkpointed = ("teacher", "targets")
    trains_on_trusted = True  # the clean subset trains (and is never corrected)

    def clean_positions(self) -> list[int]:
        """Positions (in ``train_ids``) of the clean subset: the trusted cases that train, else the first
        ``mtcl.clean_cases``.

        Raises:
            UserError: ``mtcl.clean_cases`` set on a dataset with trusted cases (two clean subsets).
        """
        k = int(self.cfg.mtcl.clean_cases)
        if self.trusted_ids:
            if k:
                raise UserError(
                    f"mtcl.clean_cases={k} makes the first {k} training cases MTCL's clean subset, but this run has "
                    f"{len(self.trusted_ids)} trusted cases ({self.dataset.trusted_source}), which are its clean "
                    "subset; drop mtcl.clean_cases, or pass --trusted none to ignore the trusted cases"
                )
            trusted = set(self.trusted_ids)
            return [i for i, cid in enumerate(self.train_ids) if cid in trusted]
        return list(range(min(k, len(self.train_ids))))

    def num_clean(self) -> int:
        return len(self.clean_positions())

    def training_case(self, position: int, case: Case) -> Case:
        # A trusted case brings its trusted mask; without trusted cases the first mtcl.clean_cases train on the
        # dataset's own (clean) masks, whatever label set the run uses.
        if case.trusted or position not in self.clean_positions():
            return case
        return case.with_clean_label()

    def build_method_state(self) -> None:
        self.teacher = ema_teacher(self.network, float(self.cfg.mtcl.ema), ramp=True)

    def train_step(self, batch: Batch) -> dict[str, Any]:
        mc = self.cfg.mtcl
        x = batch["image"]
        logits = self.network(x, heads=("seg",))["seg"]
        seg = self.seg_loss(logits, seg_target(batch["target"]))
        with torch.no_grad():
            sd = float(mc.noise)
            noise = (torch.randn(x.shape, generator=self.generator) * sd).clamp(-2 * sd, 2 * sd)
            teacher_p = torch.softmax(self.teacher(x + noise.to(x.device), heads=("seg",))["seg"], 1)
        cons = torch.mean((torch.softmax(logits, 1) - teacher_p) ** 2)
        weight = float(mc.consistency) * sigmoid_rampup(self.iteration, float(mc.warmup) * self.iterations)
        loss = seg + weight * cons
        self.optimise(loss)
        self.teacher.update_parameters(self.network)
        return {"train_loss": loss.detach(), "losses/seg": seg.detach(), "losses/consistency": cons.detach()}

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        if self.iteration < float(self.cfg.mtcl.warmup) * self.iterations:
            return {"charts/target_changed": 0.0}
        mc = self.cfg.mtcl
        return cl_target_update(self, self.teacher, self.clean_positions(), bool(mc.soft))
