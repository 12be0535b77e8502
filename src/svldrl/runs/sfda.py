"""The SFDA-style noise protocol's source model: trained on a domain-shifted copy of the training images,
then asked to segment the originals (svldrl.noise.sfda has the shift, the parameters and the thresholding).

It lives above the methods because it trains a model (``supervised``) and loads a run folder; ``svldrl
noise --protocol sfda`` reaches it through :func:`svldrl.runs.run_noise`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from svldrl import config as C
from svldrl.data.dataset import check_mask
from svldrl.data.io import read_volume, write_nifti, write_text
from svldrl.data.normalize import normalize_intensity
from svldrl.engine.predict import predict_probability
from svldrl.errors import UserError
from svldrl.methods import section_owners
from svldrl.noise.sfda import (
    SOURCE_JSON,
    SOURCE_SUFFIX,
    SOURCE_VERSION,
    apply_shift,
    draw_shift,
    mask_from_probability,
    source_folder,
)
from svldrl.reporter import python_warning
from svldrl.runs.run import load_run, train
from svldrl.settings import Config


class _Info:
    """Reporter adapter for the trainer: info lines go to run_noise's callback, warnings are Python warnings."""

    def __init__(self, info: Callable[[str], None]) -> None:
        self._info = info

    def info(self, message: str) -> None:
        self._info(f"sfda source: {message}")

    def warn(self, message: str) -> None:
        # run_noise hands SFDA an info callback only; a Python warning reaches the command line's warn
        python_warning(f"sfda source: {message}")

    def progress(self, label: str, done: int, total: int, started: float, extra: str = "") -> None:
        pass


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _normalised(case: Any, modality: str, ct_window: Any) -> tuple[np.ndarray, Any]:
    vol = read_volume(case.image, key=case.image_key)
    return normalize_intensity(vol.array, modality, (0.5, 99.5), ct_window), vol


def _source_cfg(params: dict[str, Any], seed: int, n_cases: int) -> Config:
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
    return C.load_config(overrides=overrides, owners=section_owners())


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
        f"sfda: training the source model ({cfg.train.iterations} iterations"
        f"{', resuming' if resume else ''}) in {run_dir}"
    )
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
    dcfg = cfg.data

    def per_case(index: int, case: Any, clean: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        if shift is None:
            # An external model: the original image gets that run's own normalisation.
            raw = read_volume(case.image, key=case.image_key).array
            modality = dcfg.modality if dcfg.modality != "auto" else (case.modality or "mr")
            model_input = normalize_intensity(
                raw, modality, dcfg.clip_percentiles, dcfg.ct_window, dcfg.intensity_range
            )
        else:
            # Our source model saw normalise(shift(x)); the original domain is normalise(x).
            x, _ = _normalised(case, ds.modality, params["ct_window"])
            model_input = normalize_intensity(x, "mr", dcfg.clip_percentiles, None)
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
