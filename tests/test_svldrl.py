"""SVL-DRL end to end on 32^3 phantoms: stages, resume, async workers, label actions, refined inference."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from svldrl import config as C
from svldrl.data.dataset import load_dataset
from svldrl.engine.checkpoint import load_checkpoint
from svldrl.methods import section_owners
from svldrl.methods.kit.losses import t_loss
from svldrl.methods.svldrl import SVLDRLTrainer
from svldrl.rules import cl_thresholds, class_confidence_sums, confident_learning_flags
from svldrl.runs import predict_folder, train
from tests.conftest import TINY

RL = [*TINY, "method=svldrl", "train.iterations=10", "train.steps_per_epoch=2", "rl.t_max=2"]


def _rows(run: Path) -> list[dict]:
    return list(csv.DictReader(open(run / "metrics.csv")))


def test_three_stages_run_and_log_rl_charts(dataset: Path, tmp_path: Path) -> None:
    run = train(dataset, "clean", tmp_path / "run", C.load_config(overrides=RL))
    rows = _rows(run)
    # 10 steps: warmup 0.3 -> steps 0-2, transition 0.2 -> 3-4, full RL 5-9; epochs of 2 steps,
    # each logged with the stage of its last step
    assert [int(r["stage"]) for r in rows] == [1, 2, 3, 3, 3]
    last = rows[-1]
    for key in (
        "losses/value",
        "losses/policy",
        "losses/dice",
        "charts/reward",
        "charts/entropy",
        "charts/action_frac/keep",
        "charts/action_frac/enhance",
        "charts/action_frac/weaken",
    ):
        assert last[key] != "", key
    fracs = sum(float(last[f"charts/action_frac/{a}"]) for a in ("keep", "enhance", "weaken"))
    assert fracs == pytest.approx(1.0, abs=1e-5)
    assert 0 < float(last["charts/entropy"]) <= np.log(3) + 1e-4
    assert load_checkpoint(run / "checkpoint_final.pt", method="svldrl")["extra"]["stage"] == 3


class _Crash(Exception):
    pass


def test_resume_continues_in_the_right_stage(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = RL + ["train.deterministic=true"]
    full = train(dataset, "clean", tmp_path / "full", C.load_config(overrides=cfg))
    from svldrl.methods.svldrl import SVLDRLTrainer

    original = SVLDRLTrainer.on_epoch_end
    calls = {"n": 0}

    def crash_in_stage_2(self, epoch):
        calls["n"] += 1
        if calls["n"] == 3:  # killed during epoch 2 (stage 2), after epoch 1's checkpoint
            raise _Crash
        return original(self, epoch)

    monkeypatch.setattr(SVLDRLTrainer, "on_epoch_end", crash_in_stage_2)
    with pytest.raises(_Crash):
        train(dataset, "clean", tmp_path / "killed", C.load_config(overrides=cfg))
    monkeypatch.setattr(SVLDRLTrainer, "on_epoch_end", original)
    ckpt = load_checkpoint(tmp_path / "killed" / "checkpoint_latest.pt")
    assert ckpt["iteration"] == 4 and ckpt["extra"]["stage"] == 2
    resumed = train(dataset, "clean", tmp_path / "killed", C.load_config(overrides=cfg), resume=True)
    assert [r["stage"] for r in _rows(resumed)] == [r["stage"] for r in _rows(full)]
    assert [int(r["epoch"]) for r in _rows(resumed)] == [0, 1, 2, 3, 4]
    a = load_checkpoint(full / "checkpoint_final.pt")["model"]
    b = load_checkpoint(resumed / "checkpoint_final.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_async_workers_update_the_shared_model(dataset: Path, tmp_path: Path) -> None:
    cfg = C.load_config(
        overrides=[
            *RL,
            "rl.async_workers=2",
            "rl.warmup=0.0",
            "rl.transition=0.0",
            "train.iterations=4",
            "train.steps_per_epoch=4",
        ]
    )
    from svldrl.data.dataset import load_dataset
    from svldrl.methods.svldrl import SVLDRLTrainer

    trainer = SVLDRLTrainer(cfg, load_dataset(dataset), tmp_path / "run")
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    trainer.fit()
    after = trainer.network.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("decoders.policy") for k in changed)
    assert any(k.startswith("encoder") for k in changed)
    row = _rows(tmp_path / "run")[-1]
    assert float(row["charts/async_workers"]) == 2.0
    assert float(row["charts/stage"]) == 3.0
    assert trainer.iteration == 4


def test_label_actions_keep_refined_targets_across_resume(dataset: Path, tmp_path: Path) -> None:
    cfg = C.load_config(overrides=[*RL, "rl.action_space=label", "rl.warmup=0.2", "rl.transition=0.0"])
    run = train(dataset, "clean", tmp_path / "run", cfg)
    ckpt = load_checkpoint(run / "checkpoint_latest.pt")
    targets = ckpt["extra"]["targets"]
    assert len(targets) > 0 and "teacher" in ckpt["extra"]
    # stage-3 episodes wrote soft targets back: some voxel moved off {0, 1}
    assert any(((t > 0) & (t < 1)).any() for t in targets)
    from svldrl.data.dataset import load_dataset
    from svldrl.methods.svldrl import SVLDRLTrainer

    cfg2 = C.load_config([run / "config.yaml"])
    resumed = SVLDRLTrainer(cfg2, load_dataset(dataset), run, resume=True)
    resumed.restore()
    for a, b in zip(targets, resumed.targets):
        np.testing.assert_array_equal(a.numpy(), b)


def test_refined_inference_and_save_refined(dataset: Path, tmp_path: Path) -> None:
    cfg = C.load_config(overrides=[*RL, "infer.refine_steps=2"])
    run = train(dataset, "clean", tmp_path / "run", cfg)
    out = tmp_path / "pred"
    files = predict_folder(run, dataset / "imagesTs", out, save_refined=True)
    cid = files[0].name.replace(".nii.gz", "")
    refined = nib.load(out / "inspect" / f"{cid}_refined.nii.gz")
    actions = np.asarray(nib.load(out / "inspect" / f"{cid}_actions.nii.gz").dataobj)
    src = nib.load(dataset / "imagesTs" / f"{cid}_0000.nii.gz")
    assert refined.shape == src.shape
    np.testing.assert_allclose(refined.affine, src.affine)
    r = np.asarray(refined.dataobj)
    assert r.min() >= 0 and r.max() <= 1
    assert set(np.unique(actions)) <= {0, 1, 2}


def test_episode_share_and_teacher_reward_target(dataset: Path, tmp_path: Path) -> None:
    """rl.episode_share spreads episodes evenly over the RL stages (the other steps are plain segmentation
    steps); rl.reward_target=teacher measures rewards against the EMA teacher's confident labels."""
    cfg = C.load_config(
        overrides=[
            *TINY,
            "method=svldrl",
            "train.iterations=4",
            "rl.warmup=0",
            "rl.transition=0",
            "rl.episode_share=0.5",
            "rl.reward_target=teacher",
            "rl.tau=0.6",
        ]
    )
    trainer = SVLDRLTrainer(cfg, load_dataset(dataset), tmp_path / "run")
    assert [trainer.episode_due(i) for i in range(6)] == [False, True, False, True, False, True]
    assert trainer.teacher is not None and "teacher" in trainer.checkpointed
    batch = trainer.sample_batch()
    target = trainer.actions.reference(batch["target"], batch["image"], trainer.teacher)
    with torch.no_grad():
        p = torch.softmax(trainer.teacher(batch["image"], heads=("seg",))["seg"], 1)[:, 1:2]
    confident = (p > 0.6) | (p < 0.4)
    assert torch.equal(target[confident], (p[confident] > 0.5).float())
    assert torch.equal(target[~confident], batch["target"][~confident])
    trainer.fit()
    rows = _rows(tmp_path / "run")
    # each 2-step epoch ran one episode: the RL charts are logged, averaged over the steps that logged them
    assert all(float(r["charts/entropy"]) > 0 for r in rows)
    assert SVLDRLTrainer.stage_cost(cfg, 3) == pytest.approx(0.5 * 6.0 + 0.5)


def test_cl_target_update_corrects_the_given_masks_with_the_teacher(dataset: Path, tmp_path: Path) -> None:
    """rl.target_update=cl: after the warm-up, each epoch end sets every target to the given mask with the voxels
    that confident learning flags (from the EMA teacher's probabilities) flipped, redone from the given masks so
    that corrections never accumulate; the rewards are then measured against these targets."""
    overrides = [*TINY, "method=svldrl", "train.iterations=4", "rl.target_update=cl", "nets.heads=light"]
    cfg = C.load_config(overrides=[*overrides, "rl.warmup=0.5", "rl.transition=0"])
    trainer = SVLDRLTrainer(cfg, load_dataset(dataset), tmp_path / "run")
    assert trainer.teacher is not None and {"teacher", "targets"} <= set(trainer.checkpointed)
    calls: list[object] = []

    def fake_probs(image: np.ndarray, network: object = None) -> np.ndarray:
        calls.append(network)
        p = np.full(image.shape, 0.5, dtype=np.float32)  # confident foreground in the first half along x
        p[: image.shape[0] // 2] = 0.99
        return p

    trainer.predict_probs = fake_probs
    trainer.iteration = 1  # stage 1 (warm-up): nothing is corrected
    assert "charts/target_changed" not in trainer.on_epoch_end(0)
    assert all(
        np.array_equal(t, g.astype(np.float32)) for t, g in zip(trainer.targets, trainer.given, strict=True)
    )
    trainer.iteration = 3
    # a drifted target: the update starts again from the given mask
    trainer.targets[0][...] = 1 - trainer.targets[0]
    logs = trainer.on_epoch_end(1)
    assert calls and all(c is trainer.teacher for c in calls)
    assert logs["charts/target_changed"] > 0
    # the same rule as mtcl (tests/test_methods.py checks it by hand), thresholds pooled over all cases
    probs = [np.stack([1 - fake_probs(g), fake_probs(g)]) for g in trainer.given]
    sums = sum(class_confidence_sums(pr, g)[0] for pr, g in zip(probs, trainer.given, strict=True))
    counts = sum(class_confidence_sums(pr, g)[1] for pr, g in zip(probs, trainer.given, strict=True))
    thresholds = cl_thresholds(sums, counts)
    for t, g, pr in zip(trainer.targets, trainer.given, probs, strict=True):
        flags = confident_learning_flags(pr, g.astype(np.int64), thresholds)
        np.testing.assert_array_equal(t, np.where(flags, 1 - g, g).astype(np.float32))
        assert (t[: g.shape[0] // 2] == 1).all()  # where the teacher is sure of foreground, the target is too
    run = train(dataset, "clean", tmp_path / "trained", C.load_config(overrides=[*overrides, "rl.warmup=0"]))
    rows = _rows(run)
    assert all(float(r["charts/target_changed"]) >= 0 for r in rows) and "charts/threshold_fg" in rows[-1]


def test_tloss_segmentation_loss_in_every_stage(dataset: Path, tmp_path: Path) -> None:
    """rl.seg_loss=tloss: L_seg of the warm-up steps and of the episodes is the T-Loss of methods/tloss.py on
    the foreground probability, with its tolerance nu trained, logged and checkpointed; the default stays
    Dice + CE."""
    cfg = C.load_config(overrides=[*RL, "rl.seg_loss=tloss", "tloss.init=0.5"])
    trainer = SVLDRLTrainer(cfg, load_dataset(dataset), tmp_path / "run")
    logits = torch.randn(2, 2, 4, 4, 4)
    q = torch.rand(2, 1, 4, 4, 4)
    expected = t_loss(torch.softmax(logits, 1)[:, 1], q[:, 0], trainer.nu)
    assert torch.equal(trainer._seg_loss(logits, q), expected)
    assert any(trainer.nu is p for g in trainer.optimizer.param_groups for p in g["params"])
    trainer.fit()
    rows = _rows(tmp_path / "run")
    assert [int(r["stage"]) for r in rows] == [1, 2, 3, 3, 3]
    assert all(r["charts/nu"] != "" for r in rows)  # logged in the warm-up and in the RL stages
    nu = float(load_checkpoint(tmp_path / "run" / "checkpoint_final.pt", method="svldrl")["extra"]["nu"])
    assert nu != 0.5 and nu == pytest.approx(float(rows[-1]["charts/nu"]), abs=0.05)
    default = SVLDRLTrainer(C.load_config(overrides=RL), load_dataset(dataset), tmp_path / "default")
    assert default.nu is None and "nu" not in default.checkpointed
    assert torch.equal(default._seg_loss(logits, q), default.seg_loss(logits, torch.cat([1 - q, q], 1)))
    with pytest.raises(
        C.UserError, match="'tloss.init' is a setting of tloss / tloss_band / svldrl; this run's"
    ):
        C.load_config(overrides=[*TINY, "method=supervised", "tloss.init=0.5"], owners=section_owners())


def test_band_width_max_chooses_each_case_width_with_band_correct_select(
    dataset: Path, tmp_path: Path
) -> None:
    """rl.band_width_max: every target is band_correct_select's mask over rl.band_width..max (unguarded), its
    median width logged; a maximum not above rl.band_width is refused."""
    from svldrl.rules import band_correct_select

    cfg = C.load_config(
        overrides=[
            *RL,
            "rl.target_update=band",
            "rl.band_width=1",
            "rl.band_width_max=3",
            "rl.band_guard=false",
        ]
    )
    trainer = SVLDRLTrainer(cfg, load_dataset(dataset), tmp_path / "run")
    chosen = []
    for image, given, target in zip(trainer.images, trainer.given, trainer.targets, strict=True):
        mask, width = band_correct_select(image, given, [1, 2, 3], 0.0, 1)
        np.testing.assert_array_equal(target >= 0.5, mask)
        chosen.append(width)
    assert trainer.start_logs["charts/band_width"] == float(np.median(chosen))
    with pytest.raises(C.UserError, match="rl.band_width_max"):
        C.load_config(overrides=[*RL, "rl.target_update=band", "rl.band_width=3", "rl.band_width_max=3"])


def test_band_target_update_corrects_the_targets_before_the_first_step(dataset: Path, tmp_path: Path) -> None:
    """rl.target_update=band: every target is the given mask with band_flags' voxels relabelled (unguarded),
    from the start (the rule needs no model), kept in checkpoints and logged as charts/target_changed."""
    from svldrl.rules import band_correct, relabel

    band = [
        "rl.target_update=band",
        "rl.band_width=1",
        "rl.band_margin=0.5",
        "rl.band_passes=3",
        "rl.band_guard=false",
    ]
    cfg = C.load_config(overrides=[*RL, *band])
    trainer = SVLDRLTrainer(cfg, load_dataset(dataset), tmp_path / "run")
    assert "targets" in trainer.checkpointed
    changed = 0
    for image, given, target in zip(trainer.images, trainer.given, trainer.targets, strict=True):
        corrected, is_fg = band_correct(image, given, 1, 0.5, 3), given >= 0.5
        expected = relabel(given, corrected & ~is_fg, is_fg & ~corrected)
        np.testing.assert_array_equal(target, expected)
        changed += int(np.count_nonzero(target != given))
    assert changed > 0
    assert 0.0 <= trainer.start_logs["charts/band_lookalike_share"] <= 1.0
    trainer.fit()
    rows = _rows(tmp_path / "run")
    assert all(
        float(r["charts/target_changed"])
        == pytest.approx(trainer.start_logs["charts/target_changed"], rel=1e-4)
        for r in rows
    )


# metrics.csv of three tiny seeded trainings (one CPU thread, --deterministic, float32), recorded on 2026-12-06 after
# the rewards and action spaces became classes (rl/reward.py REWARDS, rl/action_spaces.py ACTION_SPACES; that change
# was checked against these trainings' values at commit d7ca163, before it, identical under bf16): the validation
# Dice of every epoch, the last epoch's logs, and the columns in their order.
_RECORDED: dict[str, tuple[list[str], list[float], dict[str, float]]] = {
    "intensity": (
        [],
        [0.324917, 0.320373, 0.330795, 0.335738, 0.340762],
        {
            "train_loss": 0.834853,
            "losses/value": 1.11086,
            "losses/policy": -0.122467,
            "losses/dice": 0.892754,
            "charts/reward": -0.00702232,
            "charts/reward_std": 0.0422703,
            "charts/advantage": -0.109417,
            "charts/entropy": 0.982381,
            "charts/action_frac/keep": 0.341927,
            "charts/action_frac/enhance": 0.217865,
            "charts/action_frac/weaken": 0.440208,
            "charts/reward_terms/dice": -0.00303127,
            "charts/reward_terms/voxel": -0.00228129,
            "charts/reward_terms/continuity": -0.00170976,
            "charts/reward_terms/components": 0.0,
        },
    ),
    "paper_reward_teacher_target": (
        ["rl.reward=paper", "rl.reward_target=teacher", "rl.tau=0.6"],
        [0.324917, 0.318474, 0.314546, 0.312936, 0.316723],
        {
            "train_loss": 1.11484,
            "losses/value": 3.19234,
            "losses/policy": -1.61027,
            "losses/dice": 0.910573,
            "charts/reward": -0.221873,
            "charts/reward_std": 0.174541,
            "charts/advantage": -1.60357,
            "charts/entropy": 0.997544,
            "charts/action_frac/keep": 0.325958,
            "charts/action_frac/enhance": 0.221966,
            "charts/action_frac/weaken": 0.452076,
            "charts/reward_terms/dice": -0.00499541,
            "charts/reward_terms/continuity": -0.216877,
        },
    ),
    "label": (
        ["rl.action_space=label", "rl.warmup=0.2", "rl.transition=0.0", "rl.w_region=1.0"],
        [0.324917, 0.311962, 0.307506, 0.304125, 0.303562],
        {
            "train_loss": 0.819863,
            "charts/target_changed": 0.185013,
            "losses/value": 0.516838,
            "losses/policy": 0.0269929,
            "losses/dice": 1.01971,
            "charts/reward": 0.0111528,
            "charts/reward_std": 1.50886,
            "charts/advantage": 0.0732925,
            "charts/entropy": 1.01096,
            "charts/action_frac/keep": 0.332657,
            "charts/action_frac/enhance": 0.215717,
            "charts/action_frac/weaken": 0.451626,
            "charts/reward_terms/teacher": -0.000869647,
            "charts/reward_terms/continuity": -0.00251579,
            "charts/reward_terms/prior": -0.00550079,
            "charts/reward_terms/region": 0.020039,
        },
    ),
}
# The same trainings on a CPU whose torch kernels are AVX2 (AMD EPYC, 2026-12-07; identical at commit 7472de7 and
# f09d679): float32 kernels of another width sum in another order, and ten RL steps carry that past any tolerance
# that would still catch a changed draw. Chosen by torch.backends.cpu.get_cpu_capability(); other CPUs use _RECORDED.
_RECORDED_AVX2: dict[str, tuple[list[float], dict[str, float]]] = {
    "intensity": (
        [0.324917, 0.320373, 0.330841, 0.335706, 0.340903],
        {
            "train_loss": 0.834634,
            "losses/value": 1.11278,
            "losses/policy": -0.130197,
            "losses/dice": 0.892996,
            "charts/reward": -0.00723782,
            "charts/reward_std": 0.0422798,
            "charts/advantage": -0.117301,
            "charts/entropy": 0.982428,
            "charts/action_frac/keep": 0.341839,
            "charts/action_frac/enhance": 0.217674,
            "charts/action_frac/weaken": 0.440487,
            "charts/reward_terms/dice": -0.00316267,
            "charts/reward_terms/voxel": -0.00235776,
            "charts/reward_terms/continuity": -0.0017174,
            "charts/reward_terms/components": 0.0,
        },
    ),
    "paper_reward_teacher_target": (
        [0.324917, 0.318474, 0.314566, 0.313024, 0.316678],
        {
            "train_loss": 1.08503,
            "losses/value": 3.02242,
            "losses/policy": -1.56921,
            "losses/dice": 0.910664,
            "charts/reward": -0.216928,
            "charts/reward_std": 0.176874,
            "charts/advantage": -1.56314,
            "charts/entropy": 0.997272,
            "charts/action_frac/keep": 0.325745,
            "charts/action_frac/enhance": 0.221939,
            "charts/action_frac/weaken": 0.452316,
            "charts/reward_terms/dice": -0.00505511,
            "charts/reward_terms/continuity": -0.211873,
        },
    ),
    "label": (
        [0.324917, 0.311962, 0.307489, 0.304127, 0.303568],
        {
            "train_loss": 0.819746,
            "charts/target_changed": 0.184967,
            "losses/value": 0.516573,
            "losses/policy": 0.0267387,
            "losses/dice": 1.01965,
            "charts/reward": 0.0110171,
            "charts/reward_std": 1.50878,
            "charts/advantage": 0.0730695,
            "charts/entropy": 1.01095,
            "charts/action_frac/keep": 0.332714,
            "charts/action_frac/enhance": 0.215652,
            "charts/action_frac/weaken": 0.451633,
            "charts/reward_terms/teacher": -0.000867387,
            "charts/reward_terms/continuity": -0.00251637,
            "charts/reward_terms/prior": -0.00549507,
            "charts/reward_terms/region": 0.0198959,
        },
    ),
}
_FIRST_COLUMNS = ["epoch", "train_loss", "charts/stage", "iteration", "stage"]
_RL_COLUMNS = [
    "val_dice",
    "lr",
    "epoch_time",
    "losses/value",
    "losses/policy",
    "losses/dice",
    "charts/reward",
    "charts/reward_std",
    "charts/advantage",
    "charts/entropy",
    "charts/action_frac/keep",
    "charts/action_frac/enhance",
    "charts/action_frac/weaken",
]


@pytest.mark.parametrize("variant", sorted(_RECORDED))
def test_a_seeded_training_logs_the_recorded_metrics(dataset: Path, tmp_path: Path, variant: str) -> None:
    """A tiny seeded SVL-DRL training (each reward / action-space variant) writes the recorded metrics.csv: a guard
    against a change of structure that changes a random draw, a loss or a log. Recorded in float32 (train.amp
    off: whether bf16 runs depends on the CPU); the tolerance leaves room for another CPU's kernels."""
    overrides, val_dice, last = _RECORDED[variant]
    if torch.backends.cpu.get_cpu_capability() == "AVX2":
        val_dice, last = _RECORDED_AVX2[variant]
    cfg = C.load_config(
        overrides=[
            *RL,
            "train.device=cpu",
            "train.threads=1",
            "train.deterministic=true",
            "train.amp=false",
            *overrides,
        ]
    )
    rows = _rows(train(dataset, "clean", tmp_path / "run", cfg))
    label = variant == "label"
    terms = [k for k in last if k.startswith("charts/reward_terms/")]
    assert list(rows[0]) == [
        *_FIRST_COLUMNS,
        *(["charts/target_changed"] if label else []),
        *_RL_COLUMNS,
        *terms,
    ]
    assert [int(r["stage"]) for r in rows] == ([1, 3, 3, 3, 3] if label else [1, 2, 3, 3, 3])
    assert [float(r["val_dice"]) for r in rows] == pytest.approx(val_dice, rel=1e-3)
    assert {k: float(rows[-1][k]) for k in last} == pytest.approx(last, rel=1e-3, abs=1e-6)
