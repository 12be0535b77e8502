"""Folder of HDF5 files (the Left Atrium / Pancreas-CT community releases): datasets ``image`` and ``label``
in each; ``train.list`` / ``test.list`` beside them pick the split."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from svldrl.data.cases import Case, Dataset
from svldrl.data.io import H5_ENDINGS, file_ending
from svldrl.data.layouts.common import Layout
from svldrl.errors import UserError

NAME = "hdf5"
# HDF5 stems shared by every case of a release (LA: <case>/mri_norm2.h5): the folder names the case.
GENERIC_H5_STEMS = {"mri_norm2", "mri_norm", "image", "data", "volume", "img"}


def h5_files(root: Path) -> list[Path]:
    """The ``.h5`` files anywhere under ``root``, sorted (hidden ones skipped)."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.name.lower().endswith(H5_ENDINGS) and not p.name.startswith(".") and p.is_file()
    )


def probe(path: Path) -> bool:
    """A folder with ``.h5`` files anywhere below it."""
    return not path.is_file() and bool(h5_files(path))


def load(root: Path) -> Dataset:
    import h5py

    files = h5_files(root)
    stem_count = Counter(_h5_stem(f) for f in files)
    cases: dict[str, Case] = {}
    aliases: dict[str, str] = {}
    for f in files:
        stem = _h5_stem(f)
        generic = stem_count[stem] > 1 or stem.lower() in GENERIC_H5_STEMS
        case_id = f.parent.name if generic and f.parent != root else stem
        if case_id in cases:
            raise UserError(f"duplicate case id '{case_id}' (also {cases[case_id].image})", f)
        try:
            with h5py.File(f, "r") as h:
                keys = set(h.keys())
        except Exception as exc:  # h5py raises OSError / KeyError / ValueError on broken files
            raise UserError(f"cannot read HDF5 file ({type(exc).__name__})", f) from None
        if "image" not in keys:
            raise UserError(f"HDF5 file has no dataset 'image' (has: {', '.join(sorted(keys)) or 'none'})", f)
        cases[case_id] = Case(case_id, f, f if "label" in keys else None, modality="mr")
        # List files name cases by id, file stem, or stem without the release's "_norm" suffix.
        for alias in {case_id, stem, re.sub(r"_norm\d*$", "", stem)}:
            aliases.setdefault(alias, case_id)

    def read_list(name: str) -> list[str] | None:
        list_path = root / name
        if not list_path.is_file():
            return None
        ids = []
        for line in list_path.read_text().splitlines():
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            key = Path(entry).name
            key = key[: -len(file_ending(key))] if key.lower().endswith(H5_ENDINGS) else key
            if key not in aliases:
                raise UserError(f"names '{entry}', but no such .h5 file is in the folder", list_path)
            ids.append(aliases[key])
        return ids

    train_ids = read_list("train.list")
    test_ids = read_list("test.list") or []
    both = sorted(set(test_ids) & set(train_ids or []))
    if both:
        raise UserError(f"case '{both[0]}' is in both train.list and test.list", root / "test.list")
    if train_ids is None:
        train_ids = [cid for cid in cases if cid not in set(test_ids)]
    train = [cases[cid] for cid in dict.fromkeys(train_ids)]
    test = [cases[cid] for cid in dict.fromkeys(test_ids)]
    for c in train:
        if c.label is None:
            raise UserError("training case has no dataset 'label'", c.image)
    if not train:
        raise UserError("no training cases among the .h5 files", root)
    return Dataset(root, train, test, "mr", {"background": 0, "foreground": 1}, NAME, ".h5")


def _h5_stem(f: Path) -> str:
    return f.name[: -len(file_ending(f))]


LAYOUT = Layout(NAME, probe, load, folder_hint=".h5 files")
