"""Target updates: the rules that change a method's training targets, one home each (the kit of
:mod:`svldrl.methods`; the rules' arithmetic lives in :mod:`svldrl.rules`).

A target update is a small class: its ``name`` (the value of ``rl.target_update`` that picks it), ``when`` it runs
(``start``: once, before the first step; ``epoch``: at each epoch end after the warm-up), whether it needs a
teacher network, and ``apply(trainer, teacher)``, which rewrites ``trainer.targets`` in place and returns logs.
Methods compose them (SVL-DRL by ``rl.target_update``; ``supervised_confident``, ``supervised_band``,
``tloss_band`` and MTCL each with one). A new update is one class here and one line in :data:`TARGET_UPDATES`.

- :class:`Confident` (ours, ``confident``): confident, disagreeing voxels take the model's label.
- :class:`ConfidentLearning` (MTCL's rule, ``cl``): the given masks with confident learning's flags corrected.
- :class:`Band` (ours, ``band``): the given masks moved to where the image's intensity says the organ ends, kept
  where the guard's tests fail (docs/method.md sections 12-13).
- :class:`TrustedShift` (ours, ``shift``): the given masks' systematic boundary shift, estimated against the trusted
  cases' masks, undone (docs/method.md section 14); it abstains without trusted cases or a clear shift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from svldrl.data.io import read_grid
from svldrl.engine.trainer import Trainer
from svldrl.rl.stages import stage_at
from svldrl.rules import (
    BandGuard,
    ShiftEstimate,
    band_correct_guarded,
    boundary_shift,
    cl_thresholds,
    class_confidence_sums,
    confident_flags,
    confident_learning_flags,
    estimate_shift,
    relabel,
    shift_boundary,
    shrunk_shifts,
)
from svldrl.settings import RL

SOFT_STEP = 0.8  # how far MTCL's soft correction moves a flagged voxel towards the other class


class TargetUpdate:
    """One rule that rewrites a trainer's targets; see the module docstring."""

    name: ClassVar[str] = ""
    when: ClassVar[str] = "epoch"  # "start" (once, before the first step) or "epoch" (each epoch end)
    needs_teacher: ClassVar[bool] = False

    def __init__(self, rl: RL) -> None:
        self.rl = rl

    def apply(self, trainer: Trainer, teacher: Any = None) -> dict[str, float]:
        raise NotImplementedError


class Confident(TargetUpdate):
    """Relabel every case's target where the model is confident (``p > rl.tau`` or ``p < 1 - rl.tau``) and
    disagrees (ours; docs/method.md section 6)."""

    name = "confident"

    def apply(self, trainer: Trainer, teacher: Any = None) -> dict[str, float]:
        return confident_update(trainer, float(self.rl.tau))


class ConfidentLearning(TargetUpdate):
    """MTCL's correction with the trainer's EMA teacher (SVL-DRL's ``rl.target_update=cl``)."""

    name = "cl"
    needs_teacher = True

    def apply(self, trainer: Trainer, teacher: Any = None) -> dict[str, float]:
        return cl_target_update(trainer, teacher)


class Band(TargetUpdate):
    """The band update with its guard, once before the first step (it needs no model)."""

    name = "band"
    when = "start"

    def apply(self, trainer: Trainer, teacher: Any = None) -> dict[str, float]:
        return band_target_update(trainer)


class TrustedShift(TargetUpdate):
    """The given masks' systematic boundary shift, learned from the trusted cases and undone, at each epoch end
    after the warm-up (:func:`trusted_shift_update`)."""

    name = "shift"

    def apply(self, trainer: Trainer, teacher: Any = None) -> dict[str, float]:
        return trusted_shift_update(trainer)


#: ``rl.target_update`` value -> its rule ("none": no update).
TARGET_UPDATES: dict[str, type[TargetUpdate]] = {
    c.name: c for c in (Confident, ConfidentLearning, Band, TrustedShift)
}


def target_update(rl: RL) -> TargetUpdate | None:
    """The update ``rl.target_update`` names, or None."""
    cls = TARGET_UPDATES.get(rl.target_update)
    return None if cls is None else cls(rl)


def past_warmup(trainer: Trainer) -> bool:
    """Whether the epoch's last step is past the warm-up (SVL-DRL's stage 1), when epoch-end updates start."""
    rl = trainer.cfg.rl
    return stage_at(trainer.iteration - 1, trainer.iterations, rl.warmup, rl.transition) > 1


def shift_due(trainer: Trainer, epoch: int) -> bool:
    """Whether the shift update runs at the end of ``epoch``: past the warm-up, every ``rl.shift_every`` epochs (it
    segments every training and trusted case)."""
    if trainer.measured(trainer.history):  # data.trusted_measure: its correction stays
        return False
    return past_warmup(trainer) and (epoch + 1) % int(trainer.cfg.rl.shift_every) == 0


def confident_update(trainer: Trainer, tau: float) -> dict[str, float]:
    """Relabel every case's target where the trainer's model is confident and disagrees.

    Returns:
        The share of voxels changed, as ``charts/target_changed``.
    """
    changed = total = 0
    for i, img in enumerate(trainer.images):
        p, t = trainer.predict_probs(img), trainer.targets[i]
        fg, bg = confident_flags(p, tau)
        new = relabel(t, fg & (t < 0.5), bg & (t >= 0.5))
        changed += int(np.count_nonzero(new != t))
        total += t.size
        t[...] = new  # in place: the targets may live in shared memory (rl.async_workers)
    return {"charts/target_changed": changed / max(total, 1)}


def mtcl_correct(given: np.ndarray, flags: np.ndarray, soft: bool = False) -> np.ndarray:
    """A binary training target from the given mask with flagged voxels corrected.

    Args:
        given: (...) {0, 1} given mask.
        flags: (...) bool, from :func:`~svldrl.rules.confident_learning_flags`.
        soft: move flagged voxels by ``SOFT_STEP`` towards the other class (``y + flag * (-1)^y * 0.8``)
            instead of flipping them.
    """
    g = np.asarray(given) != 0
    return relabel(given, flags & ~g, flags & g, SOFT_STEP if soft else 1.0)


def cl_target_update(
    trainer: Trainer, teacher: Any, clean: Sequence[int] = (), soft: bool = False
) -> dict[str, float]:
    """MTCL's correction pass: every noisy case's target becomes its given mask with the voxels that confident
    learning flags, from ``teacher``'s probabilities, corrected (:func:`mtcl_correct`). Redone from the given
    masks at each call, so corrections never drift. Also SVL-DRL's ``rl.target_update = cl``.

    Args:
        trainer: holds ``images``, ``given`` and the ``targets`` that are rewritten.
        teacher: the network whose probabilities are trusted (MTCL: the EMA teacher).
        clean: positions (in ``trainer.train_ids``) of the clean subset: never corrected, and the thresholds come
            from them when there are any (else from all cases, cleanlab's default).
        soft: soft instead of hard correction.

    Returns:
        ``charts/target_changed`` (share of voxels flagged) and the two class thresholds.
    """
    n = len(trainer.images)
    is_clean = set(clean)
    stats_cases = sorted(is_clean) if is_clean else range(n)
    sums, counts, cache = np.zeros(2), np.zeros(2), {}
    for i in stats_cases:
        p = trainer.predict_probs(trainer.images[i], teacher)
        s, c = class_confidence_sums(np.stack([1.0 - p, p]), trainer.given[i])
        sums, counts = sums + s, counts + c
        if i not in is_clean:  # half precision: the flagging pass below need not segment this case again
            cache[i] = p.astype(np.float16)
    t = cl_thresholds(sums, counts)
    flagged = total = 0
    for i in (i for i in range(n) if i not in is_clean):  # the clean subset is never corrected
        p = (
            cache.pop(i).astype(np.float32)
            if i in cache
            else trainer.predict_probs(trainer.images[i], teacher)
        )
        flags = confident_learning_flags(np.stack([1.0 - p, p]), trainer.given[i].astype(np.int64), t)
        # in place: the targets may live in shared memory (rl.async_workers)
        trainer.targets[i][...] = mtcl_correct(trainer.given[i], flags, soft)
        flagged += int(flags.sum())
        total += flags.size
    return {
        "charts/target_changed": flagged / max(total, 1),
        "charts/threshold_bg": float(t[0]),
        "charts/threshold_fg": float(t[1]),
    }


def band_guard(rl: RL) -> BandGuard | None:
    """The guard ``rl.band_*`` ask for; None when ``rl.band_guard`` is off."""
    if not rl.band_guard:
        return None
    return BandGuard(max_lookalike=float(rl.band_max_lookalike), min_shift=float(rl.band_min_shift))


def band_target_update(trainer: Trainer) -> dict[str, float]:
    """Set every case's target to its given mask corrected by :func:`~svldrl.rules.band_correct_guarded`: the
    band's fixed point (``rl.band_margin``, ``rl.band_passes``) at ``rl.band_width`` (or with
    ``rl.band_width_max`` at a width chosen per case), kept only where the guard's tests pass (``rl.band_guard``).

    Returns:
        The share of voxels changed as ``charts/target_changed``, the share of cases the guard left as given as
        ``charts/band_abstained``, the median over cases of :func:`~svldrl.rules.band_lookalike_share` as
        ``charts/band_lookalike_share`` and of the width used as ``charts/band_width``. A run whose cases the
        guard mostly leaves alone, or an unguarded run on surroundings that look like the organ, says so.
    """
    rl = trainer.cfg.rl
    width, margin, passes = int(rl.band_width), float(rl.band_margin), int(rl.band_passes)
    widths = list(range(width, int(rl.band_width_max) + 1)) or [width]
    guard = band_guard(rl)
    changed = total = 0
    outcomes = []
    for i, (image, given) in enumerate(zip(trainer.images, trainer.given, strict=True)):
        outcome = band_correct_guarded(image, given, widths, margin, passes, guard)
        outcomes.append(outcome)
        trainer.target_notes[trainer.train_ids[i]] = {
            "band": f"kept as given ({outcome.abstained})" if outcome.abstained else "corrected",
            "band_lookalike_share": outcome.lookalike,
            "band_width": outcome.width,
            "band_held_back": outcome.held_back,
        }
        is_fg = np.asarray(given) >= 0.5
        new = relabel(given, outcome.mask & ~is_fg, is_fg & ~outcome.mask)
        changed += int(np.count_nonzero(new != trainer.targets[i]))
        total += new.size
        trainer.targets[i][...] = new  # in place: the targets may live in shared memory (rl.async_workers)
    shares = [o.lookalike for o in outcomes]
    share = float(np.nanmedian(shares)) if not np.isnan(shares).all() else math.nan
    abstained = sum(bool(o.abstained) for o in outcomes) / max(len(outcomes), 1)
    if guard is not None and abstained > 0.5:
        trainer.reporter.info(
            f"band target update: the guard kept {abstained:.0%} of the given masks as they are (the organ does not "
            f"stand out from its surroundings there, or is too small for a band of {width}); docs/method.md "
            "section 13"
        )
    elif guard is None and share > BandGuard().max_lookalike:
        trainer.reporter.warn(
            f"band target update without its guard: {share:.0%} of the tissue around the median mask has the "
            "organ's intensity; the band may move right masks into it (docs/method.md section 13); consider "
            "rl.band_guard=true"
        )
    return {
        "charts/target_changed": changed / max(total, 1),
        "charts/band_abstained": abstained,
        "charts/band_lookalike_share": share,
        "charts/band_width": float(np.median([o.width for o in outcomes])),
    }


def case_spacing(trainer: Trainer, ids: Sequence[str]) -> list[tuple[float, ...]]:
    """The voxel size (mm) of each case of ``ids``, read from its image's header (cached on the trainer)."""
    cache = trainer.__dict__.setdefault("_spacing", {})
    cases = {c.case_id: c for c in trainer.dataset.train}
    for cid in ids:
        if cid not in cache:
            cache[cid] = read_grid(cases[cid].image, cases[cid].image_key).spacing
    return [cache[cid] for cid in ids]


def trusted_shift_update(trainer: Trainer, base: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """Estimate how far the given masks' boundaries lie from the truth and undo it, case by case.

    The trainer's model is compared with the trusted masks of its validation cases (the trusted ones, which it does
    not train on) and with the targets it trains from (``base``: the given masks, or what an earlier correction
    made of them): :func:`~svldrl.rules.estimate_shift` takes the difference, so the model's own error cancels.
    When that shift is at least ``rl.shift_min`` voxels and ``rl.shift_z`` standard errors from none, each training
    target becomes its ``base`` mask moved (:func:`~svldrl.rules.shift_boundary`) to the volume of the model's own
    mask of the case with the model's bias on the trusted cases removed: each case's own shift, measured in that
    mask's own geometry (a ragged mask loses its volume over more surface than a smooth one), pulled towards the
    cases' mean by the share of their spread that the same measurement shows on the trusted cases
    (:func:`~svldrl.rules.shrunk_shifts`; ``rl.shift_per_case=false``: the mean for every case; in the trusted
    measure, ``data.trusted_measure``, each case's own, unshrunk). Otherwise the
    ``base`` masks stay (it abstains: no trusted cases, too few, or no clear shift). Redone from ``base`` each
    time, so the corrections never drift.

    Returns:
        ``charts/shift_mm`` and ``charts/shift_se_mm`` (the model's shift difference and its standard error),
        ``charts/shift_applied`` (1 or 0), ``charts/shift_case_weight`` (how much of each case's own shift is kept)
        and ``charts/target_changed``.
    """
    rl = trainer.cfg.rl
    base = trainer.given if base is None else base
    is_trusted = set(trainer.trusted_ids)
    trusted = [cid for cid in trainer.val_ids if cid in is_trusted]
    estimate, per_case, residuals = ShiftEstimate(math.nan, math.nan, [], []), [0.0] * len(base), []
    g_spacing = case_spacing(trainer, trainer.train_ids)
    if trusted and not set(trusted) & set(trainer.train_ids):
        on_trusted, models = [], []
        for cid, sp in zip(trusted, case_spacing(trainer, trusted), strict=True):
            j = trainer.val_ids.index(cid)
            model, truth = trainer.predict_probs(trainer.val_images[j]) >= 0.5, trainer.val_labels[j] >= 0.5
            on_trusted.append(boundary_shift(model, truth, sp))
            models.append((model, truth, sp))
        bias = float(np.nanmean(on_trusted)) if np.isfinite(on_trusted).any() else 0.0
        # the same measurement where the truth is none: its spread is the measurement's own
        residuals = [boundary_shift(t, shift_boundary(m, bias, sp), sp) for m, t, sp in models]
        on_given, per_case = [], []
        for img, b, sp in zip(trainer.images, base, g_spacing, strict=True):
            model, given = trainer.predict_probs(img) >= 0.5, np.asarray(b) >= 0.5
            on_given.append(boundary_shift(model, given, sp))
            per_case.append(boundary_shift(given, shift_boundary(model, bias, sp), sp))
        estimate = estimate_shift(on_trusted, on_given)
    voxel = min(min(sp) for sp in g_spacing)
    applied = estimate.significant(float(rl.shift_z), float(rl.shift_min) * voxel)
    shifts, weight = [0.0] * len(base), math.nan
    if applied:
        side = math.copysign(1.0, estimate.shift)
        if trainer.measuring:
            # data.trusted_measure: the model never learned these masks' extent, so each case's own measurement
            # stands; the trusted cases trained meanwhile, so their residuals no longer show its noise to shrink by
            shifts = [side * max(side * v, 0.0) if math.isfinite(v) else 0.0 for v in per_case]
            weight = 1.0
        else:
            shifts, weight = shrunk_shifts(per_case, residuals if rl.shift_per_case else [], side)
    changed = total = 0
    for i, (b, sp) in enumerate(zip(base, g_spacing, strict=True)):
        is_fg = np.asarray(b) >= 0.5
        new_fg = shift_boundary(is_fg, shifts[i], sp)
        new = relabel(b, new_fg & ~is_fg, is_fg & ~new_fg)
        changed += int(np.count_nonzero(new != trainer.targets[i]))
        total += new.size
        trainer.targets[i][...] = new  # in place: the targets may live in shared memory (rl.async_workers)
        trainer.target_notes.setdefault(trainer.train_ids[i], {})["shift_mm"] = shifts[i]
    _report_shift(trainer, estimate, applied, bool(trusted))
    return {
        "charts/shift_mm": estimate.shift,
        "charts/shift_se_mm": estimate.se,
        "charts/shift_applied": float(applied),
        "charts/shift_case_weight": weight,
        "charts/target_changed": changed / max(total, 1),
    }


#: Why a shift-correcting method skips the trusted finish (``Trainer.finish_declined``).
NO_SHIFT_FOUND = (
    "the trusted shift found no clear systematic error in the given masks (its last decision kept them), so they "
    "train to the end (do no harm: on clean masks the finish on a few cases costs points)"
)


def shift_side(history: Sequence[dict[str, Any]]) -> int:
    """The side the trusted shift's last decision in ``history`` (the run's logged epochs) found the masks wrong
    on: 1 drawn too large, -1 too small, 0 where it kept them (or never decided)."""
    decisions = [r for r in history if not math.isnan(r.get("charts/shift_applied", math.nan))]
    if not decisions or decisions[-1]["charts/shift_applied"] != 1.0:
        return 0
    return 1 if decisions[-1]["charts/shift_mm"] > 0 else -1


def shift_found(history: Sequence[dict[str, Any]]) -> bool:
    """Whether the trusted shift's last decision in ``history`` was to correct the masks: the evidence, from the
    trusted cases, that the given masks are systematically wrong."""
    return shift_side(history) != 0


def _report_shift(trainer: Trainer, estimate: ShiftEstimate, applied: bool, has_trusted: bool) -> None:
    """One line to the run's log each time the decision changes (and the first time)."""
    state = (applied, has_trusted)
    if trainer.__dict__.get("_shift_state") == state:
        return
    trainer.__dict__["_shift_state"] = state
    if not has_trusted:
        trainer.reporter.warn(
            "shift target update: no trusted validation cases (svldrl train --trusted, labelsTr_trusted/), so "
            "nothing to learn the masks' systematic error from; training on the given masks"
        )
        return
    what = "undone" if applied else "kept as given (not clearly different from none)"
    trainer.reporter.info(
        f"shift target update: the given masks' boundaries lie {estimate.shift:+.2f} mm (standard error "
        f"{estimate.se:.2f} mm) from the trusted cases' on average (n = {len(estimate.trusted)} trusted, "
        f"{len(estimate.given)} given); {what}"
    )
