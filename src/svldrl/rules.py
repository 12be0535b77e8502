"""Label rules with one home: overlap of two masks, confident disagreement, confident learning, relabelling.

Every part of svldrl that compares or corrects masks uses these functions (numpy, no training, no files):

- evaluation, noise reports, the audit and the benchmarks: :func:`dice_from_counts` / :func:`overlap` (Dice and
  IoU from voxel counts, with the empty-mask convention stated by each caller);
- ADELE, the confident target update and the audit's threshold detector: :func:`confident_flags`;
- MTCL and the audit's ``cl`` detector: confident learning (:func:`class_confidence_sums`,
  :func:`cl_thresholds`, :func:`confident_learning_flags`);
- the band target update (``rl.target_update=band``, ``supervised_band``, ``svldrl targets``): :func:`band_flags`,
  :func:`band_correct`, :func:`band_lookalike_share` and the guard that keeps it where its assumptions hold,
  :func:`band_correct_guarded`;
- the trusted-shift target update (``rl.target_update=shift``): the systematic boundary shift of the given masks,
  estimated against trusted masks (:func:`boundary_shift`, :func:`estimate_shift`), and undone
  (:func:`shift_boundary`);
- the trusted threshold (``data.trusted_threshold``): the foreground probability above which a model's voxels are
  foreground, chosen on trusted masks where it clearly beats 0.5 (:func:`dice_at_thresholds`,
  :func:`choose_threshold`);
- all of them, to change a target or a mask: :func:`relabel`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# ----------------------------------------------------------------------------------------------------------
# Overlap


def counts(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) voxel counts of two masks of one shape (non-zero is foreground)."""
    p = np.asarray(pred).astype(bool, copy=False)
    r = np.asarray(ref).astype(bool, copy=False)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {r.shape}")
    tp = int(np.count_nonzero(p & r))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp


def dice_from_counts(tp: int, fp: int, fn: int, empty: float = math.nan) -> tuple[float, float]:
    """Dice ``2TP / (2TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)``; ``(empty, empty)`` when both masks are
    empty.

    The empty convention is the caller's to state: NaN for evaluation (nnU-Net: a class absent from both
    prediction and reference is not scored), 1.0 for noise reports and the audit (an empty mask compared
    with itself is perfectly right).
    """
    denom = tp + fp + fn
    if denom == 0:
        return empty, empty
    return 2 * tp / (2 * tp + fp + fn), tp / denom


def overlap(pred: np.ndarray, ref: np.ndarray, empty: float = math.nan) -> tuple[float, float]:
    """(Dice, IoU) of two masks, see :func:`dice_from_counts`."""
    return dice_from_counts(*counts(pred, ref), empty=empty)


# ----------------------------------------------------------------------------------------------------------
# Which voxels to change


def confident_flags(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxels the model is confident about: (``p > T``: foreground, ``p < 1 - T``: background), ``T >= 0.5``."""
    p = np.asarray(probs)
    return p > threshold, p < 1.0 - threshold


def class_confidence_sums(probs: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class ``j``: the sum of ``p_j`` over voxels whose given label is ``j``, and their count (confident
    learning's statistics, kept as sums so that they can be pooled case by case in bounded memory).

    Args:
        probs: (C, ...) class probabilities.
        given: (...) integer given labels.
    """
    c = probs.shape[0]
    flat_p, flat_y = probs.reshape(c, -1), given.reshape(-1)
    n = np.bincount(flat_y, minlength=c)[:c].astype(np.float64)
    sums = np.array([flat_p[j, flat_y == j].sum(dtype=np.float64) for j in range(c)])
    return sums, n


def cl_thresholds(sums: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Confident learning's per-class thresholds ``t_j = mean{p_j(x) : y(x) = j}`` from pooled sums and counts;
    ``inf`` for a class without voxels (it can then never be confident)."""
    return np.where(n > 0, sums / np.maximum(n, 1), np.inf)


def confident_learning_flags(
    probs: np.ndarray, given: np.ndarray, thresholds: np.ndarray | None = None
) -> np.ndarray:
    """Voxels flagged as label errors by confident learning (Northcutt et al., JAIR 2021; cleanlab's
    ``find_label_issues``): the off-diagonal of the confident joint.

    A voxel with given label ``y`` is flagged when ``p_y < t_y`` (not confident in its own label) while some
    class ``k != y`` has ``p_k >= t_k`` (confidently another class). Unlike cleanlab, a voxel confident in
    both its given class and another one is not flagged: the given label gets the benefit of the doubt.

    Args:
        probs: (C, ...) class probabilities.
        given: (...) integer given labels.
        thresholds: (C,) per-class thresholds; None: those of these very voxels.

    Returns:
        A bool mask of ``given``'s shape.
    """
    t = cl_thresholds(*class_confidence_sums(probs, given)) if thresholds is None else np.asarray(thresholds)
    confident = probs >= t.astype(np.float64).reshape((-1,) + (1,) * given.ndim)
    own_confident = np.take_along_axis(confident, given[None].astype(np.int64), axis=0)[0]
    # When the own class is not confident, any confident class is another one.
    return ~own_confident & confident.any(axis=0)


def band_flags(
    image: np.ndarray, given: np.ndarray, width: int, margin: float = 0.0, connected: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Voxels near the given boundary whose intensity says the mask is wrong there (ours, for one-sided noise).

    The given mask's boundary is trusted to within ``width`` voxels: its core (mask voxels more than ``width``
    from the background) is foreground and the ring beyond the band (background voxels ``width`` to
    ``2 width`` from the mask) background; Euclidean distances. One Gaussian per side is fitted to the image
    there, and every voxel of the band (within ``width`` of the boundary) takes the label of the likelier
    one: a mask dilated or eroded by up to ``width`` voxels is moved back to where the organ's intensity
    ends. Outside the band nothing changes, so structures of the organ's intensity elsewhere (a look-alike
    beyond the band) cannot be annexed. No library offers this band-restricted two-class fit (scikit-image's
    Chan-Vese works on the whole image, which other structures mislead: section 9's region reward).

    Args:
        image: the normalised image.
        given: the given mask (non-zero or >= 0.5 is foreground).
        width: half-width of the band in voxels.
        margin: the log-likelihood ratio a voxel needs to change label (0: the likelier side wins; ln 9: the
            other side must be 9x likelier). Partial-volume voxels at a correct boundary lie between the two
            sides and keep their label.
        connected: keep only flagged voxels connected (6-neighbourhood) to the side they join, so no islands or
            holes appear in the band (needed to repeat the update: :func:`band_correct`).

    Returns:
        (``to_fg``, ``to_bg``): background voxels of the band to relabel foreground, and the reverse; both
        empty when the core or the ring has fewer than 8 voxels (too small to fit).
    """
    m = np.asarray(given) >= 0.5
    none = np.zeros_like(m)
    if not m.any() or m.all():
        return none, none
    core, band, ring = _band_regions(m, width)
    if np.count_nonzero(core) < 8 or np.count_nonzero(ring) < 8:
        return none, none
    x = np.asarray(image, dtype=np.float64)
    # One Gaussian per side, each with its own spread: an organ is one tissue (narrow), what surrounds it is
    # many (wide, darker and brighter). A nearest-median rule, the edge of a blurred step, relabelled 9 % of
    # clean phantom masks (it assumes one background tissue); these Gaussians 3 %.
    llr = _log_likelihood(x, core) - _log_likelihood(x, ring)
    to_fg, to_bg = band & (llr > margin) & ~m, band & (llr < -margin) & m
    if connected:
        to_fg, to_bg = _touching(to_fg, m), _touching(to_bg, ~m)
    return to_fg, to_bg


def band_lookalike_share(image: np.ndarray, given: np.ndarray, width: int) -> float:
    """Share of the surroundings that look like the organ: ring voxels (background ``width`` to ``2 width`` from
    the mask, as in :func:`band_flags`) within 2 robust standard deviations (1.4826 x the median absolute
    deviation) of the core's median intensity. NaN when the core or the ring has fewer than 8 voxels.

    Median and MAD rather than mean and std, so that a core still holding some surroundings (a mask drawn a few
    voxels too large) keeps the organ's statistics; the guard of :func:`band_correct_guarded` reads the given
    mask with it. Measured at width 4 (benchmarks/band_safety.py): at most 0.05 on every easy phantom mask, clean
    or noisy, at least 0.078 on every standard phantom mask (the look-alike touches the organ), 0.015-0.5 on
    brain structures (Colin27 + AAL) and 0.04-0.18 on the lungs of a chest CT (vessels widen the core).
    """
    core, _, ring = _band_regions(np.asarray(given) >= 0.5, width)
    if np.count_nonzero(core) < 8 or np.count_nonzero(ring) < 8:
        return math.nan
    x = np.asarray(image, dtype=np.float64)
    return float(np.mean(_organ_like(x[ring], x[core])))


def _organ_like(values: np.ndarray, core: np.ndarray) -> np.ndarray:
    """``values`` within 2 robust standard deviations (1.4826 MAD) of the median of the ``core`` intensities."""
    median = float(np.median(core))
    spread = 1.4826 * float(np.median(np.abs(core - median))) + 1e-6
    return np.abs(values - median) <= 2 * spread


def _band_regions(m: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(core, band, ring) of a boolean mask: mask voxels more than ``width`` from the background, voxels within
    ``width`` of the boundary on either side, background voxels ``width`` to ``2 width`` from the mask."""
    # Euclidean distances: a 6-connected erosion by w leaves voxels ~w / sqrt(3) from the surface along the
    # diagonals, which would put the band's errors into the trusted core
    inside = ndimage.distance_transform_edt(m)  # to the nearest background voxel
    outside = ndimage.distance_transform_edt(~m)  # to the nearest mask voxel
    core = inside > width
    band = (m | (outside <= width)) & ~core
    ring = ~m & (outside > width) & (outside <= 2 * width)
    return core, band, ring


def _touching(flags: np.ndarray, side: np.ndarray) -> np.ndarray:
    """The connected components of ``flags`` that touch ``side`` (6-neighbourhood)."""
    components, count = ndimage.label(flags)
    if count == 0:
        return flags
    hit = np.unique(components[ndimage.binary_dilation(side) & flags])
    return np.isin(components, hit[hit > 0])


def band_correct(
    image: np.ndarray,
    given: np.ndarray,
    width: int,
    margin: float = 0.0,
    passes: int = 1,
    connected: bool | None = None,
) -> np.ndarray:
    """The given mask with :func:`band_flags` applied, repeated on its own result until nothing changes.

    One pass moves a boundary by at most ``width`` voxels, and a model fitted to a mask that is still far off
    is blurred by it (its core holds background, or its ring organ), so a mask drawn wider than the band needs
    several. More than one pass keeps only connected changes, and wants ``margin`` > 0: otherwise every pass
    hands the next layer of partial-volume voxels to the surroundings and the mask erodes (the 48 clean
    phantom_converged training masks, label Dice after one and after ten passes: width 2, no margin, not
    connected 0.968 -> 0.856; width 4, margin ln 9, not connected 0.980 -> 0.941; connected, at the fixed
    point, 0.976).

    Returns:
        Boolean mask; after ``passes`` passes at most. ``connected`` (default: ``passes > 1``) is
        :func:`band_flags`' own; ``False`` with several passes only to measure the erosion above.
    """
    mask = np.asarray(given) >= 0.5
    connected = passes > 1 if connected is None else connected
    for _ in range(passes):
        to_fg, to_bg = band_flags(image, mask, width, margin, connected=connected)
        if not (to_fg.any() or to_bg.any()):
            break
        mask = (mask | to_fg) & ~to_bg
    return mask


def band_correct_select(
    image: np.ndarray, given: np.ndarray, widths: Sequence[int], margin: float = 0.0, passes: int = 1
) -> tuple[np.ndarray, int]:
    """:func:`band_correct` at the width, of ``widths``, whose result the image supports best (ours).

    How far a mask is off differs from case to case, and the width that corrects it best with it: too narrow
    and the core still holds surroundings (a dilation wider than the band stalls), too wide and the ring
    reaches other structures or the core shrinks into the organ (a correct mask erodes). Each width's corrected
    mask is scored by the log-likelihood of the image near the given boundary (within twice the widest band,
    on both sides) under one Gaussian inside the corrected mask and one outside, fitted there: for fitted
    Gaussians it is -sum_k n_k log(std_k) up to a constant, so the mask whose two sides are the most uniform
    wins (Otsu's criterion, restricted to the boundary's neighbourhood). It reads only the image and the given
    mask. On phantom_converged's training masks it scores at least as well as the best single width chosen
    with the clean masks (benchmarks/results/band_rule).

    Returns:
        (corrected mask, chosen width); one width is simply :func:`band_correct`'s; the smallest width wins
        ties, and its result is returned when no width leaves 8 voxels on both sides of the neighbourhood.
    """
    m = np.asarray(given) >= 0.5
    widths = sorted(widths)
    smallest = (band_correct(image, m, widths[0], margin, passes), widths[0])
    if len(widths) == 1:
        return smallest
    reach = 2 * widths[-1]
    near = np.where(m, ndimage.distance_transform_edt(m), ndimage.distance_transform_edt(~m)) <= reach
    x = np.asarray(image, dtype=np.float64)[near]
    best, best_score = smallest, -math.inf
    for width in widths:
        mask = smallest[0] if width == widths[0] else band_correct(image, m, width, margin, passes)
        inside = mask[near]
        sides = (x[inside], x[~inside])
        if min(v.size for v in sides) < 8:
            continue
        score = -sum(v.size * math.log(v.std() + 1e-6) for v in sides)
        if score > best_score:
            best, best_score = (mask, width), score
    return best


@dataclass(frozen=True)
class BandGuard:
    """The band update's assumption tests (ours, docs/method.md section 13), chosen on development data only
    (benchmarks/band_safety.py: phantom draws of their own seed, the left hemisphere's brain structures).

    Attributes:
        max_lookalike: per case, the largest :func:`band_lookalike_share` of the given mask at which the update
            runs (the organ stands out from everything around it); above it, or where the core or the ring is
            too small to fit, the case keeps its given mask.
        min_shift: per stretch of boundary (a cube of side ``4 width + 1`` around each changed voxel), the
            smallest net change in voxels per given boundary voxel that is applied: a correct boundary's
            partial-volume voxels move less than one layer, a mask drawn too large or too small moves more.
        max_share: per stretch, the largest share of ring voxels the intensity models call organ, or of core
            voxels they call surroundings (one intensity inside, another outside, there).
        min_voxels: per stretch, the fewest core and ring voxels that fit the models there.
    """

    max_lookalike: float = 0.06
    min_shift: float = 0.5
    max_share: float = 0.15
    min_voxels: int = 20


@dataclass
class BandOutcome:
    """What :func:`band_correct_guarded` did to one case."""

    mask: np.ndarray
    width: int
    lookalike: float  # band_lookalike_share of the given mask (NaN: too few voxels to tell)
    abstained: str = ""  # "" (corrected), "lookalike" or "too small": the case kept its given mask
    held_back: int = 0  # voxels the unguarded update would change that the stretch tests kept as given


def band_correct_guarded(
    image: np.ndarray,
    given: np.ndarray,
    widths: Sequence[int],
    margin: float,
    passes: int,
    guard: BandGuard | None = BandGuard(),
) -> BandOutcome:
    """:func:`band_correct_select` where its assumptions hold, the given mask elsewhere (ours).

    The band update assumes one intensity inside the organ, another outside, no tissue of the organ's intensity
    across the boundary and enough voxels to fit; on real organs these often fail (a tumour against the chest
    wall, deep grey matter against grey matter, a kidney barely darker than the liver), and there it moves right
    masks into the neighbour. ``guard`` tests them, per case on the given mask and per stretch of boundary on
    the corrected one (:class:`BandGuard`), and keeps the given mask wherever a test fails. ``None``: the
    unguarded update (the results of docs/method.md section 12 were made so).
    """
    m = np.asarray(given) >= 0.5
    widths = sorted(widths)
    share = band_lookalike_share(image, m, widths[0])
    if guard is not None and not share <= guard.max_lookalike:
        return BandOutcome(m, widths[0], share, "too small" if math.isnan(share) else "lookalike")
    corrected, width = band_correct_select(image, m, widths, margin, passes)
    if guard is None:
        return BandOutcome(corrected, width, share)
    kept = _stretches_supported(image, m, corrected, width, guard)
    return BandOutcome(kept, width, share, held_back=int(np.count_nonzero(kept != corrected)))


def _stretches_supported(
    image: np.ndarray, given: np.ndarray, corrected: np.ndarray, width: int, guard: BandGuard
) -> np.ndarray:
    """``corrected`` where the stretch of boundary around a changed voxel passes ``guard``'s tests, ``given``
    elsewhere; only changes connected to the side they join are kept, as in :func:`band_flags`."""
    changed = corrected != given
    if not changed.any():
        return given.copy()
    side = 4 * width + 1  # the band and the ring on either side of a boundary voxel

    def count(a: np.ndarray) -> np.ndarray:  # voxels of ``a`` in the cube around each voxel
        return ndimage.uniform_filter(a.astype(np.float32), size=side, mode="constant") * side**3

    core, _, ring = _band_regions(corrected, width)
    given_core, _, given_ring = _band_regions(given, width)
    if min(np.count_nonzero(r) for r in (core, ring, given_core, given_ring)) < 8:
        return given.copy()
    x = np.asarray(image, dtype=np.float64)
    llr = _log_likelihood(x, core) - _log_likelihood(x, ring)
    n_core, n_ring = count(core), count(ring)
    fit = (n_core >= guard.min_voxels) & (n_ring >= guard.min_voxels)
    organ_outside = count(ring & (llr > 0)) / np.maximum(n_ring, 1)
    surroundings_inside = count(core & (llr < 0)) / np.maximum(n_core, 1)
    # the given mask's surroundings, with the robust organ model of the case test: a structure of the organ's
    # intensity that the corrected mask has swallowed whole no longer shows in its own ring
    given_organ_outside = np.zeros(x.shape, bool)
    given_organ_outside[given_ring] = _organ_like(x[given_ring], x[given_core])
    annexing = count(given_organ_outside) / np.maximum(count(given_ring), 1)
    boundary = given & ~ndimage.binary_erosion(given)
    shift = np.abs(count(corrected) - count(given)) / np.maximum(count(boundary), 1)
    ok = (
        fit
        & (organ_outside <= guard.max_share)
        & (surroundings_inside <= guard.max_share)
        & (annexing <= guard.max_share)
        & (shift >= guard.min_shift)
    )
    to_fg, to_bg = _touching(changed & ok & corrected, given), _touching(changed & ok & given, ~given)
    return (given | to_fg) & ~to_bg


def _log_likelihood(x: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Log-density, up to a constant, of every voxel under one Gaussian fitted to ``x[region]``."""
    mean, std = x[region].mean(), x[region].std() + 1e-6
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std)


# ----------------------------------------------------------------------------------------------------------
# A systematic boundary shift (masks drawn too large or too small), measured against trusted masks


def _signed_distance(m: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Each voxel's signed distance (mm) to a binary mask's boundary, negative inside, such that the mask moved
    ``s`` mm inwards is ``{distance < -s}`` (:func:`shift_boundary`)."""
    # distances run between voxel centres; a quarter voxel of slack undoes a dilation best (tests/test_shift.py:
    # a cube's k layers exactly, a ball's radius to 0.97-0.99 Dice, where half a voxel gives 0.94-0.96)
    slack = 0.25 * float(min(spacing))
    inside = ndimage.distance_transform_edt(m, sampling=spacing)
    outside = ndimage.distance_transform_edt(~m, sampling=spacing)
    return np.where(m, slack - inside, outside - slack)


def boundary_shift(mask: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """How far (mm) ``mask``'s boundary lies outside ``ref``'s (positive: ``mask`` is the larger): the shift that,
    undone by :func:`shift_boundary`, gives ``mask`` the volume of ``ref``. ``ref`` dilated by k mm scores about k,
    eroded, -k; measured with the operator that corrects, so that an estimate undoes what it measured. NaN when
    either mask is empty or fills the volume."""
    m, r = np.asarray(mask) != 0, np.asarray(ref) != 0
    n = int(np.count_nonzero(r))
    if not m.any() or m.all() or n == 0 or n == r.size:
        return math.nan
    d = np.partition(_signed_distance(m, spacing).ravel(), (n - 1, n))
    return float(-(d[n - 1] + d[n]) / 2)  # between the n-th and (n+1)-th voxel: n voxels closer than -shift


@dataclass
class ShiftEstimate:
    """The given masks' systematic boundary shift (mm, positive: drawn too large), with its standard error and
    the evidence: a model's shift against the trusted masks (``trusted``, one value per trusted case) minus its
    shift against the given masks it trained on (``given``, one per training case; NaN where a mask is empty)."""

    shift: float
    se: float
    trusted: list[float]
    given: list[float]

    def significant(self, z: float, minimum: float) -> bool:
        """Whether the shift is at least ``minimum`` mm and ``z`` standard errors away from none."""
        return math.isfinite(self.shift) and abs(self.shift) >= minimum and abs(self.shift) > z * self.se


def estimate_shift(trusted: Sequence[float], given: Sequence[float]) -> ShiftEstimate:
    """The given masks' systematic shift from a model's shifts against trusted and given masks.

    A model trained on masks drawn k mm too large draws its own boundaries about k mm outside the truth, plus an
    error of its own e (under-training, smoothing) that it shows on every case alike: against trusted masks it
    is off by k + e, against the masks it trained on by e. The difference is k, whatever e. The standard error
    combines both means' (NaN below two values on either side).
    """
    kept = list(map(float, trusted)), list(map(float, given))  # one per case, NaN where a mask was empty
    t, g = (np.asarray([v for v in values if math.isfinite(v)]) for values in kept)
    if len(t) == 0 or len(g) == 0:
        return ShiftEstimate(math.nan, math.nan, *kept)
    se = math.sqrt(t.var(ddof=1) / len(t) + g.var(ddof=1) / len(g)) if len(t) > 1 and len(g) > 1 else math.nan
    return ShiftEstimate(float(t.mean() - g.mean()), se, *kept)


def shrunk_shifts(
    per_case: Sequence[float], residuals: Sequence[float], side: float
) -> tuple[list[float], float]:
    """Each case's shift, pulled towards their mean by the share of their spread that is measurement noise, and
    the weight its own value keeps (empirical Bayes: the spread over cases minus the noise's is the cases' true
    spread, tau^2; the weight is tau^2 / (tau^2 + noise)). ``residuals`` are the same measurement where the truth is
    none (the trusted cases), so their variance is the noise's. A shift on the other ``side`` of none than the
    estimate's becomes none. NaN values (empty masks) become none."""
    values = np.asarray(per_case, dtype=np.float64)
    finite = np.isfinite(values)
    res = np.asarray([r for r in residuals if math.isfinite(r)], dtype=np.float64)
    if finite.sum() < 2 or len(res) < 2:
        weight, mean = 0.0, float(np.nanmean(values)) if finite.any() else 0.0
    else:
        mean, noise = float(values[finite].mean()), float(res.var(ddof=1))
        spread = max(float(values[finite].var(ddof=1)) - noise, 0.0)
        weight = spread / (spread + noise) if spread + noise > 0 else 0.0
    out = [side * max(side * (mean + weight * (v - mean)), 0.0) if np.isfinite(v) else 0.0 for v in values]
    return out, weight


def shift_boundary(mask: np.ndarray, shift: float, spacing: Sequence[float]) -> np.ndarray:
    """``mask`` with its boundary moved ``shift`` mm inwards (positive: shrink; negative: grow), by the Euclidean
    distance to the other side in mm."""
    m = np.asarray(mask) != 0
    if shift == 0 or not m.any() or m.all():
        return m.copy()
    return _signed_distance(m, spacing) < -shift


# ----------------------------------------------------------------------------------------------------------
# Changing them


def relabel(target: np.ndarray, to_fg: np.ndarray, to_bg: np.ndarray, step: float = 1.0) -> np.ndarray:
    """A new float32 target with the ``to_fg`` voxels moved ``step`` towards foreground and the ``to_bg`` ones
    towards background, clipped to [0, 1]; every other voxel keeps its value.

    ``step`` 1 sets them (a hard correction: ADELE, MTCL, the confident target update, the audit's corrected
    masks); MTCL's soft correction moves a flagged voxel 0.8 of the way.
    """
    new = np.array(target, dtype=np.float32, copy=True)
    new[to_bg] = np.clip(new[to_bg] - np.float32(step), 0.0, 1.0)
    new[to_fg] = np.clip(new[to_fg] + np.float32(step), 0.0, 1.0)
    return new


# ----------------------------------------------------------------------------------------------------------
# The foreground threshold, chosen on trusted masks (ours, docs/method.md section 17)

#: The foreground probabilities a threshold is chosen from: logit offsets -6..6 in steps of 0.5 (p 0.0025..0.9975),
#: 0.5 (offset 0, the argmax) among them. A model trained on masks drawn too large puts its 0.5 outside the organ;
#: only a wide range of offsets reaches back (on the development data the best reached 0.99 and 0.03).
THRESHOLDS = tuple(1.0 / (1.0 + math.exp(-k / 2.0)) for k in range(-12, 13))
#: The smallest mean gain (Dice, 0-1) on the trusted cases a threshold other than 0.5 must show (and more than
#: ``z`` standard errors of it): the best of 25 thresholds on a few cases always shows some gain by chance.
MIN_THRESHOLD_GAIN = 0.01


def dice_at_thresholds(prob: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Dice of ``prob > t`` against ``ref`` at each of :data:`THRESHOLDS` (NaN where both are empty)."""
    r = np.asarray(ref) != 0
    p = np.asarray(prob, dtype=np.float32)
    return np.asarray([overlap(p > t, r)[0] for t in THRESHOLDS])


@dataclass(frozen=True)
class ThresholdChoice:
    """What :func:`choose_threshold` decided, and the evidence (Dice 0-1, means over the trusted cases)."""

    threshold: float  # the threshold predictions use: ``best`` where adopted, else 0.5
    best: float  # the Dice-best threshold on the trusted cases
    dice_best: float
    dice_half: float  # at 0.5
    gain_se: float  # standard error of the paired gain, best against 0.5
    n: int  # trusted cases scored
    adopted: bool


def choose_threshold(
    dice: np.ndarray, z: float = 2.0, min_gain: float = MIN_THRESHOLD_GAIN
) -> ThresholdChoice:
    """The threshold of :data:`THRESHOLDS` with the best mean Dice over the cases (rows of ``dice``, one column
    per threshold), adopted only where its paired gain over 0.5 is at least ``min_gain`` and more than ``z``
    standard errors; else 0.5 (the model's own boundary stays: do no harm). Cases empty in both (NaN) are left
    out; fewer than two cases abstain."""
    table = np.asarray(dice, dtype=np.float64)
    table = table[np.isfinite(table).all(axis=1)] if table.size else np.zeros((0, len(THRESHOLDS)))
    half = THRESHOLDS.index(0.5)
    if len(table) < 2:
        d = float(table[:, half].mean()) if len(table) else math.nan
        return ThresholdChoice(0.5, 0.5, d, d, math.nan, len(table), False)
    k = int(np.argmax(table.mean(axis=0)))
    gain = table[:, k] - table[:, half]
    se = float(gain.std(ddof=1) / math.sqrt(len(gain)))
    adopted = bool(gain.mean() >= min_gain and gain.mean() > z * se)
    return ThresholdChoice(
        THRESHOLDS[k] if adopted else 0.5,
        THRESHOLDS[k],
        float(table[:, k].mean()),
        float(table[:, half].mean()),
        se,
        len(table),
        adopted,
    )
