"""Run configuration: defaults, YAML files and ``--set key=value`` overrides, validated.

Every decision of docs/method.md is a key here with the stated default, named as in the doc
(``rl.t_max``, ``rl.action_scale``, ``rl.target_update``, ``infer.refine_steps`` ...).
An unknown key or a value outside its range is a :class:`~svldrl.errors.UserError`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from svldrl.errors import UserError

DEFAULTS: dict[str, Any] = {
    "method": "supervised",
    "labels": "clean",  # clean | noisy/NAME: which training masks the run used
    "seed": 0,
    "data": {
        "modality": "auto",  # auto | mr | ct: auto reads dataset.json channel_names
        "clip_percentiles": [0.5, 99.5],  # MR-style normalisation
        "ct_window": None,  # [low, high] HU: one fixed window for CT; overrides intensity_range
        # [low, high]: CT clip range from the dataset fingerprint (foreground percentiles 0.5 / 99.5 over the
        # training cases, nnU-Net's rule); filled by training when None, kept in the run for prediction
        "intensity_range": None,
        "foreground": None,  # list of label values mapped to foreground; None: any label > 0
        "fold": 0,  # cross-validation fold of splits_final.json, or "all": every case trains, none validates
        "num_folds": 5,
        "cache": "memory",  # memory: training images in RAM | none: read at each access (bounded RAM, slower)
        "workers": 0,  # DataLoader processes cropping patches (<= cores - 1); same patches with any number
        # share of patches centred on foreground (RandCropByPosNegLabel pos / (pos + neg)); nnU-Net oversamples
        # foreground in 33% of patches: more (0.67 was tried) starves the model of background and costs
        # ~9 Dice points of false positives on the phantoms
        "pos_fraction": 0.33,
    },
    "nets": {
        "backbone": "unet",  # unet (small residual 3D U-Net, CPU) | swinunetr (MONAI parts)
        "heads": "decoders",  # decoders (three decoders, the paper) | light (one decoder, three 1x1x1 heads)
        "features": [16, 32, 64, 128],  # unet channels per level
        "feature_size": 24,  # swinunetr; a multiple of 12
        "num_classes": 2,
        # value / policy losses train the shared encoder (the paper); false: only their own decoders / heads
        "rl_grad_into_shared": True,
    },
    "train": {
        "iterations": 1000,  # total optimiser steps (the budget)
        "steps_per_epoch": 50,
        "patch": 64,  # cubic patch side
        "batch": 2,  # patches per step and rank; under torchrun the effective batch is batch x world size
        "lr": 3e-3,
        "weight_decay": 3e-5,
        "optimizer": "adamw",  # adamw | sgd
        "scheduler": "poly",  # poly (nnU-Net) | cosine | constant
        "val_every": 1,  # epochs between validations
        "checkpoint_select": "final",  # final | val (report/predict with the best-on-validation checkpoint)
        # bf16 autocast of the training forward. auto: on where the hardware has bf16 kernels (CUDA GPUs with
        # bf16, CPUs with AMX or AVX512-BF16: 1.6-1.9x faster training on the development CPU at the same Dice,
        # benchmarks/results/cpu_speed), else off; true / false force it
        "amp": "auto",
        "compile": False,  # torch.compile the network; the first epoch pays the compile
        "deterministic": False,  # deterministic algorithms: one seed gives identical weights on CPU
        "threads": 0,  # torch intra-op threads; 0 = leave torch's default
        "keep_freed_memory": True,  # CPU: glibc keeps freed blocks for reuse (engine/allocator.py)
        "device": "auto",  # auto | cpu | cuda | cuda:N
    },
    "loss": {"dice_weight": 1.0, "ce_weight": 1.0},
    "rl": {
        "action_space": "intensity",  # intensity (the paper) | label (method.md section 9)
        "t_max": 3,
        "action_scale": 0.3,
        "gamma": 0.95,
        "reward_conv": True,  # learnable 3D reward-map kernel K, initialised to identity
        "reward_conv_size": 3,
        "entropy_coef": 0.001,
        "reward": "voxel",  # voxel: our per-voxel reward | paper: one global dDice - C(f') per step (method.md 4)
        "paper_w_cc": 0.01,  # paper reward: weight of max(N_cc - 1, 0) in C
        "paper_w_tv": 0.1,  # paper reward: weight of the mean local total variation in C
        "w_dice": 1.0,
        "w_vox": 1.0,
        "w_cont": 0.1,
        "w_cc": 0.0,
        "reward_norm": True,
        "warmup": 0.3,  # stage fractions of the budget
        "transition": 0.2,
        "lam": 0.3,  # lambda: transition-stage weight of L_value
        "alpha": 0.2,  # full-RL weight of L_value
        "beta": 0.1,  # full-RL weight of L_policy
        "seg_on_refined": True,
        "target_update": "none",  # none | confident
        "tau": 0.9,
        "async_workers": 0,  # >0: Hogwild workers sharing the model (torch.multiprocessing)
        "label_step": 0.25,
        "w_prior": 0.5,
        "w_teacher": 1.0,
        "ema": 0.99,
    },
    "infer": {
        "refine_steps": 0,
        "overlap": 0.25,
        "sw_batch": 2,
        "mode": "gaussian",
    },
    "method_args": {
        "forget_rate": 0.2,  # coteaching
        "forget_ramp": 0.3,
        "adele_threshold": 0.7,
        "adele_consistency": 1.0,
        "clean_cases": 0,  # mtcl
        "mtcl_soft": False,
        "tloss_init": 1.0,
    },
}

# Allowed values / ranges; keys absent here accept any value of the default's type.
CHOICES: dict[str, tuple] = {
    "data.modality": ("auto", "mr", "ct"),
    "data.cache": ("memory", "none"),
    "nets.backbone": ("unet", "swinunetr"),
    "nets.heads": ("decoders", "light"),
    "train.optimizer": ("adamw", "sgd"),
    "train.scheduler": ("poly", "cosine", "constant"),
    "train.checkpoint_select": ("final", "val"),
    "train.amp": ("auto", True, False),
    "rl.action_space": ("intensity", "label"),
    "rl.reward": ("voxel", "paper"),
    "rl.target_update": ("none", "confident"),
    "infer.mode": ("gaussian", "constant"),
}
RANGES: dict[str, tuple[float, float]] = {
    "train.iterations": (1, 1e9),
    "train.steps_per_epoch": (1, 1e9),
    "train.patch": (8, 1024),
    "train.batch": (1, 4096),
    "train.lr": (0.0, 10.0),
    "train.val_every": (1, 1e9),
    "data.fold": (0, 99),
    "data.num_folds": (2, 100),
    "data.pos_fraction": (0.0, 1.0),
    "data.workers": (0, 256),
    "rl.t_max": (1, 100),
    "rl.action_scale": (0.0, 1.0),
    "rl.gamma": (0.0, 1.0),
    "rl.warmup": (0.0, 1.0),
    "rl.transition": (0.0, 1.0),
    "rl.lam": (0.0, 1.0),
    "rl.alpha": (0.0, 1.0),
    "rl.beta": (0.0, 1.0),
    "rl.tau": (0.5, 1.0),
    "rl.label_step": (0.0, 1.0),
    "rl.ema": (0.0, 1.0),
    "rl.async_workers": (0, 256),
    "rl.entropy_coef": (0.0, 10.0),
    "infer.refine_steps": (0, 100),
    "infer.overlap": (0.0, 0.95),
    "method_args.forget_rate": (0.0, 1.0),
    "method_args.forget_ramp": (0.0, 1.0),
    "method_args.adele_threshold": (0.5, 1.0),
    "nets.num_classes": (2, 2),
}


def get(cfg: dict, key: str) -> Any:
    """``get(cfg, "rl.t_max")``: read a dotted key."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"unknown config key '{key}' (from {source})")
        if i < len(parts) - 1:
            node = node[part]
    node[parts[-1]] = value


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


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


def validate(cfg: dict) -> dict:
    """Check types, choices and ranges of every key; return ``cfg``."""
    flat_default = _flatten(DEFAULTS)
    for key, value in _flatten(cfg).items():
        if key not in flat_default:
            raise UserError(f"unknown config key '{key}'")
        default = flat_default[key]
        if key == "data.fold" and value == "all":
            continue  # nnU-Net's fold 'all': every training case, no validation
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise UserError(f"config key '{key}' expects true/false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"config key '{key}' expects a number, got {value!r}")
            if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
                if not value.is_integer():
                    raise UserError(f"config key '{key}' expects an integer, got {value!r}")
                _set(cfg, key, int(value), "validation")
        elif isinstance(default, list):
            if not isinstance(value, list):
                raise UserError(f"config key '{key}' expects a list like {default!r}, got {value!r}")
            kinds = {type(v) for v in default}
            if kinds and not all(type(v) in kinds or (float in kinds and type(v) is int) for v in value):
                raise UserError(
                    f"config key '{key}' expects a list of numbers like {default!r}, got {value!r}"
                )
        if key in CHOICES and value not in CHOICES[key]:
            raise UserError(
                f"config key '{key}' must be one of {', '.join(map(str, CHOICES[key]))}, got {value!r}"
            )
        if key in RANGES:
            lo, hi = RANGES[key]
            if not (lo <= value <= hi):
                raise UserError(f"config key '{key}' = {value!r} is out of range [{lo:g}, {hi:g}]")
    for key in ("data.ct_window", "data.intensity_range"):
        value = get(cfg, key)
        if value is not None and not (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and value[0] < value[1]
        ):
            raise UserError(f"config key '{key}' expects [low, high] with low < high, got {value!r}")
    if get(cfg, "rl.warmup") + get(cfg, "rl.transition") > 1.0:
        raise UserError("config keys rl.warmup + rl.transition must not exceed 1")
    if get(cfg, "rl.alpha") + get(cfg, "rl.beta") > 1.0:
        raise UserError("config keys rl.alpha + rl.beta must not exceed 1")
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
        for key, value in _flatten(data).items():
            _set(cfg, key, value, str(path))
    for text in overrides or []:
        key, value = parse_override(text)
        _set(cfg, key, value, "--set")
    return validate(cfg)


def dump_config(cfg: dict) -> str:
    """YAML text of a resolved config."""
    return yaml.safe_dump(cfg, sort_keys=False)
