"""Run configuration: typed sections with their defaults, choices and ranges; YAML files and ``--set
key=value`` overrides, validated.

Every decision of docs/method.md is a key here with the stated default, named as in the doc (``rl.t_max``,
``rl.action_scale``, ``rl.target_update``, ``infer.refine_steps`` ...). Each section is a dataclass whose
fields carry their default, the allowed choices or range and a one-line meaning; :data:`DEFAULTS`, the
validation and ``svldrl train --help`` are derived from them. A method's own settings form the section of its
name (``coteaching.*``, ``adele.*``, ``mtcl.*``, ``tloss.*``; SVL-DRL's are ``rl.*``). At run time a config is
a nested dict of plain values (what ``config.yaml`` holds); an unknown key or a value of the wrong type,
outside its range or not among its choices is a :class:`~svldrl.errors.UserError`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from svldrl.errors import UserError

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

    action_space: str = setting(
        "intensity",
        "intensity (the paper) | label (agents refine the target, section 9)",
        choices=("intensity", "label"),
        origin="paper",
    )
    reward: str = setting(
        "voxel",
        "voxel: our per-voxel reward | paper: one global dDice - C(f') per step (section 4)",
        choices=("voxel", "paper"),
        origin="ours",
    )
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
    target_update: str = setting(
        "none",
        "confident: confident disagreeing voxels take the model's label after warmup | cl: after warmup, each "
        "epoch the given masks with the voxels confident learning flags (EMA teacher, as mtcl) corrected | band: "
        "from the start, the given masks with a band of rl.band_width voxels around their boundary relabelled "
        "by the image's intensity (ours, for one-sided noise)",
        choices=("none", "confident", "cl", "band"),
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
#: The defaults as the nested dict a run's config is.
DEFAULTS: dict[str, Any] = dataclasses.asdict(Config())
CHOICES: dict[str, tuple] = {k: v["choices"] for k, v in SCHEMA.items() if v["choices"]}
RANGES: dict[str, tuple[float, float]] = {k: v["range"] for k, v in SCHEMA.items() if v["range"]}
#: Keys that do not change what a run computes (a rerun on another machine may differ in them).
NEUTRAL_KEYS = frozenset(
    {
        "train.threads",
        "train.memory_format",  # as threads: the kernels' summation order, not the computation
        "train.keep_freed_memory",
        "train.device",
        "data.workers",
        "data.cache",
        "infer.sw_batch",
    }
)
#: The methods each method section belongs to: a run of another method may not set them (they would do nothing).
SECTION_OWNERS = {
    "rl": ("svldrl", "supervised_confident", "supervised_band", "tloss_band"),
    "coteaching": ("coteaching",),
    "adele": ("adele",),
    "mtcl": ("mtcl",),
    "tloss": ("tloss", "tloss_band", "svldrl"),  # svldrl: rl.seg_loss=tloss
}
#: Keys renamed since runs were first saved: old config.yaml files still load.
RENAMED = {
    "method_args.forget_rate": "coteaching.forget_rate",
    "method_args.forget_ramp": "coteaching.forget_ramp",
    "method_args.adele_threshold": "adele.threshold",
    "method_args.adele_consistency": "adele.consistency",
    "method_args.clean_cases": "mtcl.clean_cases",
    "method_args.mtcl_soft": "mtcl.soft",
    "method_args.tloss_init": "tloss.init",
}


def _uses_band(flat: dict[str, Any]) -> bool:
    return flat.get("rl.target_update") == "band" or flat.get("method") in ("supervised_band", "tloss_band")


#: Keys added with a default that differs from what runs saved before them did: the value those runs were made
#: with, and which runs the key matters to (to the others its value changes nothing).
INTRODUCED: dict[str, tuple[Any, Any]] = {
    "rl.band_guard": (False, _uses_band),  # the band update ran unguarded before rl.band_guard (2026-12-06)
}


def differences(asked: dict, saved: dict, allowed: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, asked value)`` for every setting in which ``asked`` would compute something else than
    the run ``saved`` describes: neither a :data:`NEUTRAL_KEYS` key (device, threads, layout ...) nor one of
    ``allowed``, nor a key newer than the saved run asked at the value that run was made with
    (:data:`INTRODUCED`, else its default), nor a value the trainer resolves from the data. The one comparison
    behind ``svldrl train --resume`` and the benchmark's reuse of finished runs."""
    a, s, defaults = flatten(asked), migrate(flatten(saved)), flatten(DEFAULTS)
    out = []
    for key in sorted(set(a) | set(s)):
        if key in NEUTRAL_KEYS or key in allowed or a.get(key) == s.get(key):
            continue
        if key not in s and key in INTRODUCED:
            legacy, matters = INTRODUCED[key]
            if not matters(a) or a.get(key) == legacy:
                continue  # the run predates this key and was made as asked, or the key changes nothing here
        elif key not in s and key in defaults and a.get(key) == defaults[key]:
            continue  # the run predates this key and was made with what is now its default
        if key in ("data.modality", "data.intensity_range") and a.get(key) in ("auto", None):
            continue  # the trainer writes what it resolved from the dataset (modality, CT fingerprint range)
        out.append((key, s.get(key), a.get(key)))
    return out


#: The presets shipped with svldrl (``svldrl/presets/NAME.yaml``; ``--preset NAME``).
PRESET_DIR = Path(__file__).parent / "presets"


def presets() -> list[str]:
    """The names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The config file of the preset ``name``.

    Raises:
        UserError: no such preset.
    """
    path = PRESET_DIR / f"{name}.yaml"
    if not name or "/" in name or not path.is_file():
        raise UserError(f"unknown preset '{name}' (choose from: {', '.join(presets())})")
    return path


def preset_overrides(name: str) -> list[str]:
    """The preset's settings as ``key=value`` overrides, its ``method`` first."""
    data = yaml.safe_load(preset_path(name).read_text()) or {}
    return [f"{k}={v if not isinstance(v, bool) else str(v).lower()}" for k, v in flatten(data).items()]


def get(cfg: dict, key: str) -> Any:
    """``get(cfg, "rl.t_max")``: read a dotted key."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg: dict, key: str, value: Any, source: str) -> None:
    key = RENAMED.get(key, key)
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"unknown config key '{key}' (from {source})")
        if i < len(parts) - 1:
            node = node[part]
    node[parts[-1]] = value


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"train.patch": 64, ...}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def migrate(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config with renamed keys (:data:`RENAMED`) under their current names."""
    return {RENAMED.get(k, k): v for k, v in flat.items()}


def parse_override(text: str) -> tuple[str, Any]:
    """``"rl.t_max=5"`` -> ``("rl.t_max", 5)``; the value is parsed as YAML.

    A value that YAML cannot read is kept as a plain string (``train.device=cuda:0``), except one that
    opens a list or a mapping, which is a mistake (``nets.features=[4,8``).
    """
    if "=" not in text:
        raise UserError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if raw.strip()[:1] in ("[", "{"):
            reason = str(exc).splitlines()[0]
            raise UserError(f"--set {key.strip()}: malformed value '{raw}' ({reason})") from None
        value = raw
    return key.strip(), value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_value(key: str, value: Any, spec: dict[str, Any]) -> Any:
    """``value`` checked against the key's kind, choices and range (an integral float becomes an int)."""
    kind = spec["kind"]

    def fail(expected: str) -> UserError:
        return UserError(f"config key '{key}' expects {expected}, got {value!r}")

    if kind == "bool" and not isinstance(value, bool):
        raise fail("true/false")
    if kind in ("int", "float"):
        if not _is_number(value):
            raise fail("a number")
        if kind == "int" and isinstance(value, float):
            if not value.is_integer():
                raise fail("an integer")
            value = int(value)
    if kind in ("ints", "floats"):
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            raise fail(f"a list of numbers like {spec['default']!r}")
        if kind == "ints" and not all(float(v).is_integer() for v in value):
            raise fail(f"a list of integers like {spec['default']!r}")
        value = [int(v) for v in value] if kind == "ints" else value
    if kind == "window" and value is not None:
        if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
            raise fail("[low, high] or null")
        if not value[0] < value[1]:
            raise fail("[low, high] with low < high")
    if kind == "labels" and value is not None:
        if not (
            isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise fail("a list of label values or null")
    if kind == "trusted" and not (isinstance(value, str) and value.strip()):
        raise fail("auto, none or the path of a list of case ids")
    if (
        kind == "fold"
        and value != "all"
        and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
    ):
        raise fail("a fold number or all")
    if spec["choices"] and value not in spec["choices"]:
        raise UserError(
            f"config key '{key}' must be one of {', '.join(map(str, spec['choices']))}, got {value!r}"
        )
    if spec["range"] and kind in ("int", "float"):
        lo, hi = spec["range"]
        if not lo <= value <= hi:
            raise UserError(f"config key '{key}' = {value!r} is out of range [{lo:g}, {hi:g}]")
    return value


def validate(cfg: dict) -> dict:
    """Check every key's type, choices and range, and the rules between keys; return ``cfg``."""
    for name, value in flatten(cfg).items():
        if name not in SCHEMA:
            raise UserError(f"unknown config key '{name}'")
        checked = _check_value(name, value, SCHEMA[name])
        if checked is not value:
            _set(cfg, name, checked, "validation")
        section = name.split(".")[0]
        owners = SECTION_OWNERS.get(section)
        if owners and cfg.get("method") not in owners and checked != SCHEMA[name]["default"]:
            raise UserError(
                f"config key '{name}' is a setting of {' / '.join(owners)}; this run's method is "
                f"{cfg.get('method')}, which would ignore it"
            )
    if get(cfg, "rl.warmup") + get(cfg, "rl.transition") > 1.0:
        raise UserError("config keys rl.warmup + rl.transition must not exceed 1")
    if get(cfg, "rl.alpha") + get(cfg, "rl.beta") > 1.0:
        raise UserError("config keys rl.alpha + rl.beta must not exceed 1")
    if 0 < get(cfg, "rl.band_width_max") <= get(cfg, "rl.band_width"):
        raise UserError(
            f"config key 'rl.band_width_max' = {get(cfg, 'rl.band_width_max')} must be 0 (one width for every "
            f"case) or larger than rl.band_width = {get(cfg, 'rl.band_width')}"
        )
    if get(cfg, "nets.backbone") == "swinunetr" and get(cfg, "nets.feature_size") % 12:
        raise UserError("config key 'nets.feature_size' must be a multiple of 12 for swinunetr")
    if get(cfg, "nets.backbone") == "swinunetr" and (
        get(cfg, "train.patch") % 32 or get(cfg, "train.patch") < 64
    ):
        # Swin UNETR's 1/32 bottleneck must hold more than one voxel for instance norm
        raise UserError("config key 'train.patch' must be a multiple of 32 and at least 64 for swinunetr")
    features = get(cfg, "nets.features")
    if len(features) < 2 or any(f < 1 for f in features):
        raise UserError(
            f"config key 'nets.features' expects at least two positive channel counts, got {features!r}"
        )
    if get(cfg, "nets.backbone") == "unet" and get(cfg, "train.patch") % 2 ** (len(features) - 1):
        raise UserError(
            f"config key 'train.patch' = {get(cfg, 'train.patch')} must be a multiple of {2 ** (len(features) - 1)} "
            f"for a unet with {len(features)} levels"
        )
    return cfg


def load_config(
    files: list[str | Path] | None = None, overrides: list[str] | None = None, base: dict | None = None
) -> dict:
    """Defaults (or ``base``), then each YAML file, then each ``key=value`` override; validated."""
    cfg = copy.deepcopy(base if base is not None else DEFAULTS)
    for f in files or []:
        path = Path(f)
        if not path.is_file():
            raise UserError("config file not found", path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"malformed YAML ({str(exc).splitlines()[0]})", path) from None
        if not isinstance(data, dict):
            raise UserError("config file must hold a mapping of keys", path)
        for name, value in flatten(data).items():
            _set(cfg, name, value, str(path))
    for text in overrides or []:
        key, value = parse_override(text)
        _set(cfg, key, value, "--set")
    return validate(cfg)


def dump_config(cfg: dict) -> str:
    """YAML text of a resolved config."""
    return yaml.safe_dump(cfg, sort_keys=False)
