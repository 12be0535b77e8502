"""SFDA-style noise: masks predicted by a model trained on a shifted image domain (method.md section 8).

A *source* model is trained, with the CLEAN masks, on a shifted copy of the training images (a seeded
domain shift: gamma, a random monotone intensity curve, optionally a folded part of the range, a
contrast change, a smooth bias field and blur), then segments the ORIGINAL images. Its thresholded
foreground probability becomes the noisy mask of a corrupted case. The errors are those of a model
used across a domain gap, as in source-free domain adaptation, where pseudo-labels come from a source
model: image-dependent, spatially coherent and biased, unlike morphological noise.

The domain shift is one draw per noisy set (a domain is one consistent mapping), from the noise seed;
the bias field differs per image. The source model is trained with ``train.deterministic=true`` and
the noise seed, so the same seed gives the same masks on the same machine and torch build.

Layout: the shifted dataset and the source run are cached in ``labelsTr_noisy/<NAME>.source/``
(``source.json``, ``dataset/``, ``run/``), reused when the settings match and resumed after a kill;
``params.source_run`` instead names an existing run folder (``svldrl train`` output), e.g. a model
trained on another dataset, whose own normalisation is then applied to the original images.

Empty predictions: a corrupted case whose clean mask has foreground never gets an empty noisy mask.
**decision**: first the largest connected component of ``probability > fallback_threshold`` (the
model's own best guess, so the noise stays model-made), and only when that is empty too the clean
mask dilated by one voxel (a 3x3x3 cube). The per-case report records which was used
(``fallback``: ``none`` / ``low_threshold_component`` / ``dilated_clean``).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from svldrl.errors import UserError

SOURCE_SUFFIX = ".source"
SOURCE_JSON = "source.json"
SOURCE_VERSION = 1
#: Coarse grid of the smooth bias field (control points per axis, cubic-spline upsampled).
BIAS_GRID = 4
#: Interior knots of the random monotone intensity curve.
CURVE_KNOTS = 4


# ----------------------------------------------------------------------------------------------------------
# Parameters


def check_sfda_params(
    threshold: float = 0.5,
    fallback_threshold: float = 0.1,
    strength: float = 0.4,
    gamma_max: float = 1.5,
    invert: float = 0.2,
    contrast_max: float = 1.5,
    bias: float = 0.3,
    blur: float = 1.0,
    iterations: int = 300,
    patch: int = 32,
    features: Sequence[int] = (8, 16, 32, 64),
    batch: int = 2,
    train_set: Sequence[str] = (),
    source_run: str | None = None,
    ct_window: Sequence[float] | None = None,
) -> None:
    """Raise ValueError naming the first invalid SFDA parameter (the defaults are the protocol's)."""
    for key, value, lo, hi in (
        ("threshold", threshold, 0.0, 1.0),
        ("fallback_threshold", fallback_threshold, 0.0, 1.0),
        ("strength", strength, 0.0, 1.0),
        ("invert", invert, 0.0, 0.9),
        ("bias", bias, 0.0, 2.0),
        ("blur", blur, 0.0, 10.0),
    ):
        if not _number(value) or not lo <= value <= hi:
            raise ValueError(f"{key} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
    if fallback_threshold > threshold:
        raise ValueError(f"fallback_threshold ({fallback_threshold}) must not exceed threshold ({threshold})")
    for key, value in (("gamma_max", gamma_max), ("contrast_max", contrast_max)):
        if not _number(value) or not 1.0 <= value <= 10.0:
            raise ValueError(f"{key} must be a number in [1, 10], got {value!r}")
    for key, value, lo in (("iterations", iterations, 1), ("patch", patch, 8), ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{key} must be an integer >= {lo}, got {value!r}")
    if patch % 8:
        raise ValueError(f"patch must be a multiple of 8 (the U-Net's downsampling), got {patch}")
    if (
        not isinstance(features, (list, tuple))
        or len(features) < 2
        or not all(isinstance(f, (int, np.integer)) and not isinstance(f, bool) and f >= 1 for f in features)
    ):
        raise ValueError(f"features must be a list of at least 2 positive integers, got {features!r}")
    if not isinstance(train_set, (list, tuple)) or not all(
        isinstance(s, str) and "=" in s for s in train_set
    ):
        raise ValueError(f"train_set must be a list of key=value config overrides, got {train_set!r}")
    if source_run is not None and (not isinstance(source_run, str) or not source_run.strip()):
        raise ValueError(f"source_run must be a run folder path, got {source_run!r}")
    if ct_window is not None and (
        not isinstance(ct_window, (list, tuple))
        or len(ct_window) != 2
        or not all(_number(v) for v in ct_window)
        or not ct_window[0] < ct_window[1]
    ):
        raise ValueError(f"ct_window must be [low, high] HU with low < high, got {ct_window!r}")


def sfda_noise(
    clean: np.ndarray,
    rng: np.random.Generator,
    threshold: float = 0.5,
    fallback_threshold: float = 0.1,
    strength: float = 0.4,
    gamma_max: float = 1.5,
    invert: float = 0.2,
    contrast_max: float = 1.5,
    bias: float = 0.3,
    blur: float = 1.0,
    iterations: int = 300,
    patch: int = 32,
    features: Sequence[int] = (8, 16, 32, 64),
    batch: int = 2,
    train_set: Sequence[str] = (),
    source_run: str | None = None,
    ct_window: Sequence[float] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Registry entry of the protocol (its signature gives the parameters and defaults).

    Unlike the morphological protocols, SFDA noise needs the images and a trained source model, so a
    mask alone cannot be corrupted: :func:`svldrl.noise.run.run_noise` calls :func:`prepare_sfda`.

    Raises:
        UserError: always.
    """
    raise UserError("sfda noise needs the training images and a source model: use run_noise / svldrl noise")


def _number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float, np.number)) and math.isfinite(x)


# ----------------------------------------------------------------------------------------------------------
# The domain shift


def draw_shift(
    rng: np.random.Generator,
    strength: float = 0.4,
    gamma_max: float = 1.5,
    invert: float = 0.2,
    contrast_max: float = 1.5,
    bias: float = 0.3,
    blur: float = 1.0,
) -> dict[str, Any]:
    """One seeded domain shift (JSON-ready numbers), applied to every image by :func:`apply_shift`.

    ``strength`` mixes a random monotone piecewise-linear curve with the identity; ``invert`` is the
    width (fraction of [0, 1]) of a window whose upper half is folded back (intensities there run
    downwards: a contrast inversion of part of the range, continuous at both ends); 0 keeps the
    mapping monotone.
    """
    gamma = float(np.exp(rng.uniform(-math.log(gamma_max), math.log(gamma_max))))
    knots_y = np.sort(rng.uniform(0.0, 1.0, CURVE_KNOTS))
    xs = np.linspace(0.0, 1.0, CURVE_KNOTS + 2)
    ys = (1.0 - strength) * xs + strength * np.concatenate([[0.0], knots_y, [1.0]])
    fold: list[float] | None = None
    if invert > 0:
        a = float(rng.uniform(0.1, 0.9 - invert))
        fold = [a, a + float(invert)]
    contrast = float(np.exp(rng.uniform(-math.log(contrast_max), math.log(contrast_max))))
    sigma = float(rng.uniform(0.5, 1.0) * blur) if blur > 0 else 0.0
    return {
        "gamma": gamma,
        "curve_x": [float(v) for v in xs],
        "curve_y": [float(v) for v in ys],
        "fold": fold,
        "contrast": contrast,
        "bias": float(bias),
        "blur_sigma": sigma,
    }


def intensity_curve(x: np.ndarray, shift: dict[str, Any]) -> np.ndarray:
    """The point-wise part of the shift (gamma, curve, fold, contrast) on an image in [0, 1]."""
    y = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0) ** np.float32(shift["gamma"])
    y = np.interp(y, shift["curve_x"], shift["curve_y"]).astype(np.float32)
    if shift["fold"] is not None:
        a, b = shift["fold"]
        m = 0.5 * (a + b)
        # Knots (0,0) (a,a) (m,b) (b,a) (1,1): steeper rise to the middle of the window, then down to a,
        # then up again, so [m, b] is inverted and the curve stays continuous.
        y = np.interp(y, [0.0, a, m, b, 1.0], [0.0, a, b, a, 1.0]).astype(np.float32)
    return (0.5 + shift["contrast"] * (y - 0.5)).astype(np.float32)


def bias_field(shape: Sequence[int], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field exp(amplitude * f), f in [-1, 1] from a cubic-upsampled coarse grid."""
    coarse = rng.standard_normal((BIAS_GRID,) * 3)
    coarse /= max(float(np.abs(coarse).max()), 1e-6)
    zoom = [s / BIAS_GRID for s in shape]
    f = ndimage.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)[tuple(slice(0, s) for s in shape)]
    if f.shape != tuple(shape):  # rounding of zoom's output size: pad by edge values
        f = np.pad(f, [(0, s - n) for s, n in zip(shape, f.shape, strict=True)], mode="edge")
    return np.exp(amplitude * np.clip(f, -1.0, 1.0)).astype(np.float32)


def apply_shift(image01: np.ndarray, shift: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Shifted float32 copy of a normalised image (same shape); ``rng`` draws this image's bias field."""
    y = intensity_curve(image01, shift)
    if shift["bias"] > 0:
        y = y * bias_field(y.shape, shift["bias"], rng)
    if shift["blur_sigma"] > 0:
        y = ndimage.gaussian_filter(y, shift["blur_sigma"])
    return np.asarray(y, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# Probability -> mask


def mask_from_probability(
    prob: np.ndarray, clean: np.ndarray, threshold: float = 0.5, fallback_threshold: float = 0.1
) -> tuple[np.ndarray, str]:
    """Thresholded prediction, never empty when ``clean`` has foreground (see the module docstring).

    Returns:
        (uint8 mask, which rule made it: ``none`` / ``low_threshold_component`` / ``dilated_clean``).
    """
    mask = (prob > threshold).astype(np.uint8)
    if mask.any() or not clean.any():
        return mask, "none"
    low = prob > fallback_threshold
    if low.any():
        labels, n = ndimage.label(low, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        return (labels == 1 + int(np.argmax(sizes))).astype(np.uint8), "low_threshold_component"
    return ndimage.binary_dilation(clean > 0, structure=np.ones((3, 3, 3))).astype(np.uint8), "dilated_clean"


# ----------------------------------------------------------------------------------------------------------
# Source model and per-case noise


class _Info:
    """Reporter adapter for the trainer: info lines go to run_noise's callback."""

    def __init__(self, info: Callable[[str], None]) -> None:
        self._info = info

    def info(self, message: str) -> None:
        self._info(f"sfda source: {message}")

    def progress(self, label: str, done: int, total: int, started: float, extra: str = "") -> None:
        pass


def source_folder(noisy_dir: Path) -> Path:
    """``labelsTr_noisy/NAME`` -> ``labelsTr_noisy/NAME.source``."""
    return noisy_dir.with_name(noisy_dir.name + SOURCE_SUFFIX)


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _normalised(case: Any, modality: str, ct_window: Any) -> tuple[np.ndarray, Any]:
    from svldrl.data.io import read_volume
    from svldrl.data.normalize import normalize_intensity

    vol = read_volume(case.image, key=case.image_key)
    return normalize_intensity(vol.array, modality, (0.5, 99.5), ct_window), vol


def _source_cfg(params: dict[str, Any], seed: int, n_cases: int) -> dict:
    from svldrl import config as C

    iterations = int(params["iterations"])
    overrides = [
        "method=supervised",
        f"seed={int(seed)}",
        "train.deterministic=true",
        f"train.iterations={iterations}",
        f"train.steps_per_epoch={min(50, iterations)}",
        f"train.patch={int(params['patch'])}",
        f"train.batch={int(params['batch'])}",
        f"nets.features={json.dumps([int(f) for f in params['features']])}",
        # The shifted images are written already in [0, 1]-ish units; percentile normalisation (as for
        # MR) is applied to them and, identically, to the original images at prediction time.
        "data.modality=mr",
        "data.foreground=null",
        # Leave-one-out fold 0: the trainer always holds out a validation fold; one case is the least
        # (the source model should know the anatomy, the domain gap is what makes the noise).
        f"data.num_folds={max(2, min(100, n_cases))}",
        *params["train_set"],
    ]
    return C.load_config(overrides=overrides)


def _build_source(
    ds: Any,
    cases: list[Any],
    params: dict[str, Any],
    seed: int,
    folder: Path,
    foreground: list[int] | None,
    info: Callable[[str], None],
) -> tuple[Path, dict[str, Any]]:
    """Shifted dataset + trained source run in ``folder`` (reused / resumed when the settings match)."""
    from svldrl.data.dataset import check_mask
    from svldrl.data.io import read_volume, write_nifti, write_text
    from svldrl.engine.train import train

    shift_keys = ("strength", "gamma_max", "invert", "contrast_max", "bias", "blur")
    train_keys = ("iterations", "patch", "features", "batch", "train_set", "ct_window")
    settings = json.loads(
        json.dumps(
            {
                "version": SOURCE_VERSION,
                "seed": int(seed),
                "shift_params": {k: params[k] for k in shift_keys},
                "train_params": {k: params[k] for k in train_keys},
                "foreground": foreground,
                "modality": ds.modality,
                "cases": [c.case_id for c in cases],
            }
        )
    )
    shift = draw_shift(
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,))),
        **{k: params[k] for k in shift_keys},
    )
    run_dir, data_dir = folder / "run", folder / "dataset"
    stamp = folder / SOURCE_JSON
    if folder.exists():
        try:
            old = json.loads(stamp.read_text())
        except (OSError, ValueError):
            raise UserError(
                f"exists but is not an svldrl SFDA source folder (no readable {SOURCE_JSON}); remove it",
                folder,
            ) from None
        if old.get("settings") != settings:
            info(f"sfda: source model in {folder} was made with other settings; rebuilding it")
            shutil.rmtree(folder)
    if (run_dir / "checkpoint_final.pt").is_file():
        info(f"sfda: reusing source model {run_dir}")
        return run_dir, shift

    # source.json first, so a killed build is recognised as ours and resumed (the data are rewritten
    # identically: everything is a function of the seed).
    write_text(stamp, _dump({"settings": settings, "shift": shift}))
    info(f"sfda: writing {len(cases)} shifted training images to {data_dir}")
    modality = ds.modality
    for index, case in enumerate(cases):
        image, vol = _normalised(case, modality, params["ct_window"])
        shifted = apply_shift(
            image, shift, np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, index)))
        )
        label = read_volume(case.label, key=case.label_key)
        clean = check_mask(label.array, Path(case.label), foreground, allow_empty=True)
        if clean.shape != shifted.shape:
            raise UserError(f"image shape {shifted.shape} differs from mask shape {clean.shape}", case.image)
        # Both files take the image's affine: the trainer checks that image and mask share a grid.
        write_nifti(data_dir / "imagesTr" / f"{case.case_id}_0000.nii.gz", shifted, vol.affine)
        write_nifti(data_dir / "labelsTr" / f"{case.case_id}.nii.gz", clean, vol.affine)
    dataset_json = {
        "channel_names": {"0": "shifted"},
        "labels": {"background": 0, "foreground": 1},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": "sfda_source_domain",
        "description": "Training images of the dataset under a seeded domain shift (svldrl.noise.sfda)",
    }
    write_text(data_dir / "dataset.json", _dump(dataset_json))
    cfg = _source_cfg(params, seed, len(cases))
    resume = (run_dir / "checkpoint_latest.pt").is_file()
    info(
        f"sfda: training the source model ({cfg['train']['iterations']} iterations"
        f"{', resuming' if resume else ''}) in {run_dir}"
    )
    import torch

    # The trainer switches torch to deterministic algorithms process-wide; put the caller's setting back.
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        train(data_dir, "clean", run_dir, cfg, resume=resume, reporter=_Info(info))
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    return run_dir, shift


def predict_probability(method: type, net: Any, cfg: dict, image: np.ndarray) -> np.ndarray:
    """Foreground probability (float32, the image's shape) of a normalised image by sliding window."""
    import torch
    from monai.inferers import sliding_window_inference

    device = next(net.parameters()).device
    ic = cfg["infer"]
    roi = (int(cfg["train"]["patch"]),) * 3
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    with torch.no_grad():
        logits = sliding_window_inference(
            x,
            roi,
            int(ic["sw_batch"]),
            method.make_predictor(net, cfg),
            overlap=ic["overlap"],
            mode=ic["mode"],
            sw_device=device,
            device=torch.device("cpu"),
        )
    return torch.softmax(logits.float(), 1)[0, 1].numpy().astype(np.float32)


def prepare_sfda(
    ds: Any,
    cases: list[Any],
    params: dict[str, Any],
    seed: int,
    noisy_dir: Path,
    foreground: list[int] | None,
    info: Callable[[str], None],
) -> Callable[[int, Any, np.ndarray], tuple[np.ndarray, dict[str, Any]]]:
    """Train (or reuse) the source model; return ``per_case(index, case, clean) -> (noisy, operation)``.

    Args:
        ds: the dataset (clean labels).
        cases: its training cases sorted by id (the order of the noise seeds).
        params: resolved protocol parameters.
        seed: the noise seed (domain shift, bias fields and the source model's training seed).
        noisy_dir: the final folder of the noisy set; the source cache sits beside it.
        foreground: label values mapped to foreground, or None.
        info: progress callback.
    """
    from svldrl.data.normalize import normalize_intensity
    from svldrl.engine.predict import load_run

    if params["source_run"]:
        run_dir = Path(params["source_run"]).expanduser().resolve()
        if not (run_dir / "checkpoint_final.pt").is_file():
            raise UserError("sfda source_run is not a finished run folder (no checkpoint_final.pt)", run_dir)
        shift: dict[str, Any] | None = None
        where = str(run_dir)
    else:
        run_dir, shift = _build_source(ds, cases, params, seed, source_folder(noisy_dir), foreground, info)
        where = f"{noisy_dir.name}{SOURCE_SUFFIX}/run"
    method, net, cfg = load_run(run_dir, checkpoint="final", device=cfg_device(params))
    dcfg = cfg["data"]

    def per_case(index: int, case: Any, clean: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        if shift is None:
            # An external model: the original image gets that run's own normalisation.
            from svldrl.data.io import read_volume

            raw = read_volume(case.image, key=case.image_key).array
            modality = dcfg["modality"] if dcfg["modality"] != "auto" else (case.modality or "mr")
            model_input = normalize_intensity(
                raw, modality, dcfg["clip_percentiles"], dcfg["ct_window"], dcfg["intensity_range"]
            )
        else:
            # Our source model saw normalise(shift(x)); the original domain is normalise(x).
            x, _ = _normalised(case, ds.modality, params["ct_window"])
            model_input = normalize_intensity(x, "mr", dcfg["clip_percentiles"], None)
        if model_input.shape != clean.shape:
            raise UserError(
                f"image shape {model_input.shape} differs from its mask's {clean.shape}", case.image
            )
        prob = predict_probability(method, net, cfg, model_input)
        noisy, fallback = mask_from_probability(
            prob, clean, params["threshold"], params["fallback_threshold"]
        )
        op = {
            "operation": "sfda",
            "threshold": params["threshold"],
            "fallback": fallback,
            "source_run": where,
            "shift": shift,
        }
        return noisy, op

    return per_case


def cfg_device(params: dict[str, Any]) -> str:
    """Device of the source model's inference: the ``train.device`` of ``train_set`` if given, else auto."""
    for item in params.get("train_set") or ():
        key, _, value = item.partition("=")
        if key.strip() == "train.device":
            return value.strip()
    return "auto"
