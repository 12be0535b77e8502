"""Train, load and predict a run folder, the method picked by the name in its config."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch

from svldrl import config as C
from svldrl.data.dataset import load_dataset
from svldrl.data.io import NIFTI_ENDINGS, check_volume_header, file_ending, read_volume, write_nifti
from svldrl.data.normalize import normalize_intensity
from svldrl.data.outputs import check_output_dir, output_dir_for_first_write
from svldrl.engine.predict import case_id_of, list_inputs, load_network, segment_volume
from svldrl.errors import UserError
from svldrl.methods import get_method, section_owners
from svldrl.reporter import QUIET, Reporter
from svldrl.settings import Config


def train(
    dataset: str | Path,
    labels: str,
    out: str | Path,
    cfg: Config,
    resume: bool = False,
    reporter: Reporter = QUIET,
) -> Path:
    """Train ``cfg.method`` on ``dataset`` with the ``labels`` masks ("clean" or "noisy/NAME") and the trusted
    cases ``cfg.data.trusted`` names (auto, none or a list file); returns the run folder. ``resume``
    continues the run in ``out`` from its latest checkpoint."""
    ds = load_dataset(dataset, labels=labels, trusted=cfg.data.trusted)
    trainer = get_method(cfg.method)(cfg, ds, out, reporter=reporter, resume=resume)  # construct and build
    if resume:
        trainer.restore()
    return trainer.fit()


def load_run(
    run_dir: str | Path, checkpoint: str = "auto", device: str = "auto"
) -> tuple[type, torch.nn.Module, Config]:
    """The method class, the network with the chosen checkpoint's weights (eval mode) and the run's config.

    Raises:
        UserError: not a run folder, an unknown method, or a checkpoint that does not fit (see
            :func:`svldrl.engine.predict.load_network`).
    """
    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise UserError("not a run folder (no config.yaml)", run)
    cfg = C.load_config([cfg_path], owners=section_owners(), saved=True)
    method = get_method(cfg.method)
    return method, load_network(method, cfg, run, checkpoint, device), cfg


def predict_folder(
    run_dir: str | Path,
    input_dir: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    batch: int | None = None,
    checkpoint: str = "auto",
    save_refined: bool = False,
    reporter: Reporter = QUIET,
    overwrite: bool = False,
) -> list[Path]:
    """Predict every volume of ``input_dir`` into ``out_dir/{case}.nii.gz``.

    ``out_dir`` may not be a dataset's image or mask folder, nor hold files a prediction would replace
    unless svldrl wrote them as predictions or ``overwrite`` is given (:mod:`svldrl.data.outputs`).
    """
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    files = list_inputs(input_dir)
    if out_dir.resolve() == input_dir.resolve():
        raise UserError(
            "output folder is the input folder; predictions would sit among (or over) the inputs", out_dir
        )
    names = [f"{case_id_of(p)}.nii.gz" for p in files]
    extras = [f"inspect/{n[: -len('.nii.gz')]}_{k}.nii.gz" for n in names for k in ("refined", "actions")]
    check_output_dir(out_dir, "predictions", names + (extras if save_refined else []), overwrite, "OUTPUT")
    for path in files:  # header problems stop the run before the first prediction is written
        check_volume_header(path)
    method, net, cfg = load_run(run_dir, checkpoint, device)
    dcfg = cfg.data
    written = []
    t0 = time.monotonic()
    for n, path in enumerate(files, 1):
        vol = read_volume(path)
        # The raw array goes as soon as it is normalised: one full-size copy less at the peak.
        raw, vol.array = vol.array, None
        image = normalize_intensity(
            raw, dcfg.modality, dcfg.clip_percentiles, dcfg.ct_window, dcfg.intensity_range
        )
        del raw
        label, extras = segment_volume(method, net, cfg, image, batch)
        if save_refined and hasattr(method, "inspect_volume"):
            extras = method.inspect_volume(net, cfg, image, batch)
        header = vol.header if file_ending(path) in NIFTI_ENDINGS else None
        cid = case_id_of(path)
        # The folder is created and marked with the first prediction (a failure before it leaves nothing).
        with output_dir_for_first_write(out_dir, "predictions", "OUTPUT") if n == 1 else nullcontext():
            written.append(write_nifti(out_dir / f"{cid}.nii.gz", label, vol.affine, header))
        for name, arr in extras.items():
            write_nifti(out_dir / "inspect" / f"{cid}_{name}.nii.gz", arr, vol.affine, None)
        reporter.progress("predict", n, len(files), t0, extra=cid)
    return written
