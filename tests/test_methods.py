"""The baseline methods: each distinctive rule against a hand computation, and a short training per method."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from svldrl import config as C
from svldrl.data.dataset import load_dataset
from svldrl.engine.checkpoint import load_checkpoint
from svldrl.methods import get_method
from svldrl.methods.adele import adele_correct, iou_curve_flattened
from svldrl.methods.coteaching import coteaching_losses, forget_rate_at, small_loss_mask
from svldrl.methods.kit.losses import t_loss
from svldrl.methods.kit.targets import mtcl_correct
from svldrl.rules import band_flags, cl_thresholds, class_confidence_sums, confident_learning_flags, overlap
from svldrl.runs import train
from svldrl.settings import Config
from tests.conftest import TINY, kill_at_second_validation

# ------------------------------------------------------------------ coteaching


def test_small_loss_mask_keeps_exactly_the_lowest_losses() -> None:
    loss = torch.tensor([[[0.9, 0.1, 0.5], [0.3, 0.7, 0.2]], [[0.8, 0.05, 0.6], [0.4, 1.0, 0.35]]])
    mask = small_loss_mask(loss, keep_fraction=0.5)  # 12 voxels -> the 6 smallest
    assert mask.shape == loss.shape and mask.dtype == torch.bool
    assert sorted(loss[mask].tolist()) == pytest.approx([0.05, 0.1, 0.2, 0.3, 0.35, 0.4])
    assert small_loss_mask(loss, 1.0).all() and not small_loss_mask(loss, 0.0).any()
    assert int(small_loss_mask(loss, 0.25).sum()) == 3


def test_forget_rate_ramps_linearly_then_stays() -> None:
    # final 0.2 over the first 30% of 1000 steps
    assert forget_rate_at(0, 1000, 0.2, 0.3) == 0.0
    assert forget_rate_at(150, 1000, 0.2, 0.3) == pytest.approx(0.1)
    assert forget_rate_at(300, 1000, 0.2, 0.3) == pytest.approx(0.2)
    assert forget_rate_at(900, 1000, 0.2, 0.3) == pytest.approx(0.2)
    assert forget_rate_at(0, 1000, 0.2, 0.0) == pytest.approx(0.2)  # no ramp: the final rate at once


def test_coteaching_trains_each_network_on_its_peers_selection() -> None:
    target = torch.tensor([[1.0, 1.0, 1.0, 1.0]]).reshape(1, 1, 4)
    target = torch.cat([1 - target, target], 1)  # all foreground
    # network 1 is right on voxels 0, 1 and wrong on 2, 3; network 2 the other way round
    logits1 = torch.tensor([[-3.0, -3.0, 3.0, 3.0], [3.0, 3.0, -3.0, -3.0]])[None].requires_grad_()
    logits2 = torch.tensor([[3.0, 3.0, -3.0, -3.0], [-3.0, -3.0, 3.0, 3.0]])[None].requires_grad_()
    loss1, loss2, keep1, keep2 = coteaching_losses(logits1, logits2, target, 0.5, dice_w=0.0, ce_w=1.0)
    assert keep1.reshape(-1).tolist() == [True, True, False, False]
    assert keep2.reshape(-1).tolist() == [False, False, True, True]
    # network 1 learns from the voxels network 2 kept, where network 1 itself is wrong: a large loss
    ce_wrong = float(torch.nn.functional.softplus(torch.tensor(6.0)))  # -log sigmoid(-6)
    assert float(loss1.detach()) == pytest.approx(ce_wrong, rel=1e-5)
    assert float(loss2.detach()) == pytest.approx(ce_wrong, rel=1e-5)
    loss1.backward()
    assert logits1.grad[..., :2].abs().sum() == 0 and logits1.grad[..., 2:].abs().sum() > 0


# ------------------------------------------------------------------ adele


def test_adele_flags_a_flattened_iou_curve_not_a_rising_one() -> None:
    t = np.arange(1, 11)
    saturating = 0.9 * (1 - np.exp(-t / 2.0))  # fitted slope ratio exp(-(n-1)/2) < 0.1 from epoch 6
    assert [iou_curve_flattened(saturating[:n]) for n in range(3, 11)] == [False] * 3 + [True] * 5
    assert not iou_curve_flattened([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])  # still rising linearly
    assert not iou_curve_flattened([0.5, 0.5])  # too few epochs to fit
    assert not iou_curve_flattened([0.0, 0.0, 0.0, 0.0])  # a class not learned yet is not "flat"
    assert iou_curve_flattened([0.95, 0.95, 0.95])  # learned from the first epoch on
    assert iou_curve_flattened([*saturating[:3], np.nan, *saturating[4:7]])  # an epoch without IoU is skipped


def test_adele_correct_replaces_only_confident_voxels() -> None:
    target = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=np.float32)
    probs = np.array([0.9, 0.6, 0.1, 0.5, 0.2, 0.95], dtype=np.float32)
    assert adele_correct(target, probs, 0.7).tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    # only the foreground curve has flattened: confident background voxels keep their label
    assert adele_correct(target, probs, 0.7, classes=(False, True)).tolist() == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert adele_correct(target, probs, 0.7, classes=(False, False)).tolist() == target.tolist()


def test_adele_trainer_corrects_the_flattened_class_at_epoch_end(dataset: Path, tmp_path: Path) -> None:
    trainer = get_method("adele")(_cfg("adele"), load_dataset(dataset), tmp_path / "run")
    before = [t.copy() for t in trainer.targets]

    def fake_probs(image: np.ndarray) -> np.ndarray:  # confident foreground in the first half along x,
        p = np.full(image.shape, 0.5, dtype=np.float32)  # confident background in the last quarter
        n = image.shape[0]
        p[: n // 2], p[3 * n // 4 :] = 0.95, 0.05
        return p

    trainer.predict_probs = fake_probs
    # IoU still rising in both classes: nothing is corrected
    trainer.iou_history = [[0.1, 0.1], [0.2, 0.2]]
    trainer._inter, trainer._union = np.array([3.0, 3.0]), np.array([10.0, 10.0])
    logs = trainer.on_epoch_end(2)
    assert trainer.correcting == [False, False] and logs["charts/target_changed"] == 0.0
    assert all(np.array_equal(a, b) for a, b in zip(before, trainer.targets, strict=True))
    # the foreground curve has flattened, the background one still rises
    trainer.iou_history = [[0.1, 0.8], [0.2, 0.85], [0.3, 0.86], [0.4, 0.86]]
    trainer._inter, trainer._union = np.array([5.0, 8.6]), np.array([10.0, 10.0])
    trainer.on_epoch_end(4)
    assert trainer.correcting == [False, True]
    for old, new in zip(before, trainer.targets, strict=True):
        n = old.shape[0]
        assert (new[: n // 2] == 1).all()  # confident foreground took the model's label
        np.testing.assert_array_equal(new[n // 2 :], old[n // 2 :])  # the rest, background included, kept


def test_the_whole_volume_training_pass_is_one_forward_of_the_whole_volume(
    dataset: Path, tmp_path: Path
) -> None:
    """``infer.train_pass=whole``: one window per case (padded to the divisor); ``sliding``: several."""
    calls: dict[str, list[tuple[int, ...]]] = {}
    image = np.random.default_rng(0).normal(size=(40, 48, 40)).astype(np.float32)  # > the 32^3 patch
    probs = {}
    for mode in ("sliding", "whole"):
        trainer = get_method("adele")(
            _cfg("adele", f"infer.train_pass={mode}"), load_dataset(dataset), tmp_path / mode
        )
        seen = calls.setdefault(mode, [])
        trainer.network.register_forward_hook(
            lambda m, args, out, seen=seen: seen.append(tuple(args[0].shape))
        )
        probs[mode] = trainer.predict_probs(image)
        assert probs[mode].shape == image.shape and 0 <= probs[mode].min() and probs[mode].max() <= 1
    assert calls["whole"] == [(1, 1, 40, 48, 40)] and len(calls["sliding"]) == 8  # 2 x 2 x 2 windows of 32^3
    # (40, 48, 40) is a multiple of the divisor 8: nothing is padded, so it is the network on the volume
    net = trainer.network.eval()
    with torch.no_grad(), trainer._autocast():  # the pass runs under train.amp, as the steps do
        direct = torch.softmax(net(torch.from_numpy(image)[None, None], heads=("seg",))["seg"].float(), 1)
    np.testing.assert_allclose(probs["whole"], direct[0, 1].numpy(), atol=1e-5)
    assert not np.allclose(probs["sliding"], probs["whole"], atol=1e-3)  # the window borders differ


@pytest.mark.parametrize("amp", [True, False])
def test_the_training_pass_runs_in_bf16_under_train_amp(dataset: Path, tmp_path: Path, amp: bool) -> None:
    """ADELE's and MTCL's pass over the training cases is part of training: bf16 under ``train.amp``, float32
    probabilities out either way, within bf16's rounding of the float32 pass."""
    trainer = get_method("adele")(_cfg("adele", f"train.amp={amp}"), load_dataset(dataset), tmp_path / "run")
    dtypes: list[torch.dtype] = []
    trainer.network.register_forward_hook(lambda m, args, out: dtypes.append(out["seg"].dtype))
    image = np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)
    probs = trainer.predict_probs(image)
    assert probs.dtype == np.float32 and set(dtypes) == {torch.bfloat16 if amp else torch.float32}
    trainer.amp = False
    np.testing.assert_allclose(probs, trainer.predict_probs(image), atol=0.02 if amp else 0.0)


# ------------------------------------------------------------------ mtcl


def _ball(shape: tuple[int, ...], center: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)) <= radius**2


@pytest.mark.parametrize("drawn", [10.0, 7.0, 8.0])  # dilated by 2 voxels, eroded by 1, as drawn
def test_band_flags_move_a_shifted_boundary_back_to_the_intensity_edge(drawn: float) -> None:
    rng = np.random.default_rng(0)
    organ = _ball((40, 40, 40), (20, 20, 14), 8.0)
    lookalike = _ball((40, 40, 40), (20, 20, 33), 4.0)  # the organ's intensity, 7 voxels beyond its surface
    image = np.where(organ | lookalike, 1.0, 0.2) + rng.normal(0, 0.05, organ.shape)
    given = _ball((40, 40, 40), (20, 20, 14), drawn)
    to_fg, to_bg = band_flags(image, given, width=3)  # the errors lie within the band
    corrected = (given | to_fg) & ~to_bg
    assert not (to_fg & to_bg).any() and not (to_fg & given).any() and not (to_bg & ~given).any()
    assert overlap(corrected, organ)[0] > 0.99
    if drawn != 8.0:
        assert overlap(given, organ)[0] < 0.9
    assert not (corrected & lookalike).any()  # beyond the band: never annexed
    # nothing to fit in an empty or tiny mask: no change
    tiny = _ball((40, 40, 40), (20, 20, 14), 1.0)
    assert not any(f.any() for f in band_flags(image, tiny, width=2))


def test_band_margin_keeps_partial_volume_voxels_and_passes_undo_a_dilation_wider_than_the_band() -> None:
    """band_correct: the margin leaves a correct boundary's partial-volume voxels alone, and repeated passes
    move a mask dilated by 4 voxels back to the organ through a band of 3, without annexing the look-alike
    beyond it, and then stop (a fixed point: more passes change nothing)."""
    import math

    from scipy import ndimage

    from svldrl.rules import band_correct

    rng = np.random.default_rng(0)
    shape = (56, 56, 56)
    organ = _ball(shape, (28, 28, 22), 12.0)
    lookalike = _ball(shape, (28, 28, 46), 4.0)  # the organ's intensity, 4 voxels beyond the dilated mask
    # one narrow tissue inside, a wide one around (as in CT and the phantoms), and a partial-volume layer
    image = np.where(organ | lookalike, rng.normal(1.0, 0.1, shape), rng.normal(0.3, 0.15, shape))
    layer = organ & (ndimage.distance_transform_edt(organ) <= 1)
    image[layer] = 0.68  # likelier background than organ, but by less than 9x
    lost = [np.count_nonzero(layer & ~band_correct(image, organ, 2, margin)) for margin in (0.0, math.log(9))]
    assert lost[0] > 0.9 * layer.sum() and lost[1] == 0
    dilated = _ball(shape, (28, 28, 22), 16.0)
    one_pass = band_correct(image, dilated, 3, math.log(9))
    fixed = band_correct(image, dilated, 3, math.log(9), passes=10)
    assert (
        overlap(dilated, organ)[0] < 0.6
        and overlap(one_pass, organ)[0] < 0.7 < 0.97 < overlap(fixed, organ)[0]
    )
    assert not (fixed & lookalike).any()
    np.testing.assert_array_equal(band_correct(image, fixed, 3, math.log(9), passes=10), fixed)


def test_band_correct_select_picks_per_case_the_width_the_image_supports() -> None:
    """band_correct_select: a mask dilated by 5 voxels needs a wide band (through a narrow one the fixed point
    stalls: its core holds surroundings), a correct mask keeps its boundary whatever the width (the smallest
    wins the tie); the likelihood picks from the image alone."""
    import math

    from svldrl.rules import band_correct, band_correct_select

    rng = np.random.default_rng(0)
    shape = (56, 56, 56)
    organ = _ball(shape, (28, 28, 22), 12.0)
    lookalike = _ball(shape, (28, 28, 46), 4.0)  # the organ's intensity, 3 voxels beyond the dilated mask
    image = np.where(organ | lookalike, rng.normal(1.0, 0.1, shape), rng.normal(0.3, 0.15, shape))
    widths, ln9 = [2, 3, 4, 5, 6], math.log(9)
    dilated = _ball(shape, (28, 28, 22), 17.0)
    mask, width = band_correct_select(image, dilated, widths, ln9, passes=10)
    np.testing.assert_array_equal(mask, band_correct(image, dilated, width, ln9, passes=10))
    assert overlap(band_correct(image, dilated, 2, ln9, passes=10), organ)[0] < 0.6  # the narrow band stalls
    assert width >= 4 and overlap(mask, organ)[0] > 0.97 and not (mask & lookalike).any()
    mask, width = band_correct_select(image, organ, widths, ln9, passes=10)
    assert width == 2 and overlap(mask, organ)[0] > 0.99
    # too small to fit at any width: the smallest width's (unchanged) result
    tiny = _ball(shape, (28, 28, 22), 1.0)
    mask, width = band_correct_select(image, tiny, widths, ln9, passes=10)
    assert width == 2 and (mask == tiny).all()


def test_band_lookalike_share_tells_a_separable_organ_from_one_its_surroundings_resemble() -> None:
    """The share of the ring within 2 std of the organ's intensity: ~0 for a bright organ in dark tissue, the
    look-alike's share of the ring when it touches the organ, NaN for a mask too small to fit."""
    from svldrl.rules import band_lookalike_share

    rng = np.random.default_rng(0)
    shape = (40, 40, 40)
    organ = _ball(shape, (20, 20, 20), 8.0)
    image = np.where(organ, rng.normal(1.0, 0.05, shape), rng.normal(0.3, 0.1, shape))
    assert band_lookalike_share(image, organ, 2) < 0.01
    touching = _ball(shape, (20, 20, 30), 7.0) & ~organ  # a look-alike against the organ's surface
    image[touching] = rng.normal(1.0, 0.05, shape)[touching]
    assert 0.05 < band_lookalike_share(image, organ, 2) < 0.5
    assert np.isnan(band_lookalike_share(image, _ball(shape, (20, 20, 20), 1.0), 2))


def test_band_guard_keeps_right_boundaries_and_abstains_where_the_image_does_not_support_the_rule() -> None:
    """band_correct_guarded: a correct mask keeps its partial-volume voxels (the unguarded fixed point erodes
    them), a mask drawn too large on one side is moved back there and nowhere else, and a case whose
    surroundings hold tissue of the organ's intensity, or too small to fit, keeps its given mask (the unguarded
    update annexes the look-alike)."""
    import math

    from scipy import ndimage

    from svldrl.rules import BandGuard, band_correct, band_correct_guarded

    rng = np.random.default_rng(0)
    shape, ln9 = (48, 48, 48), math.log(9)
    organ = _ball(shape, (24, 24, 24), 10.0)
    image = np.where(organ, rng.normal(1.0, 0.05, shape), rng.normal(0.3, 0.1, shape))
    layer = organ & (ndimage.distance_transform_edt(organ) <= 1)
    partial = layer & (rng.random(shape) < 0.3)  # voxels mostly outside the organ, drawn in as a rater would
    image[partial] = 0.45
    unguarded = band_correct(image, organ, 4, ln9, 10)
    assert np.count_nonzero(organ & ~unguarded) >= 0.8 * partial.sum()
    kept = band_correct_guarded(image, organ, [4], ln9, 10)
    assert kept.abstained == "" and (kept.mask == organ).all() and kept.held_back > 0
    # one side drawn 3 voxels too large: moved back there, the far side (beyond a stretch's reach) left alone
    half, far = np.zeros(shape, bool), np.zeros(shape, bool)
    half[:, :, 24:], far[:, :, :14] = True, True
    given = organ | (_ball(shape, (24, 24, 24), 13.0) & half)
    fixed = band_correct_guarded(image, given, [4], ln9, 10).mask
    assert overlap(given, organ)[0] < 0.8 and overlap(fixed, organ & ~partial)[0] > 0.99
    assert (fixed[far] == organ[far]).all()
    # tissue of the organ's intensity against a stretch of it: held back there (the unguarded update annexes it)
    small = _ball(shape, (24, 24, 37), 6.0) & ~organ
    look = image.copy()
    look[small] = rng.normal(1.0, 0.05, shape)[small]
    assert (band_correct(look, organ, 4, ln9, 10) & small).sum() > 0.5 * small.sum()
    outcome = band_correct_guarded(look, organ, [4], ln9, 10)
    assert outcome.abstained == "" and not (outcome.mask & small).any()
    # ... against much of it: the whole case keeps its given mask
    large = _ball(shape, (24, 24, 40), 9.0) & ~organ
    look[large] = rng.normal(1.0, 0.05, shape)[large]
    outcome = band_correct_guarded(look, organ, [4], ln9, 10)
    assert outcome.abstained == "lookalike" and outcome.lookalike > BandGuard().max_lookalike
    assert (outcome.mask == organ).all()
    assert (band_correct_guarded(look, organ, [4], ln9, 10, guard=None).mask & large).any()
    tiny = _ball(shape, (10, 10, 10), 2.0)
    assert band_correct_guarded(image, tiny, [4], ln9, 10).abstained == "too small"


def test_band_flags_connected_drops_islands() -> None:
    """connected=True keeps only flagged voxels joined to the side they would join."""
    organ = _ball((32, 32, 32), (16, 16, 16), 7.0)
    image = np.where(organ, 1.0, 0.2)
    image[16, 16, 25] = 1.0  # one organ-bright voxel in the band, not touching the mask
    loose, _ = band_flags(image, organ, width=3)
    tight, _ = band_flags(image, organ, width=3, connected=True)
    assert loose[16, 16, 25] and not tight[16, 16, 25]


def test_confident_learning_flags_hand_computed() -> None:
    p1 = np.array([0.1, 0.3, 0.6, 0.9, 0.8, 0.4, 0.2, 0.05])  # foreground probability
    given = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probs = np.stack([1 - p1, p1])
    # t_0 = mean(0.9, 0.7, 0.4, 0.1) = 0.525; t_1 = mean(0.8, 0.4, 0.2, 0.05) = 0.3625
    np.testing.assert_allclose(cl_thresholds(*class_confidence_sums(probs, given)), [0.525, 0.3625])
    # label 0 with p0 < 0.525 and p1 >= 0.3625: voxels 2, 3; label 1 with p1 < 0.3625 and p0 >= 0.525: 6, 7
    flags = confident_learning_flags(probs, given)
    assert np.flatnonzero(flags).tolist() == [2, 3, 6, 7]
    # thresholds from elsewhere (a clean subset) change the verdict; 3-D maps keep their shape.
    # t = (0.5, 0.85): voxel 2 (p1 = 0.6) is no longer confidently foreground, voxel 5 (p0 = 0.6) now is
    # confidently background; voxel 4 (p1 = 0.8 < 0.85, p0 = 0.2 < 0.5) is confident in nothing
    flags = confident_learning_flags(probs.reshape(2, 2, 2, 2), given.reshape(2, 2, 2), np.array([0.5, 0.85]))
    assert flags.shape == (2, 2, 2) and np.flatnonzero(flags).tolist() == [3, 5, 6, 7]
    flat = flags.reshape(-1)
    assert mtcl_correct(given, flat).tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    np.testing.assert_allclose(mtcl_correct(given, flat, soft=True), [0, 0, 0, 0.8, 1, 0.2, 0.2, 0.2])


def test_mtcl_clean_subset_uses_clean_masks_of_the_first_cases(dataset: Path, tmp_path: Path) -> None:
    noisy = dataset / "labelsTr_noisy" / "dot"  # a noisy label set that shrank every mask to one voxel
    noisy.mkdir(parents=True)
    for f in (dataset / "labelsTr").glob("*.nii.gz"):
        img = nib.load(f)
        dot = np.zeros(img.shape, np.uint8)
        dot[0, 0, 0] = 1
        nib.save(nib.Nifti1Image(dot, img.affine), noisy / f.name)
    trainer = get_method("mtcl")(
        _cfg("mtcl", "mtcl.clean_cases=2"), load_dataset(dataset, "noisy/dot"), tmp_path / "run"
    )
    assert trainer.num_clean() == 2
    assert all(g.sum() > 1 for g in trainer.given[:2])  # the clean subset: clean masks
    assert all(g.sum() == 1 for g in trainer.given[2:])  # the others: the noisy masks
    assert all(np.array_equal(t, g) for t, g in zip(trainer.targets, trainer.given, strict=True))


# ------------------------------------------------------------------ tloss


def _t_loss_by_hand(pred: list[float], target: list[float], nu: float) -> float:
    d = len(pred)
    nt = math.exp(nu) + 1e-8
    lam = 1 + 1e-8
    s = sum((p - y) ** 2 for p, y in zip(pred, target, strict=True)) * math.exp(lam)
    nll = (
        -math.lgamma((nt + d) / 2)
        + math.lgamma(nt / 2)
        - 0.5 * d * lam
        + d / 2 * math.log(math.pi)
        + d / 2 * (nu + 1e-8)
        + (nt + d) / 2 * math.log(1 + s / nt)
    )
    return nll / d


@pytest.mark.parametrize("nu", [-1.0, 0.0, 1.0, 2.5])
def test_t_loss_matches_hand_computation(nu: float) -> None:
    pred = [[0.9, 0.2, 0.6, 0.0], [0.5, 0.5, 0.1, 1.0]]
    target = [[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]
    got = t_loss(
        torch.tensor(pred, dtype=torch.float64),
        torch.tensor(target, dtype=torch.float64),
        torch.tensor(nu, dtype=torch.float64),
    )
    want = (_t_loss_by_hand(pred[0], target[0], nu) + _t_loss_by_hand(pred[1], target[1], nu)) / 2
    assert float(got) == pytest.approx(want, rel=1e-9)


def test_t_loss_grows_with_the_residual_and_trains_nu() -> None:
    target = torch.zeros(1, 8)
    nu = torch.tensor(1.0, requires_grad=True)
    small, large = t_loss(torch.full((1, 8), 0.1), target, nu), t_loss(torch.full((1, 8), 0.9), target, nu)
    assert float(small.detach()) < float(large.detach())
    large.backward()
    assert nu.grad is not None and float(nu.grad) != 0.0


# ------------------------------------------------------------------ training


def _cfg(method: str, *extra: str) -> Config:
    return C.load_config(overrides=[*TINY, f"method={method}", "train.iterations=4", *extra])


@pytest.mark.parametrize(
    ("method", "extra", "state_keys"),
    [
        ("coteaching", [], {"peer", "peer_optimizer", "peer_scheduler"}),
        ("adele", [], {"iou_history", "correcting", "targets"}),
        ("mtcl", ["mtcl.clean_cases=2", "mtcl.soft=true"], {"teacher", "targets"}),
        ("tloss", ["tloss.init=0.5"], {"nu"}),
        ("supervised", [], set()),
        ("supervised_confident", ["rl.tau=0.51"], {"targets"}),
        ("supervised_band", ["rl.band_width=1", "rl.band_guard=false"], {"targets"}),
        ("tloss_band", ["rl.band_width=1", "rl.band_guard=false", "tloss.init=0.5"], {"nu", "targets"}),
    ],
)
def test_method_trains_and_checkpoints(
    dataset: Path, tmp_path: Path, method: str, extra: list[str], state_keys: set[str]
) -> None:
    run = train(dataset, "clean", tmp_path / method, _cfg(method, *extra))
    ckpt = load_checkpoint(run / "checkpoint_final.pt", method=method)
    assert state_keys <= set(ckpt["extra"])
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    if method in ("tloss", "tloss_band"):  # nu is trained: it left its initial value
        assert float(ckpt["extra"]["nu"]) != 0.5
    if method == "coteaching":  # the peer is a second, differently initialised network
        key = next(iter(ckpt["model"]))
        assert not torch.equal(ckpt["model"][key], ckpt["extra"]["peer"][key])
    if method == "supervised_confident":  # the confident update (an ablation) ran after the warmup
        assert float(rows[-1]["charts/target_changed"]) > 0
    if method in (
        "supervised_band",
        "tloss_band",
    ):  # the band update (unguarded: the tiny phantoms give it too few voxels) ran before the first step
        assert all(float(r["charts/target_changed"]) > 0 for r in rows)
    if method == "supervised":
        assert "targets" not in ckpt["extra"] and "charts/target_changed" not in rows[-1]
    if method == "mtcl":  # soft corrections ran after the warmup, never on the two clean cases
        soft = [bool(set(np.unique(t.numpy())) - {0.0, 1.0}) for t in ckpt["extra"]["targets"]]
        assert float(rows[-1]["charts/target_changed"]) > 0 and any(soft[2:]) and not any(soft[:2])


def test_mtcl_resume_matches_uninterrupted_run(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """Teacher, corrected targets and generator come back, so a killed and resumed run ends where an
    uninterrupted one does."""
    cfg = _cfg("mtcl", "train.deterministic=true", "train.iterations=6")
    full = train(dataset, "clean", tmp_path / "full", C.load_config(overrides=[], base=cfg))
    killed = C.load_config(overrides=[], base=cfg)  # killed in epoch 1, after epoch 0's checkpoint
    kill_at_second_validation(
        monkeypatch, get_method("mtcl"), lambda: train(dataset, "clean", tmp_path / "killed", killed)
    )
    # epoch 0 ended after the warmup (2 of 6 steps > 30%), so the checkpoint holds corrected targets
    assert float(next(csv.DictReader(open(tmp_path / "killed" / "metrics.csv")))["charts/target_changed"]) > 0
    resumed = train(
        dataset,
        "clean",
        tmp_path / "killed",
        C.load_config([tmp_path / "killed" / "config.yaml"]),
        resume=True,
    )
    a, b = load_checkpoint(full / "checkpoint_final.pt"), load_checkpoint(resumed / "checkpoint_final.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], msg=k)
    for k in a["extra"]["teacher"]:
        torch.testing.assert_close(a["extra"]["teacher"][k], b["extra"]["teacher"][k], msg=k)
    for ta, tb in zip(a["extra"]["targets"], b["extra"]["targets"], strict=True):
        torch.testing.assert_close(ta, tb)
