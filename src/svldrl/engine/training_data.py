"""The training data of a run: the settings the data decide, its cases split into training and validation,
read, checked and padded; the stream of patches drawn from them and the batches they make.

Patches come from a data stream (the trainer's ``rng``) that is the same on every rank: each step draws one
global batch of ``train.batch x world size`` patches (a case and a seed per patch; cases are dealt out from a
shuffled pass over the training cases, as ``DistributedSampler`` does) and each rank crops its own share. A run
on N ranks therefore sees the patches of a one-process run with an N times larger ``train.batch``, and the crops
do not depend on which process (or DataLoader worker) makes them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from svldrl.data.dataset import Case, Dataset, load_case
from svldrl.data.fingerprint import ct_range, dataset_fingerprint, hash_ids
from svldrl.data.normalize import ForegroundCheck
from svldrl.data.splits import ALL, fold_cases, load_or_create_splits, parse_fold, trusted_split
from svldrl.engine.patches import Crop, LazyImages, StepCrops, as_is, pad_to_patch
from svldrl.errors import UserError
from svldrl.reporter import Reporter
from svldrl.settings import Config, Data

Batch = dict[str, Any]
#: A patch to crop: (position of the case among the training cases, seed of the crop).
Spec = tuple[int, int]


@dataclass
class Split:
    """Which cases a run trains and validates on (sorted ids), and its fold."""

    fold: int | str
    train_ids: list[str]
    val_ids: list[str]
    #: The trusted training cases (empty without any): they validate, see :func:`trusted_split`.
    trusted_ids: list[str]


@dataclass
class TrainingCases:
    """The cases of a :class:`Split` as arrays: training images and masks padded to the patch, validation ones
    as read. Images are read per access under ``data.cache: none`` (:class:`LazyImages`)."""

    images: Sequence[np.ndarray]
    given: list[np.ndarray]
    #: Flat indices of each training mask's foreground, where foreground-aware crops centre.
    fg_idx: list[np.ndarray]
    val_images: Sequence[np.ndarray]
    val_labels: list[np.ndarray]


def resolve_data_settings(cfg: Config, dataset: Dataset, reporter: Reporter) -> Config:
    """A copy of ``cfg`` with what the data decide resolved (``cfg`` itself stays as given).

    ``data.modality: auto`` becomes the dataset's; CT without ``data.ct_window`` or ``data.intensity_range`` gets
    the range of the dataset fingerprint (the training foreground's percentiles 0.5 / 99.5, nnU-Net's CT rule,
    :mod:`svldrl.data.fingerprint`). The run's config.yaml records both, so that ``svldrl predict`` and the
    audit normalise as training did.
    """
    cfg = copy.deepcopy(cfg)
    dcfg = cfg.data
    if dcfg.modality == "auto":
        dcfg.modality = dataset.modality
    if dcfg.modality == "ct" and dcfg.ct_window is None and dcfg.intensity_range is None:
        trusted = dataset.trusted_ids  # their masks may be experts': another set of masks
        stats = dataset_fingerprint(
            dataset.root,
            dataset.train,
            dataset.label_set + (f"+trusted:{hash_ids(trusted)}" if trusted else ""),
            dcfg.foreground,
            reporter,
        )
        dcfg.intensity_range = ct_range(stats)
        reporter.info(
            f"CT normalisation: clip to the training foreground's [{stats['percentile_00_5']:g}, "
            f"{stats['percentile_99_5']:g}] (percentiles 0.5 / 99.5), map to [0, 1]"
        )
    return cfg


def split_cases(dataset: Dataset, cfg: Config, train_on: str, reporter: Reporter) -> Split:
    """The training and validation cases of ``data.fold``: with trusted cases :func:`trusted_split` (``train_on``
    resolved by the method), else the dataset's splits (``splits_final.json``, made if missing).

    Raises:
        UserError: ``--fold all`` with ``train.checkpoint_select=val``, or ``data.train_on=trusted`` without
            trusted cases.
    """
    dcfg = cfg.data
    cases = {c.case_id: c for c in dataset.train}
    fold = parse_fold(dcfg.fold)
    if fold == ALL and cfg.train.checkpoint_select == "val":
        raise UserError(
            "--fold all trains on every case and keeps none for validation, so "
            "train.checkpoint_select=val has nothing to select on; use final (the default) or a fold number"
        )
    trusted_ids = dataset.trusted_ids
    if dcfg.train_on == "trusted" and not trusted_ids:
        raise UserError(
            "data.train_on=trusted, but no training case is trusted: add expert masks in labelsTr_trusted/, "
            "train on a noisy set made with svldrl noise --trusted N, or list the cases with --trusted FILE"
            + ("" if dcfg.trusted != "none" else " (data.trusted is none)"),
            dataset.root,
        )
    if trusted_ids:
        train_ids, val_ids = trusted_split(sorted(cases), trusted_ids, fold, train_on)
        if fold not in (0, ALL):
            reporter.warn(
                f"--fold {fold}: with trusted cases the validation cases are the trusted ones and the splits "
                "are not used, so every fold number trains the same run"
            )
    else:
        splits = (
            None
            if fold == ALL
            else load_or_create_splits(dataset.root, sorted(cases), int(dcfg.num_folds), reporter=reporter)
        )
        train_ids, val_ids = fold_cases(splits, fold, cases)
    return Split(fold, train_ids, val_ids, trusted_ids)


def read_cases(
    dataset: Dataset,
    split: Split,
    data: Data,
    patch: int,
    training_case: Callable[[int, Case], Case],
    reporter: Reporter,
) -> TrainingCases:
    """Read and check every case of ``split`` (whatever ``data.cache`` says: bad input stops the run at once).

    ``training_case(position, case)`` picks the mask a training case trains with (the trainer's hook). A mask
    without foreground is a case where the structure is absent (a multi-organ set binarised for one organ): a
    negative example, trained on like any other, and warned about.

    Raises:
        UserError: unreadable or mismatched files, most masks holding other labels than ``data.foreground``'s
            (a wrong label value), or every training mask empty.
    """
    cases = {c.case_id: c for c in dataset.train}
    in_ram = data.cache == "memory"
    images: list[np.ndarray] = []
    given: list[np.ndarray] = []
    labels = ForegroundCheck(data.foreground)  # which masks hold none of --foreground's labels
    for position, cid in enumerate(split.train_ids):
        img, lab, _ = load_case(training_case(position, cases[cid]), data, allow_empty=True, labels=labels)
        if in_ram:
            images.append(pad_to_patch(img, patch))
        given.append(pad_to_patch(lab, patch))
    val_images: list[np.ndarray] = []
    val_labels: list[np.ndarray] = []
    for cid in split.val_ids:
        img, lab, _ = load_case(cases[cid], data, allow_empty=True, labels=labels)
        if in_ram:
            val_images.append(img)
        val_labels.append(lab)
    # ... but most masks without the chosen labels (holding others) is a wrong label value: refused
    labels.check("training masks", "they would train as all background", dataset.root)
    fg_idx = [np.flatnonzero(g) for g in given]
    absent = [cid for cid, idx in zip(split.train_ids, fg_idx, strict=True) if not idx.size]
    if len(absent) == len(split.train_ids):
        which = "" if data.foreground is None else f" with foreground labels {data.foreground}"
        raise UserError(
            f"every training mask of fold {data.fold} is empty (no foreground voxels{which}); "
            "check the masks or --foreground",
            dataset.root,
        )
    if absent:
        others = [cid for cid in absent if cid in labels.lacking]
        reporter.warn(
            f"{len(absent)} training case(s) without foreground (structure absent), trained on as "
            f"negatives: {', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}"
            + (f" ({len(others)} of them hold other labels only: {labels.held(others)})" if others else "")
        )
    # data.cache none: masks stay (small, and targets are training state); images are read per access.
    return TrainingCases(
        images if in_ram else LazyImages([cases[c] for c in split.train_ids], data, patch),
        given,
        fg_idx,
        val_images if in_ram else LazyImages([cases[c] for c in split.val_ids], data),
        val_labels,
    )


def describe(dataset: Dataset, split: Split, method: str, world: int, batch: int, reporter: Reporter) -> None:
    """Say what ``method`` trains and validates on (and, with trusted cases, what they do)."""
    reporter.info(
        f"{method}: fold {split.fold}, {len(split.train_ids)} training / {len(split.val_ids)} validation "
        f"cases ({dataset.labels_name if hasattr(dataset, 'labels_name') else 'given'} masks)"
        + (f", {world} ranks x batch {batch}" if world > 1 else "")
    )
    trusted_ids = split.trusted_ids
    if trusted_ids:
        trained = [c for c in trusted_ids if c in set(split.train_ids)]
        shown = ", ".join(trusted_ids[:8]) + (" ..." if len(trusted_ids) > 8 else "")
        reporter.info(
            f"{len(trusted_ids)} trusted cases ({dataset.trusted_source}): {shown}; "
            + (
                f"validation and checkpoint selection on their trusted masks (not on the {dataset.label_set} "
                "masks; the fold split is not used)"
                if split.val_ids
                else "no validation (--fold all)"
            )
            + (
                f"; {len(trained)} of them also train, on their trusted masks"
                if trained
                else "; they do not train (held out for selection)"
            )
        )


def next_specs(
    rng: np.random.Generator, queue: list[int], n_cases: int, batch: int, rank: int, world: int
) -> list[Spec]:
    """This rank's patches of the next global batch of ``batch x world``; every rank advances ``rng`` alike.

    Cases come from shuffled passes over the training cases (``DistributedSampler``'s rule over an endless
    sequence of passes), taken from the front of ``queue`` (the rest of the current pass, refilled here); global
    slot ``j`` goes to rank ``j % world``, so each case of a pass is cropped by exactly one rank and the ranks'
    patches together are the one-process batch.
    """
    g = batch * world
    while len(queue) < g:
        queue.extend(int(i) for i in rng.permutation(n_cases))
    cases = queue[:g]
    del queue[:g]
    seeds = rng.integers(2**62, size=g)
    return [(cases[j], int(seeds[j])) for j in range(rank, g, world)]


def collate(
    crops: list[Crop], targets: list[np.ndarray], given: list[np.ndarray], device: torch.device
) -> Batch:
    """Stack crops and attach their current targets and given masks (read here, in the training process, so
    that targets a method changed during the epoch are seen at once)."""
    tgts, givens = [], []
    for c in crops:
        tgt, giv = targets[c.case][c.box], given[c.case][c.box]
        if c.flip:
            tgt, giv = np.flip(tgt, c.flip), np.flip(giv, c.flip)
        tgts.append(torch.from_numpy(np.ascontiguousarray(tgt, dtype=np.float32))[None])
        givens.append(torch.from_numpy(np.ascontiguousarray(giv).astype(np.float32))[None])
    return {
        "image": torch.stack([c.image for c in crops]).float().to(device),
        "target": torch.stack(tgts).to(device),
        "given": torch.stack(givens).to(device),
        "case": [c.case for c in crops],
        "box": [c.box for c in crops],
        "flip": [c.flip for c in crops],
    }


def worker_crops(steps: StepCrops, workers: int) -> Iterator[list[Crop]]:
    """The crops of each step, in order, made by ``workers`` DataLoader workers."""
    import torch.multiprocessing as mp

    ctx = "fork" if "fork" in mp.get_all_start_methods() else None  # fork: workers share the cases in RAM
    yield from DataLoader(
        steps,
        batch_size=None,
        shuffle=False,
        num_workers=min(workers, len(steps)),
        collate_fn=as_is,
        multiprocessing_context=ctx,
        generator=torch.Generator().manual_seed(0),
    )  # leave the global torch RNG alone
