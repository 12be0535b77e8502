"""The settings' schema: one typed dataclass per config section, each field with its default, meaning, kind,
choices or range and origin (paper | decision | ours | experimental). :mod:`svldrl.config` loads, validates and
compares configs against it; ``svldrl train --help`` and docs/method.md show it. A loaded config is a
:class:`Config` of these sections; :meth:`Config.from_dict` and :meth:`Config.as_dict` convert it from and to the
nested dict of plain values that ``config.yaml`` holds.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Where a setting's default comes from (``svldrl train --help``, docs/method.md): the paper's (arXiv 2601.03875),
#: our decision where the paper is silent, our addition, or experimental (measured and not adopted, or never
#: benchmarked; kept so that its result can be reproduced).
ORIGINS = ("paper", "decision", "ours", "experimental")


def setting(
    default: Any,
    meaning: str,
    kind: str | None = None,
    choices: tuple | None = None,
    range: tuple[float, float] | None = None,  # noqa: A002 - the natural name here
    origin: str = "decision",
) -> Any:
    """A config field: its default, meaning, value kind (inferred from the default when None), allowed
    ``choices`` or numeric ``range`` (inclusive), and ``origin`` (:data:`ORIGINS`)."""
    assert origin in ORIGINS, origin
    kind = kind or {bool: "bool", int: "int", float: "float", str: "str"}.get(type(default), "any")
    meta = {"meaning": meaning, "kind": kind, "choices": choices, "range": range, "origin": origin}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Data:
    """Reading, normalising and splitting the data."""

    modality: str = setting("auto", "auto reads dataset.json channel_names", choices=("auto", "mr", "ct"))
    clip_percentiles: list = setting([0.5, 99.5], "MR: per-image percentiles clipped to", kind="floats")
    ct_window: Any = setting(
        None, "CT: one fixed [low, high] HU window; overrides intensity_range", kind="window"
    )
    intensity_range: Any = setting(
        None,
        "CT: [low, high] clip range from the dataset fingerprint (foreground percentiles 0.5 / 99.5, nnU-Net's "
        "rule); filled by training, kept in the run for prediction",
        kind="window",
    )
    foreground: Any = setting(None, "label values mapped to foreground; null: any label > 0", kind="labels")
    fold: Any = setting(
        0, "fold of splits_final.json, or all: every case trains, none validates", kind="fold"
    )
    num_folds: int = setting(5, "folds of the splits svldrl makes", range=(2, 100))
    cache: str = setting(
        "memory", "memory: training images in RAM; none: read at each access", choices=("memory", "none")
    )
    workers: int = setting(
        0,
        "DataLoader processes cropping patches (<= cores - 1); same patches with any number",
        range=(0, 256),
    )
    # nnU-Net oversamples foreground in 33% of patches: more (0.67 was tried) starves the model of background and
    # costs ~9 Dice points of false positives on the phantoms
    pos_fraction: float = setting(
        0.33, "share of patches centred on foreground (RandCropByPosNegLabel)", range=(0.0, 1.0)
    )
    trusted: str = setting(
        "auto",
        "trusted cases (validation and checkpoint selection on them; MTCL's clean subset): auto: labelsTr_trusted/ "
        "and the noisy set's trusted.json | none | FILE: a JSON or text list of case ids",
        kind="trusted",
    )
    train_on: str = setting(
        "auto",
        "with trusted cases, what trains: auto: the others (the trusted ones validate), and the trusted ones too for "
        "methods with a clean subset (mtcl) | all: every case | trusted: the trusted cases only",
        choices=("auto", "all", "trusted"),
    )
    trusted_finish: float = setting(
        0.0,
        "share of the budget, at its end, in which only the trusted cases train, on their trusted masks, with plain "
        "Dice + CE (the method's own steps and target updates stop; no validation: nothing is held out); 0: off",
        range=(0.0, 0.9),
        origin="ours",
    )
    trusted_join: bool = setting(
        False,
        "where a method declines the trusted finish (the trusted shift found the given masks right), the trusted "
        "cases join the training cases for that share instead, on their trusted masks, with plain Dice + CE (the "
        "method's own steps and target updates stop; no validation); needs data.trusted_finish",
        origin="ours",
    )
    trusted_bound: bool = setting(
        False,
        "in the trusted finish, where the trusted shift found the given masks drawn too large (too small), the "
        "training cases keep training beside the trusted ones, each only outside (inside) its mask, the side that "
        "error leaves right, from a voxel beyond its boundary (cross-entropy there); the trusted cases, drawn as "
        "often as all the others, train on their masks with Dice + CE; where the finish runs without the shift's "
        "side it trains as before; needs data.trusted_finish",
        origin="ours",
    )
    trusted_bound_band: int = setting(
        0,
        "in data.trusted_bound's finish, each training case's class is known also away from its corrected target's "
        "boundary (the method's current targets, moved by the trusted shift): foreground this many voxels inside "
        "it, background this many outside; only the band between stays unknown (the given mask's reliable side "
        "stays known as before); 0: off, only that reliable side. Measured on development data and not adopted "
        "(docs/method.md section 21)",
        range=(0, 16),
        origin="experimental",
    )
    trusted_measure: bool = setting(
        False,
        "after the trusted shift's first decision that the masks are wrong, until its next update, the training "
        "cases train only on their masks' reliable side beside the trusted cases (as data.trusted_bound's finish), "
        "so that the next update measures each case's volume with a model that never learned its mask's wrong "
        "extent; that correction is then kept (no later update); needs data.trusted_bound's side (a method with "
        "the trusted shift). Measured on development data and not adopted (docs/method.md section 20)",
        origin="experimental",
    )
    trusted_average: float = setting(
        0.0,
        "in the trusted finish (where it runs, not where the trusted cases join), the final model is an exponential "
        "moving average of the network's weights over the finish's steps, with this decay per step (PyTorch's "
        "swa_utils; 0.98: the last ~50 steps); 0: off, the last step's weights. Measured on development data and "
        "not adopted (docs/method.md section 20)",
        range=(0.0, 0.999),
        origin="experimental",
    )
    trusted_finish_lr: float = setting(
        0.0,
        "in the trusted finish (where it runs, not where the trusted cases join), a constant learning rate, as a "
        "factor of train.lr, instead of the run's schedule going on (SWA's constant rate); 0: the schedule goes on. "
        "Measured on development data and not adopted (docs/method.md section 20)",
        range=(0.0, 1.0),
        origin="experimental",
    )
    trusted_threshold: bool = setting(
        False,
        "at the end of training, choose the foreground probability threshold of the final model on the trusted "
        "cases held out to validate (the Dice-best of 25, kept only where it beats 0.5 by at least 1 point and 2 "
        "standard errors); checkpoint_final predicts with it (infer.threshold); skipped where the trusted cases "
        "trained (the trusted finish, data.train_on=all)",
        origin="ours",
    )


@dataclass
class Nets:
    """The three-head network (docs/method.md section 2)."""

    backbone: str = setting(
        "unet", "unet (small residual 3D U-Net, CPU) | swinunetr (MONAI parts)", choices=("unet", "swinunetr")
    )
    heads: str = setting(
        "decoders",
        "decoders (three decoders, the paper) | light (one decoder, three 1x1x1 heads)",
        choices=("decoders", "light"),
        origin="paper",
    )
    features: list = setting([16, 32, 64, 128], "unet channels per level", kind="ints")
    feature_size: int = setting(24, "swinunetr feature size; a multiple of 12", range=(12, 1024))
    num_classes: int = setting(2, "segmentation classes (binary tasks)", range=(2, 2))
    rl_grad_into_shared: bool = setting(
        True, "value / policy losses train the shared encoder (the paper)", origin="paper"
    )


@dataclass
class Train:
    """The training loop."""

    iterations: int = setting(1000, "total optimiser steps (the budget)", range=(1, 1e9))
    steps_per_epoch: int = setting(50, "steps between validations and checkpoints", range=(1, 1e9))
    patch: int = setting(64, "cubic patch side", range=(8, 1024))
    batch: int = setting(2, "patches per step and rank (torchrun: x world size)", range=(1, 4096))
    lr: float = setting(3e-3, "initial learning rate", range=(0.0, 10.0))
    weight_decay: float = setting(3e-5, "weight decay", range=(0.0, 1.0))
    optimizer: str = setting("adamw", "adamw | sgd (momentum 0.99, Nesterov)", choices=("adamw", "sgd"))
    scheduler: str = setting(
        "poly", "poly (nnU-Net) | cosine | constant", choices=("poly", "cosine", "constant")
    )
    val_every: int = setting(1, "epochs between validations", range=(1, 1e9))
    checkpoint_select: str = setting(
        "final",
        "checkpoint predict uses: final | val (best Dice on the validation masks)",
        choices=("final", "val"),
    )
    amp: Any = setting(
        "auto",
        "bf16 autocast of the training forwards (steps and the methods' passes over the training cases); auto: "
        "where the hardware has bf16 kernels (CUDA GPUs with bf16, "
        "CPUs with AMX or AVX512-BF16: 1.6-1.9x faster training at the same Dice, benchmarks/results/cpu_speed)",
        kind="amp",
        choices=("auto", True, False),
    )
    memory_format: str = setting(
        "auto",
        "layout of the networks' weights (and so of their activations): channels_last (oneDNN's preferred "
        "layout for 3D convolutions) | contiguous | auto: channels_last on a CPU under bf16 autocast (1.4x faster "
        "training there, benchmarks/results/cpu_speed), else contiguous",
        choices=("auto", "channels_last", "contiguous"),
    )
    compile: bool = setting(False, "torch.compile the network; the first epoch pays the compile")
    deterministic: bool = setting(False, "deterministic algorithms: one seed gives identical weights on CPU")
    threads: int = setting(0, "torch intra-op threads; 0 leaves torch's default", range=(0, 1024))
    keep_freed_memory: bool = setting(True, "CPU: glibc keeps freed blocks for reuse (engine/allocator.py)")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")


@dataclass
class Loss:
    """The segmentation loss (MONAI's DiceCELoss)."""

    dice_weight: float = setting(1.0, "weight of the Dice term", range=(0.0, 100.0))
    ce_weight: float = setting(1.0, "weight of the cross-entropy term", range=(0.0, 100.0))


@dataclass
class RL:
    """SVL-DRL's settings (docs/method.md sections 3 to 6 and 9)."""

    # choices: the names in rl/action_spaces.py: ACTION_SPACES (tests/test_rl.py keeps them equal)
    action_space: str = setting(
        "intensity",
        "intensity (the paper) | label (agents refine the target, section 9)",
        choices=("intensity", "label"),
        origin="paper",
    )
    # choices: the names in rl/reward.py: REWARDS (tests/test_rl.py keeps them equal)
    reward: str = setting(
        "voxel",
        "voxel: our per-voxel reward | paper: one global dDice - C(f') per step (section 4)",
        choices=("voxel", "paper"),
        origin="ours",
    )
    # choices: the names in rl/reward.py: REWARD_TARGETS (tests/test_rl.py keeps them equal)
    reward_target: str = setting(
        "given",
        "what the intensity reward measures agreement with: given (the training target, the paper) | teacher "
        "(the EMA teacher's confident labels, rl.tau; the given target elsewhere)",
        choices=("given", "teacher"),
        origin="paper",
    )
    paper_w_cc: float = setting(0.01, "paper reward: weight of max(N_cc - 1, 0) in C", range=(0.0, 100.0))
    paper_w_tv: float = setting(
        0.1, "paper reward: weight of the mean local total variation in C", range=(0.0, 100.0)
    )
    t_max: int = setting(3, "steps per episode", range=(1, 100))
    episode_share: float = setting(
        1.0,
        "share of the stage 2 and 3 steps that run an episode; the others are plain segmentation steps (cost)",
        range=(0.0, 1.0),
        origin="ours",
    )
    action_scale: float = setting(0.3, "step size of enhance / weaken", range=(0.0, 1.0), origin="paper")
    gamma: float = setting(0.95, "discount", range=(0.0, 1.0))
    reward_conv: bool = setting(True, "learnable reward-map kernel K, initialised to identity")
    reward_conv_size: int = setting(3, "side of K (odd)", range=(1, 15))
    entropy_coef: float = setting(0.001, "entropy bonus beta_H", range=(0.0, 10.0))
    w_dice: float = setting(1.0, "weight of the global Dice change", range=(0.0, 100.0), origin="ours")
    w_vox: float = setting(1.0, "weight of the per-voxel improvement", range=(0.0, 100.0), origin="ours")
    w_cont: float = setting(0.1, "weight of the local continuity change", range=(0.0, 100.0), origin="ours")
    w_cc: float = setting(
        0.0, "weight of the component-count change (per voxel reward)", range=(0.0, 100.0), origin="ours"
    )
    reward_norm: bool = setting(True, "divide rewards by a running standard deviation", origin="ours")
    warmup: float = setting(0.3, "share of the budget in stage 1 (segmentation only)", range=(0.0, 1.0))
    transition: float = setting(0.2, "share of the budget in stage 2 (+ value)", range=(0.0, 1.0))
    lam: float = setting(0.3, "stage 2 weight of L_value", range=(0.0, 1.0))
    alpha: float = setting(0.2, "stage 3 weight of L_value", range=(0.0, 1.0))
    beta: float = setting(0.1, "stage 3 weight of L_policy", range=(0.0, 1.0))
    seg_on_refined: bool = setting(True, "L_seg also on the segmentation of the refined state x^(T)")
    seg_loss: str = setting(
        "dicece",
        "L_seg in every stage: dicece (loss.*, the paper) | tloss (the Robust T-Loss of methods/tloss.py, its "
        "tolerance nu learned from tloss.init)",
        choices=("dicece", "tloss"),
        origin="paper",
    )
    # choices: "none" and the names in methods/kit/targets.py: TARGET_UPDATES (tests/test_rl.py keeps them equal)
    target_update: str = setting(
        "none",
        "confident: confident disagreeing voxels take the model's label after warmup | cl: after warmup, each "
        "epoch the given masks with the voxels confident learning flags (EMA teacher, as mtcl) corrected | band: "
        "from the start, the given masks with a band of rl.band_width voxels around their boundary relabelled "
        "by the image's intensity (ours, for one-sided noise) | shift: after warmup, every rl.shift_every epochs "
        "the given masks' systematic boundary shift, estimated against the trusted cases, undone (ours; needs "
        "trusted cases)",
        choices=("none", "confident", "cl", "band", "shift"),
        origin="paper",
    )
    band_width: int = setting(
        2,
        "band target update: half-width in voxels of the band around the given boundary",
        range=(1, 100),
        origin="ours",
    )
    band_width_max: int = setting(
        0,
        "band target update: 0 uses rl.band_width for every case; N > rl.band_width chooses each case's width "
        "from rl.band_width..N, the one whose corrected mask the image near the boundary supports best "
        "(two Gaussians' likelihood: rules.band_correct_select)",
        range=(0, 100),
        origin="experimental",
    )
    band_margin: float = setting(
        0.0,
        "band target update: log-likelihood ratio a band voxel needs to change label (0: the likelier side "
        "wins; 2.2 = ln 9: the other side 9x likelier, so partial-volume voxels keep their label)",
        range=(0.0, 100.0),
        origin="ours",
    )
    band_passes: int = setting(
        1,
        "band target update: repeat on its own result until nothing changes, at most this many passes "
        "(more than 1: only changes connected to the side they join)",
        range=(1, 100),
        origin="ours",
    )
    band_guard: bool = setting(
        True,
        "band target update: test its assumptions per case and per stretch of boundary and keep the given mask "
        "where they fail (rules.band_correct_guarded; false: the unguarded update of docs/method.md section 12)",
        origin="ours",
    )
    band_max_lookalike: float = setting(
        0.06,
        "band guard: largest share of the given mask's surroundings with the organ's intensity "
        "(rules.band_lookalike_share) at which a case is corrected",
        range=(0.0, 1.0),
        origin="ours",
    )
    band_min_shift: float = setting(
        0.5,
        "band guard: smallest net change (voxels per boundary voxel) a stretch of boundary needs to be corrected; "
        "a correct boundary's partial-volume voxels move less",
        range=(0.0, 100.0),
        origin="ours",
    )
    shift_z: float = setting(
        2.0,
        "shift target update: standard errors by which the estimated shift must differ from none to be undone",
        range=(0.0, 100.0),
        origin="ours",
    )
    shift_min: float = setting(
        1.0,
        "shift target update: smallest shift, in voxels (the finest spacing), worth undoing; on clean masks the "
        "estimate reads up to 0.64 voxels (a model segments cases it never saw a little larger than those it "
        "fitted), so a smaller one is not told from none",
        range=(0.0, 100.0),
        origin="ours",
    )
    shift_every: int = setting(
        4,
        "shift target update: epochs between its estimates in supervised_shift and supervised_band (each segments "
        "every training and trusted case); SVL-DRL's rl.target_update=shift runs at every epoch end after stage 1",
        range=(1, 1e9),
        origin="ours",
    )
    shift_per_case: bool = setting(
        True,
        "shift target update: each case's own shift, pulled towards the cases' mean by the share of their spread "
        "that is measurement noise (rules.shrunk_shifts) | false: their mean for every case",
        origin="ours",
    )
    trusted_shift: bool = setting(
        True,
        "supervised_band: with trusted cases, also undo the band-corrected masks' remaining systematic shift "
        "(the shift target update on top of the band's); without trusted cases it changes nothing",
        origin="ours",
    )
    agent_episodes: int = setting(
        50,
        "supervised_agents: episodes of the mask agents on the trusted cases at each update (every "
        "rl.shift_every epochs after the warm-up); PixelRL's recipe otherwise (rl/mask.py: 5 steps, gamma 0.95, "
        "entropy 0.01)",
        range=(1, 1e9),
        origin="ours",
    )
    agent_lr: float = setting(
        3e-3, "supervised_agents: Adam learning rate of the agents' network", range=(0.0, 1.0), origin="ours"
    )
    agent_right_share: float = setting(
        0.5,
        "supervised_agents: share of the agents' training patches that start from the trusted mask itself (to be "
        "kept) rather than from the model's mask of the trusted case (to be corrected)",
        range=(0.0, 1.0),
        origin="ours",
    )
    agent_keep: float = setting(
        0.99,
        "supervised_agents: the agents correct the given masks only if they keep the trusted masks at this label "
        "Dice against themselves (a correction that moves right masks would move right given masks too)",
        range=(0.0, 1.0),
        origin="ours",
    )
    tau: float = setting(0.9, "confidence of the target update", range=(0.5, 1.0), origin="ours")
    async_workers: int = setting(
        0, "Hogwild workers sharing the model (A3C); 0: synchronous, batched, DDP-ready", range=(0, 256)
    )
    label_step: float = setting(
        0.25, "label actions: step on the soft target q", range=(0.0, 1.0), origin="experimental"
    )
    w_prior: float = setting(
        0.5, "label actions: weight of staying near the given mask", range=(0.0, 100.0), origin="experimental"
    )
    w_teacher: float = setting(
        1.0, "label actions: weight of the EMA teacher's agreement", range=(0.0, 100.0), origin="experimental"
    )
    w_region: float = setting(
        0.0,
        "label actions: weight of the image's region fit (Chan-Vese: a voxel's label should match the "
        "foreground or background mean intensity it is closer to); 0: off",
        range=(0.0, 100.0),
        origin="experimental",
    )
    ema: float = setting(
        0.99, "EMA teacher decay (label actions, rl.reward_target=teacher)", range=(0.0, 1.0), origin="ours"
    )


@dataclass
class Infer:
    """Sliding-window inference (validation, prediction, the audit)."""

    refine_steps: int = setting(
        0, "SVL-DRL: greedy policy steps per window before segmenting", range=(0, 100)
    )
    overlap: float = setting(0.25, "window overlap", range=(0.0, 0.95))
    sw_batch: int = setting(2, "windows per forward pass", range=(1, 4096))
    mode: str = setting("gaussian", "blending of overlapping windows", choices=("gaussian", "constant"))
    threshold: float = setting(
        0.5,
        "foreground probability above which a voxel is foreground (0.5: the argmax); a run made with "
        "data.trusted_threshold predicts with the one its checkpoint_final carries",
        range=(0.001, 0.999),
        origin="ours",
    )
    train_pass: str = setting(
        "sliding",
        "how methods that segment every training case each epoch (ADELE, MTCL, rl.target_update) do it: "
        "sliding windows of the patch size, or the whole volume as one window (padded to the network's divisor; "
        "faster on small volumes, but not the test-time pass: it changed ADELE's results, docs/method.md section 12)",
        choices=("sliding", "whole"),
    )


@dataclass
class CoTeaching:
    """``coteaching`` (methods/coteaching.py)."""

    forget_rate: float = setting(0.2, "final share of voxels each network drops", range=(0.0, 1.0))
    forget_ramp: float = setting(0.3, "share of the budget the forget rate ramps up over", range=(0.0, 1.0))


@dataclass
class Adele:
    """``adele`` (methods/adele.py)."""

    threshold: float = setting(0.7, "confidence above which a voxel's label is corrected", range=(0.5, 1.0))
    consistency: float = setting(1.0, "weight of the two-scale consistency loss", range=(0.0, 100.0))


@dataclass
class MTCL:
    """``mtcl`` (methods/mtcl.py)."""

    clean_cases: int = setting(
        0,
        "the first K training cases are a clean subset (their clean masks, never corrected)",
        range=(0, 1e9),
    )
    soft: bool = setting(False, "soft correction (move flagged voxels 0.8 towards the other class)")
    ema: float = setting(0.99, "mean-teacher decay (after its early ramp)", range=(0.0, 1.0))
    consistency: float = setting(
        0.1, "weight of the student-teacher MSE after its ramp-up", range=(0.0, 100.0)
    )
    warmup: float = setting(
        0.3, "share of the budget before the first correction (the consistency ramp-up)", range=(0.0, 1.0)
    )
    noise: float = setting(0.1, "std of the Gaussian noise on the teacher's input", range=(0.0, 10.0))


@dataclass
class TLoss:
    """``tloss`` (methods/tloss.py)."""

    init: float = setting(1.0, "initial log-tolerance nu of the Student-t loss", range=(-100.0, 100.0))


@dataclass
class Config:
    """A run's whole configuration."""

    method: str = setting("supervised", "the method (trainer) by name")
    labels: str = setting("clean", "training masks: clean | noisy/NAME")
    seed: int = setting(0, "training seed", range=(0, 2**63 - 1))
    data: Data = field(default_factory=Data)
    nets: Nets = field(default_factory=Nets)
    train: Train = field(default_factory=Train)
    loss: Loss = field(default_factory=Loss)
    rl: RL = field(default_factory=RL)
    infer: Infer = field(default_factory=Infer)
    coteaching: CoTeaching = field(default_factory=CoTeaching)
    adele: Adele = field(default_factory=Adele)
    mtcl: MTCL = field(default_factory=MTCL)
    tloss: TLoss = field(default_factory=TLoss)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """The config of a nested dict of plain values (validated: :func:`svldrl.config.validate`), copied; keys
        it lacks keep their defaults."""
        d = copy.deepcopy(d)
        return cls(**{k: SECTIONS[k](**v) if k in SECTIONS else v for k, v in d.items()})

    def as_dict(self) -> dict[str, Any]:
        """The nested dict of plain values, in the schema's key order (what ``config.yaml`` holds)."""
        return dataclasses.asdict(self)


#: The sections of :class:`Config` by name (``data``: :class:`Data` ...).
SECTIONS: dict[str, type] = {
    f.name: f.default_factory
    for f in dataclasses.fields(Config)
    if f.default_factory is not dataclasses.MISSING
}


def _schema(cls: type = Config, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Dotted key -> {default, meaning, kind, choices, range} of every leaf field."""
    out: dict[str, dict[str, Any]] = {}
    defaults = cls()
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_schema(type(value), f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = {"default": value, **f.metadata}
    return out


#: Every key with its default, meaning, kind, choices and range.
SCHEMA: dict[str, dict[str, Any]] = _schema()
#: The defaults as the nested dict of plain values (``Config().as_dict()``).
DEFAULTS: dict[str, Any] = dataclasses.asdict(Config())
CHOICES: dict[str, tuple] = {k: v["choices"] for k, v in SCHEMA.items() if v["choices"]}
RANGES: dict[str, tuple[float, float]] = {k: v["range"] for k, v in SCHEMA.items() if v["range"]}
