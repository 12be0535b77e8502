"""Sliding-window inference: a trained network's checkpoint, windows stitched in bounded memory.

The command ``svldrl predict`` (a run folder by method name, a folder of images, NIfTI out with each input's
affine) is :func:`svldrl.runs.predict_folder`; this module is the method-agnostic part it stands on. Foreground
probabilities have one home here too (:func:`window_probability`): the trainer's pass over its training cases,
the label audit and SFDA's source model use it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval

from svldrl.data.io import (
    READABLE_ENDINGS,
    file_ending,
)
from svldrl.engine.checkpoint import load_checkpoint
from svldrl.engine.device import resolve_device
from svldrl.engine.distributed import sum_over_ranks, unwrap
from svldrl.errors import UserError
from svldrl.nets.factory import build_network
from svldrl.rules import overlap as dice_of
from svldrl.settings import Config, Infer, Nets

CPU = torch.device("cpu")
CHECKPOINTS = {"final": "checkpoint_final.pt", "best": "checkpoint_best.pt", "latest": "checkpoint_latest.pt"}


def case_id_of(path: Path) -> str:
    """``case_001_0000.nii.gz`` -> ``case_001`` (nnU-Net channel suffix dropped)."""
    name = path.name[: -len(file_ending(path))] if file_ending(path) in READABLE_ENDINGS else path.stem
    return name[:-5] if name.endswith("_0000") else name


def load_network(
    method: type, cfg: Config, run: Path, checkpoint: str = "auto", device: str = "auto"
) -> torch.nn.Module:
    """The network of ``method`` for ``cfg`` with the weights of the run's chosen checkpoint, in eval mode; a
    checkpoint that carries a threshold chosen on the trusted cases sets ``cfg.infer.threshold`` to it.

    Raises:
        UserError: an unknown checkpoint name, a missing, foreign or code-carrying checkpoint, or weights that
            do not fit the network the config describes.
    """
    if checkpoint == "auto":
        checkpoint = "final" if cfg.train.checkpoint_select == "final" else "best"
    if checkpoint not in CHECKPOINTS:
        raise UserError(f"--checkpoint must be one of auto, {', '.join(CHECKPOINTS)}")
    path = run / CHECKPOINTS[checkpoint]
    ckpt = load_checkpoint(path, method.name, cfg.nets.backbone, cfg.nets.heads)
    net = build_network(cfg.nets, **method.network_kwargs(cfg))
    mismatch = _weights_mismatch(net, ckpt, cfg.nets)
    if mismatch:  # e.g. a checkpoint copied from a run with other nets.features; torch's own message is long
        raise UserError(f"checkpoint weights do not fit the network of config.yaml ({mismatch})", path)
    net.load_state_dict(ckpt["model"])
    if "threshold" in ckpt:  # chosen on the trusted cases at the end of the run (data.trusted_threshold)
        cfg.infer.threshold = float(ckpt["threshold"])
    return net.to(resolve_device(device)).eval()


def _weights_mismatch(net: torch.nn.Module, ckpt: dict, nets: Nets) -> str:
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
    trained = (ckpt.get("config") or {}).get("nets", {})  # the checkpoint's config: plain data
    changed = [
        f"nets.{key}={trained[key]}" for key in sorted(trained) if trained[key] != getattr(nets, key, None)
    ]
    return text + (f"; the checkpoint was trained with {', '.join(changed)}" if changed else "")


def list_inputs(input_dir: Path) -> list[Path]:
    """Readable volumes in ``input_dir`` (sorted); an empty or missing folder is a user error."""
    if not input_dir.is_dir():
        raise UserError("input folder not found", input_dir)
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and file_ending(p) in READABLE_ENDINGS)
    if not files:
        raise UserError(f"no input volumes ({', '.join(READABLE_ENDINGS)}) in folder", input_dir)
    return files


def labels_of(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Class labels of (classes, ...) logits: the argmax, or with two classes and a ``threshold`` other than 0.5
    foreground where its softmax probability exceeds it (``l1 - l0 > logit(threshold)``)."""
    if threshold == 0.5 or logits.shape[0] != 2:
        return logits.argmax(0)
    return (logits[1] - logits[0] > math.log(threshold / (1.0 - threshold))).to(torch.int64)


@torch.no_grad()
def sliding_window_labels(
    image: np.ndarray,
    roi: tuple[int, int, int],
    sw_batch: int,
    predictor: Any,
    overlap: float,
    mode: str,
    sw_device: torch.device,
    threshold: float = 0.5,
) -> np.ndarray:
    """Label map (uint8) of a 3D image by MONAI's sliding-window inference, stitched in slabs along axis 0.

    Windows, batches, blending weights and the order of the sums are those of
    ``monai.inferers.sliding_window_inference`` (so the labels are the same; ``threshold``: :func:`labels_of`), but
    the float32 logits and weight sums exist only for one window depth along the first axis: a slab is turned into
    labels as soon as no later window touches it. Memory beyond the image is about ``(classes + 1) * 4`` bytes times
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
        labels[lo:upto] = labels_of(acc[:, :n] / cnt[:, :n], threshold).numpy().astype(np.uint8)
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
    method: type, net: torch.nn.Module, cfg: Config, image: np.ndarray, batch: int | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Normalised 3D image -> (label map uint8, extra volumes such as the refined image)."""
    device = next(net.parameters()).device
    ic = cfg.infer
    roi = (int(cfg.train.patch),) * 3
    # Windows run on the model's device; stitching happens on the CPU slab by slab, so memory stays bounded
    # on the device by the window batch and on the host by one slab, whatever the volume size.
    label = sliding_window_labels(
        np.asarray(image, dtype=np.float32),
        roi,
        batch or int(ic.sw_batch),
        method.make_predictor(unwrap(net), cfg),
        float(ic.overlap),
        ic.mode,
        device,
        float(ic.threshold),
    )
    return label, {}


@torch.no_grad()
def window_probability(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    roi: Sequence[int],
    sw_batch: int,
    overlap: float,
    mode: str,
    sw_device: torch.device,
    device: torch.device = CPU,
    tta: bool = False,
) -> np.ndarray:
    """Foreground probability (float32, the image's shape) of a normalised 3D image: the softmax of MONAI's
    sliding-window stitching of ``predictor``'s two-class logits.

    Windows run on ``sw_device``; the stitched logits live on ``device`` (the CPU by default, so the device holds
    only the window batch; the trainer keeps them on its device). ``tta``: the mean probability over the 8
    mirrorings of the three axes (nnU-Net's test-time augmentation; the trainer's augmentation flips every axis,
    so each mirrored view is one it learned).
    """
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    mirrorings = [axes for k in range(4) for axes in itertools.combinations((2, 3, 4), k)] if tta else [()]
    total = None
    for axes in mirrorings:
        logits = sliding_window_inference(
            torch.flip(x, axes) if axes else x,
            tuple(roi),
            sw_batch,
            predictor,
            overlap=overlap,
            mode=mode,
            sw_device=sw_device,
            device=device,
        )
        p = torch.softmax(logits.float(), 1)[:, 1]
        p = torch.flip(p, [a - 1 for a in axes]) if axes else p
        total = p if total is None else total + p
    if len(mirrorings) > 1:
        total = total / len(mirrorings)
    return total[0].cpu().numpy()


def predict_probability(
    method: type,
    net: torch.nn.Module,
    cfg: Config,
    image: np.ndarray,
    batch: int | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Foreground probability (float32) of a normalised 3D image by a trained run's network, in the run's sliding
    window (:func:`window_probability`).

    The windows of :func:`segment_volume` (so ``p > 0.5`` is its label map without ``tta``), including the
    method's test-time refinement where ``make_predictor`` adds one. ``batch``: windows per forward (default
    the run's ``infer.sw_batch``).
    """
    ic = cfg.infer
    return window_probability(
        method.make_predictor(net, cfg),
        image,
        (int(cfg.train.patch),) * 3,
        batch or int(ic.sw_batch),
        ic.overlap,
        ic.mode,
        next(net.parameters()).device,
        tta=tta,
    )


@torch.no_grad()
def validation_dice(
    network: torch.nn.Module,
    predictor: Callable[[torch.Tensor], torch.Tensor],
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    roi: Sequence[int],
    infer: Infer,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
) -> float:
    """Mean Dice of sliding-window label maps (``infer.*``) against ``labels``; a case empty in both is not
    scored. ``network`` (what ``predictor`` runs) is in eval mode meanwhile and in train mode after.

    Each rank segments its share of the cases (every ``world``-th); the sums are reduced, so every rank returns
    the mean over all cases.
    """
    network.eval()
    total = count = 0.0
    for k in range(rank, len(labels), world):
        x = torch.from_numpy(images[k])[None, None].to(device)
        logits = sliding_window_inference(
            x, tuple(roi), int(infer.sw_batch), predictor, overlap=infer.overlap, mode=infer.mode
        )
        pred = labels_of(logits[0], float(infer.threshold)).cpu().numpy().astype(np.uint8)
        d = dice_of(pred, labels[k])[0]  # NaN when both are empty: not scored
        if not math.isnan(d):
            total, count = total + d, count + 1
    network.train()
    total, count = sum_over_ranks([total, count])
    return total / count if count else math.nan
