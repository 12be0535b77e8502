"""``svldrl predict``: sliding-window inference over a folder, NIfTI out with the input's affine."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from svldrl import config as C
from svldrl.data.io import (
    NIFTI_ENDINGS,
    READABLE_ENDINGS,
    check_volume_header,
    file_ending,
    read_volume,
    write_nifti,
)
from svldrl.data.normalize import normalize_intensity
from svldrl.data.outputs import check_output_dir, output_dir_for_first_write
from svldrl.engine.checkpoint import load_checkpoint
from svldrl.engine.distributed import unwrap
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


def load_run(
    run_dir: str | Path, checkpoint: str = "auto", device: str = "auto"
) -> tuple[type, torch.nn.Module, dict]:
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
    path = run / CHECKPOINTS[checkpoint]
    ckpt = load_checkpoint(path, method.name, cfg["nets"]["backbone"], cfg["nets"]["heads"])
    net = build_network(cfg["nets"], **method.network_kwargs(cfg))
    mismatch = _weights_mismatch(net, ckpt, cfg["nets"])
    if mismatch:  # e.g. a checkpoint copied from a run with other nets.features; torch's own message is long
        raise UserError(f"checkpoint weights do not fit the network of {cfg_path.name} ({mismatch})", path)
    net.load_state_dict(ckpt["model"])
    net.to(resolve_device(device)).eval()
    return method, net, cfg


def _weights_mismatch(net: torch.nn.Module, ckpt: dict, nets_cfg: dict) -> str:
    """'' when the checkpoint's tensors fit ``net``; else what differs, in one line."""
    own, theirs = net.state_dict(), ckpt.get("model", {})
    bad = [k for k in own if k not in theirs or tuple(theirs[k].shape) != tuple(own[k].shape)]
    bad += [k for k in theirs if k not in own]
    if not bad:
        return ""
    k = bad[0]
    there = tuple(theirs[k].shape) if k in theirs else "absent"
    here = tuple(own[k].shape) if k in own else "absent"
    text = f"{len(bad)} tensors differ, e.g. {k}: {there} in the checkpoint, {here} here"
    trained = (ckpt.get("config") or {}).get("nets", {})
    changed = [f"nets.{key}={trained[key]}" for key in sorted(trained) if trained[key] != nets_cfg.get(key)]
    return text + (f"; the checkpoint was trained with {', '.join(changed)}" if changed else "")


def list_inputs(input_dir: Path) -> list[Path]:
    """Readable volumes in ``input_dir`` (sorted); an empty or missing folder is a user error."""
    if not input_dir.is_dir():
        raise UserError("input folder not found", input_dir)
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and file_ending(p) in READABLE_ENDINGS)
    if not files:
        raise UserError(f"no input volumes ({', '.join(READABLE_ENDINGS)}) in folder", input_dir)
    return files


@torch.no_grad()
def sliding_window_labels(
    image: np.ndarray,
    roi: tuple[int, int, int],
    sw_batch: int,
    predictor: Any,
    overlap: float,
    mode: str,
    sw_device: torch.device,
) -> np.ndarray:
    """Label map (uint8) of a 3D image by MONAI's sliding-window inference, stitched in slabs along axis 0.

    Windows, batches, blending weights and the order of the sums are those of
    ``monai.inferers.sliding_window_inference`` (so the labels are the same), but the float32 logits and
    weight sums exist only for one window depth along the first axis: a slab is turned into labels as soon as
    no later window touches it. Memory beyond the image is about ``(classes + 1) * 4`` bytes times
    ``roi[0] x Y x Z`` voxels plus the uint8 labels, whatever the volume's length along axis 0.
    """
    shape0 = image.shape
    pad = [(max(r - s, 0) // 2, max(r - s, 0) - max(r - s, 0) // 2) for s, r in zip(shape0, roi, strict=True)]
    if any(a or b for a, b in pad):
        image = np.pad(image, pad)  # zeros on both sides, as MONAI pads a volume smaller than the window
    size = image.shape
    windows = dense_patch_slices(size, roi, _get_scan_interval(size, roi, 3, (overlap,) * 3))
    weight = compute_importance_map(roi, mode=mode, sigma_scale=0.125, device=sw_device, dtype=torch.float32)
    weight, weight_cpu = weight[None, None], weight.cpu()[None]
    labels = np.empty(size, dtype=np.uint8)
    depth = roi[0]
    acc: torch.Tensor | None = None  # (classes, depth, Y, Z): weighted logit sums of [lo, lo + depth)
    cnt = torch.zeros((1, depth, *size[1:]), dtype=torch.float32)
    lo = 0

    def finish(upto: int) -> None:  # slices [lo, upto) see no further window: labels out, buffers slide on
        nonlocal lo
        if acc is None or upto <= lo:
            return
        n = upto - lo
        labels[lo:upto] = (acc[:, :n] / cnt[:, :n]).argmax(0).numpy().astype(np.uint8)
        for buf in (acc, cnt):
            kept = buf[:, n:].clone()
            buf.zero_()
            buf[:, : depth - n] = kept
        lo = upto

    for first in range(0, len(windows), sw_batch):
        group = windows[first : first + sw_batch]
        batch = torch.stack([torch.from_numpy(np.ascontiguousarray(image[w])) for w in group])[:, None]
        out = predictor(batch.to(sw_device))
        out = (out * weight).to(torch.device("cpu"), torch.float32)
        for w, o in zip(group, out, strict=True):
            finish(w[0].start)
            if acc is None:
                acc = torch.zeros((o.shape[0], depth, *size[1:]), dtype=torch.float32)
            at = (slice(None), slice(w[0].start - lo, w[0].stop - lo), w[1], w[2])
            cnt[at] += weight_cpu
            acc[at] += o
    finish(size[0])
    return labels[tuple(slice(a, a + s) for (a, _), s in zip(pad, shape0, strict=True))]


@torch.no_grad()
def segment_volume(
    method: type, net: torch.nn.Module, cfg: dict, image: np.ndarray, batch: int | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Normalised 3D image -> (label map uint8, extra volumes such as the refined image)."""
    device = next(net.parameters()).device
    ic = cfg["infer"]
    roi = (int(cfg["train"]["patch"]),) * 3
    # Windows run on the model's device; stitching happens on the CPU slab by slab, so memory stays bounded
    # on the device by the window batch and on the host by one slab, whatever the volume size.
    label = sliding_window_labels(
        np.asarray(image, dtype=np.float32),
        roi,
        batch or int(ic["sw_batch"]),
        method.make_predictor(unwrap(net), cfg),
        float(ic["overlap"]),
        ic["mode"],
        device,
    )
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
    dcfg = cfg["data"]
    written = []
    t0 = time.monotonic()
    for n, path in enumerate(files, 1):
        vol = read_volume(path)
        # The raw array goes as soon as it is normalised: one full-size copy less at the peak.
        raw, vol.array = vol.array, None
        image = normalize_intensity(
            raw, dcfg["modality"], dcfg["clip_percentiles"], dcfg["ct_window"], dcfg["intensity_range"]
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


def describe(run_dir: Path) -> dict[str, Any]:
    """Small summary of a run for reports."""
    cfg = C.load_config([Path(run_dir) / "config.yaml"])
    return {
        "method": cfg["method"],
        "backbone": cfg["nets"]["backbone"],
        "iterations": cfg["train"]["iterations"],
    }
