"""Folder of ``<name>_image.nrrd`` + ``<name>_label.nrrd`` pairs (pyradiomics' test data; any ending SimpleITK or
nibabel reads, ``_mask`` for ``_label`` too), all training cases."""

from __future__ import annotations

import re
from pathlib import Path

from svldrl.data.cases import Case, Dataset
from svldrl.data.io import NIFTI_ENDINGS, SITK_ENDINGS, file_ending
from svldrl.data.layouts.common import Layout, visible_files
from svldrl.errors import UserError

NAME = "folder"
_ENDINGS = "|".join(re.escape(e) for e in SITK_ENDINGS + NIFTI_ENDINGS)
_IMAGE = re.compile(rf"(.+)_image({_ENDINGS})", re.IGNORECASE)
_LABEL = re.compile(rf"(.+)_(?:label|mask)({_ENDINGS})", re.IGNORECASE)


def probe(path: Path) -> bool:
    """A folder holding an image or a mask named as a pair's."""
    return not path.is_file() and any(
        _LABEL.fullmatch(f.name) or _IMAGE.fullmatch(f.name) for f in visible_files(path)
    )


def load(root: Path) -> Dataset:
    images: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for f in visible_files(root):
        if m := _LABEL.fullmatch(f.name):
            target = masks
        elif m := _IMAGE.fullmatch(f.name):
            target = images
        else:
            continue
        if m.group(1) in target:
            raise UserError(f"duplicate case id '{m.group(1)}' (also {target[m.group(1)]})", f)
        target[m.group(1)] = f
    for cid, f in images.items():
        if cid not in masks:
            raise UserError(f"image has no mask (expected {cid}_label{file_ending(f)})", f)
    for cid, f in masks.items():
        if cid not in images:
            raise UserError(f"mask has no image (expected {cid}_image{file_ending(f)})", f)
    train = [Case(cid, images[cid], masks[cid], modality="mr") for cid in sorted(images)]
    return Dataset(
        root, train, [], "mr", {"background": 0, "foreground": 1}, NAME, file_ending(train[0].image)
    )


LAYOUT = Layout(NAME, probe, load, folder_hint="<name>_image.nrrd + <name>_label.nrrd pairs")
