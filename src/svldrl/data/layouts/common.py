"""What a dataset layout is (:class:`Layout`) and the small readers several layouts share."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svldrl.data.cases import Dataset
from svldrl.data.io import read_json
from svldrl.errors import UserError

#: nnU-Net's channel suffix: ``{CASE}_0000``.
CHANNEL = re.compile(r"(.+)_(\d{4})")


@dataclass(frozen=True)
class Layout:
    """A dataset format.

    Attributes:
        name: what ``Dataset.layout`` says of a dataset read in this format.
        probe: whether the format claims a path (a folder, or a file); cheap, and it may raise a
            :class:`UserError` for a file of its own that is malformed.
        load: the path as a :class:`Dataset` (:class:`UserError` for anything the user must fix).
        folder_hint, file_hint: what a folder / a file of this format holds, for the message that lists the
            formats when none claims a path ('' where the format has no such form to suggest).
    """

    name: str
    probe: Callable[[Path], bool]
    load: Callable[[Path], Dataset]
    folder_hint: str = ""
    file_hint: str = ""


def read_json_object(path: Path) -> dict:
    """A JSON object the user gave (dataset.json, a datalist): one-line errors for anything else."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise UserError("malformed JSON: expected an object at the top level", path)
    return data


def modality_of(name: Any) -> str:
    """A channel name -> ``ct`` or ``mr`` (anything that is not CT is normalised per case, as MR)."""
    return "ct" if str(name).strip().upper() == "CT" else "mr"


def visible_files(folder: Path) -> list[Path]:
    """The files of ``folder``, sorted."""
    # Hidden files are OS clutter (.DS_Store) or our own half-written temporaries; never cases.
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())


def is_label_value(v: Any) -> bool:
    """A label value of dataset.json: an integer, or (a region) a non-empty list of them."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    # Region-based nnU-Net datasets (BraTS) map a region name to a list of label values.
    return isinstance(v, list) and bool(v) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
