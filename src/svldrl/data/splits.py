"""Cross-validation splits as nnU-Net v2 makes them, stored in ``splits_final.json``.

The folds equal nnU-Net's: sklearn's ``KFold(shuffle=True, random_state=12345)`` over the sorted
case ids, reimplemented here (same RandomState shuffle, same fold sizes) so sklearn is not needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from svldrl.data.io import read_json, write_text
from svldrl.errors import UserError
from svldrl.reporter import report_warning

SPLITS_FILE = "splits_final.json"


def make_splits(case_ids: Iterable[str], num_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """K folds of ``{"train": [...], "val": [...]}`` over the sorted case ids.

    Args:
        case_ids: training case ids (order does not matter).
        num_folds: wanted folds; with fewer cases, as many folds as cases (at least 2).
        seed: shuffle seed (nnU-Net uses 12345).

    Raises:
        UserError: fewer than 2 cases, or duplicate ids.
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        dupes = sorted({c for c in ids if ids.count(c) > 1})
        raise UserError(f"duplicate case ids for splitting: {', '.join(dupes[:5])}")
    if len(ids) < 2:
        raise UserError(f"cross-validation needs at least 2 training cases, got {len(ids)}")
    k = max(2, min(int(num_folds), len(ids)))
    n = len(ids)
    # sklearn KFold: shuffle arange(n) with RandomState(seed); the first n % k folds get one extra case.
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(k, n // k, dtype=int)
    sizes[: n % k] += 1
    splits = []
    start = 0
    for size in sizes:
        val_mask = np.zeros(n, dtype=bool)
        val_mask[order[start : start + size]] = True
        start += size
        splits.append(
            {
                "train": [ids[i] for i in np.flatnonzero(~val_mask)],
                "val": [ids[i] for i in np.flatnonzero(val_mask)],
            }
        )
    return splits


#: ``--fold all`` (nnU-Net's): train on every training case, validate on none.
ALL = "all"


def parse_fold(value: object) -> int | str:
    """``3`` / ``"3"`` -> 3, ``"all"`` -> ``"all"``.

    Raises:
        UserError: anything else.
    """
    if value == ALL:
        return ALL
    if isinstance(value, bool):
        raise UserError(f"fold must be a non-negative integer or 'all', got {value!r}")
    try:
        fold = int(str(value))
    except ValueError:
        raise UserError(f"fold must be a non-negative integer or 'all', got {value!r}") from None
    if fold < 0:
        raise UserError(f"fold must be a non-negative integer or 'all', got {value!r}")
    return fold


def fold_cases(
    splits: list[dict[str, list[str]]] | None, fold: int | str, case_ids: Iterable[str]
) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) of ``fold``, sorted; ``all``: every case trains, none validates.

    Raises:
        UserError: a fold the splits do not have.
    """
    if fold == ALL:
        return sorted(case_ids), []
    if splits is None or int(fold) >= len(splits):
        n = 0 if splits is None else len(splits)
        raise UserError(f"--fold {fold} does not exist: the splits have {n} folds (or use --fold all)")
    return sorted(splits[int(fold)]["train"]), sorted(splits[int(fold)]["val"])


def trusted_split(
    case_ids: Iterable[str], trusted: Iterable[str], fold: int | str, train_on: str = "others"
) -> tuple[list[str], list[str]]:
    """(training ids, validation ids), sorted, of a dataset with trusted cases: they are the validation cases.

    A handful of trusted masks (4 to 8 of 48 in MTCL's and PLIL's setting) is all the clean reference a user
    has; a fold of it (one or two cases) would make checkpoint selection noise, so every trusted case
    validates, whatever the fold number (the splits are not used), and the other cases train:

    - ``others``: the cases that are not trusted train; the trusted ones are held out (an honest selection);
    - ``all``: every case trains, the trusted ones on their trusted masks (a method with a clean subset: MTCL);
      they validate too, so selection then favours the checkpoints that fit them;
    - ``trusted``: only the trusted cases train (and validate).

    ``fold`` ``all`` (nnU-Net's) keeps its meaning: nothing validates, and every case trains (``trusted``: the
    trusted ones).

    Raises:
        UserError: no trusted case, or one that is not among ``case_ids``.
    """
    ids, chosen = sorted(case_ids), sorted(set(trusted))
    if not chosen:
        raise UserError("no trusted cases to validate on")
    unknown = sorted(set(chosen) - set(ids))
    if unknown:
        raise UserError(f"trusted case '{unknown[0]}' is not a training case")
    if train_on not in ("others", "all", "trusted"):
        raise ValueError(f"train_on must be others, all or trusted, got {train_on!r}")
    if train_on == "trusted":
        train = chosen
    elif train_on == "all" or fold == ALL:
        train = ids
    else:
        train = [c for c in ids if c not in set(chosen)]
    return train, ([] if fold == ALL else chosen)


def load_or_create_splits(
    root: str | Path,
    case_ids: Iterable[str],
    num_folds: int = 5,
    seed: int = 12345,
    reporter: Any = None,
    write: bool = True,
) -> list[dict[str, list[str]]]:
    """Honour ``root/splits_final.json`` if present, else make the splits and save them there.

    The file is written atomically, and not at all when ``root`` is read-only or ``write`` is False (the
    splits are still returned, and are the same next time because the seed is fixed).

    A file that no longer covers the dataset's cases (cases were added since it was written) is never used
    silently: when it is exactly what svldrl would have made for its own cases, it is rebuilt over all cases
    with a warning through ``reporter`` (a Python warning when it is None); a file the user made is refused.

    Raises:
        UserError: the existing file is malformed, names unknown cases, puts a case in both train and val of
            one fold, or (user-made) leaves training cases out of every fold.
    """
    root = Path(root)
    path = root / SPLITS_FILE
    ids = list(case_ids)
    if path.is_file():
        splits = _read_splits(path, set(ids))
        covered = {c for f in splits for c in f["train"] + f["val"]}
        missing = sorted(set(ids) - covered)
        if not missing:
            return splits
        listed = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        if splits != make_splits(sorted(covered), len(splits), seed):
            raise UserError(
                f"the splits name {len(covered)} of the {len(ids)} training cases (in no fold: {listed}); "
                "add them to the folds, or delete the file to make new splits",
                path,
            )
        report_warning(
            reporter,
            f"{path} was made for {len(covered)} training cases, the dataset now has {len(ids)} "
            f"(new: {listed}); the folds are made again over all cases, so fold numbers now hold other "
            "validation cases than in runs trained before",
        )
    splits = make_splits(ids, num_folds, seed)
    if write and os.access(root, os.W_OK):
        try:
            write_text(path, json.dumps(splits, indent=2) + "\n")
        except OSError:
            pass  # read-only mount or full disk: the splits are reproducible, so not saving is harmless
    return splits


def _read_splits(path: Path, known: set[str]) -> list[dict[str, list[str]]]:
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise UserError('expected a non-empty list of {"train": [...], "val": [...]} folds', path)
    for i, fold in enumerate(data):
        if not isinstance(fold, dict) or not all(
            isinstance(fold.get(k), list) and all(isinstance(c, str) for c in fold[k])
            for k in ("train", "val")
        ):
            raise UserError(f'fold {i} is not {{"train": [names], "val": [names]}}', path)
        if not fold["train"] or not fold["val"]:
            raise UserError(f"fold {i} has an empty train or val list", path)
        unknown = sorted((set(fold["train"]) | set(fold["val"])) - known)
        if unknown:
            more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise UserError(f"fold {i} names unknown cases: {', '.join(unknown[:5])}{more}", path)
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both:
            raise UserError(f"fold {i} has cases in both train and val: {', '.join(both[:5])}", path)
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in data]
