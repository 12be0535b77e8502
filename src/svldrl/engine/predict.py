"""``svldrl predict``: sliding-window inference over a folder, NIfTI out with the input's affine."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from svldrl import config as C
from svldrl.data.io import NIFTI_ENDINGS, READABLE_ENDINGS, file_ending, read_volume, write_nifti
from svldrl.data.normalize import normalize_intensity
from svldrl.engine.checkpoint import load_checkpoint
from svldrl.engine.trainer import resolve_device
from svldrl.errors import UserError
from svldrl.methods import get_method
from svldrl.nets.factory import build_network
from svldrl.reporter import QUIET, Reporter

CHECKPOINTS = {"final": "checkpoint_final.pt", "best": "checkpoint_best.pt", "latest": "checkpoint_latest.pt"}


def case_id_of(path: Path) -> str:
    """``case_001_0000.nii.gz`` -> ``case_001`` (nnU-Net channel suffix dropped)."""
    name = path.name[: -len(file_ending(path))] if file_ending(path) in READABLE_ENDINGS else path.stem
    return name[:-5] if name.endswith("_0000") else name


def load_run(run_dir: str | Path, checkpoint: str = "auto", device: str = "auto") -> tuple[type, torch.nn.Module, dict]:
    """The method class, the network with the chosen checkpoint's weights (eval mode) and the run's config."""
    run = Path(run_dir)
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise UserError("not a run folder (no config.yaml)", run)
    cfg = C.load_config([cfg_path])
    method = get_method(cfg["method"])
    if checkpoint == "auto":
        checkpoint = "final" if cfg["train"]["checkpoint_select"] == "final" else "best"
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"--checkpoint must be one of auto, {', '.join(CHECKPOINTS)}")
    ckpt = load_checkpoint(run / CHECKPOINTS[checkpoint], method.name, cfg["nets"]["backbone"], cfg["nets"]["heads"])
    net = build_network(cfg["nets"], **method.network_kwargs(cfg))
    net.load_state_dict(ckpt["model"])
    net.to(resolve_device(device)).eval()
    return method, net, cfg


def list_inputs(input_dir: Path) -> list[Path]:
    """Readable volumes in ``input_dir`` (sorted); an empty or missing folder is a user error."""
    if not input_dir.is_dir():
        raise UserError("input folder not found", input_dir)
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and file_ending(p) in READABLE_ENDINGS)
    if not files:
        raise UserError(f"no input volumes ({', '.join(READABLE_ENDINGS)}) in folder", input_dir)
    return files


@torch.no_grad()
def segment_volume(
    method: type, net: torch.nn.Module, cfg: dict, image: np.ndarray, batch: int | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Normalised 3D image -> (label map uint8, extra volumes such as the refined image)."""
    device = next(net.parameters()).device
    ic = cfg["infer"]
    roi = (int(cfg["train"]["patch"]),) * 3
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    # Windows run on the model's device; the full-size output is stitched on the CPU so memory on
    # the device stays bounded by the window batch, whatever the volume size.
    logits = sliding_window_inference(
        x, roi, batch or int(ic["sw_batch"]), method.make_predictor(net, cfg), overlap=ic["overlap"],
        mode=ic["mode"], sw_device=device, device=torch.device("cpu"),
    )
    label = logits.argmax(1)[0].numpy().astype(np.uint8)
    return label, {}


def predict_folder(
    run_dir: str | Path,
    input_dir: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    batch: int | None = None,
    checkpoint: str = "auto",
    save_refined: bool = False,
    reporter: Reporter = QUIET,
) -> list[Path]:
    """Predict every volume of ``input_dir`` into ``out_dir/{case}.nii.gz``."""
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    files = list_inputs(input_dir)
    if out_dir.resolve() == input_dir.resolve():
        raise UserError("output folder is the input folder; predictions would sit among (or over) the inputs", out_dir)
    method, net, cfg = load_run(run_dir, checkpoint, device)
    dcfg = cfg["data"]
    written = []
    t0 = time.monotonic()
    for n, path in enumerate(files, 1):
        vol = read_volume(path)
        image = normalize_intensity(vol.array.astype(np.float32), dcfg["modality"], dcfg["clip_percentiles"], dcfg["ct_window"])
        label, extras = segment_volume(method, net, cfg, image, batch)
        if save_refined and hasattr(method, "inspect_volume"):
            extras = method.inspect_volume(net, cfg, image, batch)
        header = vol.header if file_ending(path) in NIFTI_ENDINGS else None
        cid = case_id_of(path)
        written.append(write_nifti(out_dir / f"{cid}.nii.gz", label, vol.affine, header))
        for name, arr in extras.items():
            write_nifti(out_dir / "inspect" / f"{cid}_{name}.nii.gz", arr, vol.affine, None)
        reporter.progress("predict", n, len(files), t0, extra=cid)
    return written


def describe(run_dir: Path) -> dict[str, Any]:
    """Small summary of a run for reports."""
    cfg = C.load_config([Path(run_dir) / "config.yaml"])
    return {"method": cfg["method"], "backbone": cfg["nets"]["backbone"], "iterations": cfg["train"]["iterations"]}
