"""Where svldrl may write: output folders are claimed before anything is written, and a user's data is never
replaced.

Every command that writes a folder of results (``predict``, ``evaluate --out``, ``audit --out``, ``benchmark
--out``) first calls :func:`claim_output_dir`. It

- refuses, always, a dataset's own image and mask folders (``imagesTr``, ``labelsTr``, ``imagesTs``,
  ``labelsTs``, ``labelsTr_noisy/*``, ``labelsTr_trusted``) and anything inside them, whatever ``--overwrite``
  says: those hold the user's reference data, and a prediction written there would silently replace it;
- refuses a folder that holds files the command would replace, unless svldrl wrote that folder for the same
  kind of output (it keeps a marker file, :data:`MARKER`) or the user passed ``--overwrite``;
- refuses a path that is a file where a folder is expected, a folder it cannot create or write, with one line
  naming the path (a :class:`~svldrl.errors.UserError`, exit code 2);
- then creates the folder and writes the marker, so a rerun of the same command may replace its own output.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from svldrl.data.dataset import NOISY_DIR, TRUSTED_DIR
from svldrl.data.io import read_json, write_text
from svldrl.errors import UserError

#: Marker written into every output folder svldrl claims: ``{"written_by": "svldrl", "kind": ...}``.
MARKER = ".svldrl_output.json"
#: Folders of an nnU-Net raw dataset that hold the user's images and masks.
DATASET_DIRS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")


def dataset_folder_of(path: str | Path) -> Path | None:
    """The dataset image / mask folder that ``path`` is or lies in, or None.

    A folder counts when it is named like one of :data:`DATASET_DIRS` and sits beside a ``dataset.json`` or
    another such folder (a dataset, not a user's folder that happens to share the name), or when it is a
    noisy mask set ``labelsTr_noisy/<name>`` or the expert masks ``labelsTr_trusted``.
    """
    p = Path(os.path.abspath(path))
    for folder in (p, *p.parents):
        parent = folder.parent
        if folder.name in DATASET_DIRS and (
            (parent / "dataset.json").is_file()
            or any((parent / d).is_dir() for d in DATASET_DIRS if d != folder.name)
        ):
            return folder
        if NOISY_DIR in (folder.name, parent.name):  # labelsTr_noisy itself, or one noisy set in it
            return folder
        if folder.name == TRUSTED_DIR:  # a user's expert masks
            return folder
    return None


def owner_kind(folder: str | Path) -> str | None:
    """The kind recorded in ``folder``'s marker (``predictions``, ``audit`` ...), or None when svldrl did not
    write it (no marker, or an unreadable one)."""
    data = read_json(Path(folder) / MARKER, None)
    if isinstance(data, dict) and data.get("written_by") == "svldrl" and isinstance(data.get("kind"), str):
        return data["kind"]
    return None


def check_writable_dir(folder: Path, what: str = "output folder") -> None:
    """Refuse a folder that cannot be created or written (read-only, a file on the way, no permission).

    Creates nothing: the nearest existing ancestor must be a writable folder.
    """
    p = Path(os.path.abspath(folder))
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{what} is a file, not a folder", folder)
        if not os.access(p, os.W_OK | os.X_OK):
            raise UserError(f"{what} is not writable (permission denied)", folder)
        return
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot create the {what}: {parent} is a file", folder)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(
                    f"cannot create the {what}: {parent} is not writable (permission denied)", folder
                )
            return


def check_writable_file(path: str | Path, what: str = "output file") -> None:
    """Refuse a file path that names a folder, or whose folder cannot be created or written."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} names a folder; give a file path", path)
    check_writable_dir(p.parent, f"folder of the {what}")
    if p.exists() and not os.access(p, os.W_OK) and not os.access(p.parent, os.W_OK):
        raise UserError(f"{what} is not writable (permission denied)", path)


def is_dataset_root(path: str | Path) -> bool:
    """Whether ``path`` is a dataset folder itself (``dataset.json`` beside image or mask folders)."""
    p = Path(path)
    return (p / "dataset.json").is_file() and any((p / d).is_dir() for d in DATASET_DIRS)


def refuse_dataset_folder(path: str | Path, flag: str, allow_root: bool = False) -> None:
    """Raise unless ``path`` lies outside every dataset image / mask folder and (unless ``allow_root``) is no
    dataset folder itself."""
    if not allow_root and is_dataset_root(path):
        raise UserError(
            f"{flag} is a dataset folder; svldrl never writes into your dataset (choose a separate folder)",
            path,
        )
    inside = dataset_folder_of(path)
    if inside is not None:
        where = "is" if Path(os.path.abspath(path)) == inside else "lies inside"
        raise UserError(
            f"{flag} {where} the dataset folder {inside.name}/, which holds your images or masks; "
            "svldrl never writes there (choose a separate output folder)",
            path,
        )


def check_output_dir(
    folder: str | Path,
    kind: str,
    will_write: Iterable[str] = (),
    overwrite: bool | None = False,
    flag: str = "output folder",
) -> None:
    """Check, without writing anything, that ``folder`` may receive ``kind`` output.

    Args:
        folder: the output folder.
        kind: what goes there (``predictions``, ``audit``, ``benchmark`` ...).
        will_write: relative paths of the files the command is about to write (to find collisions).
        overwrite: the user's ``--overwrite``: replace files of a folder svldrl did not write for ``kind``;
            None when the command offers no such flag.
        flag: how the user named the folder, for messages (``--out``, ``OUTPUT``).

    Raises:
        UserError: a dataset folder or a folder inside its images / masks (always), a file in the way, a
            folder that cannot be created or written, or files that would be replaced without ``--overwrite``.
    """
    out = Path(folder)
    refuse_dataset_folder(out, flag)
    check_writable_dir(out, flag)
    if not out.is_dir() or overwrite:
        return
    owner = owner_kind(out)
    if owner == kind:
        return
    clash = sorted(name for name in set(will_write) if (out / name).exists())
    if clash:
        whose = f"svldrl {owner} output" if owner else "files svldrl did not write"
        more = f" (+{len(clash) - 3} more)" if len(clash) > 3 else ""
        hint = "choose another folder" + ("" if overwrite is None else " or pass --overwrite")
        raise UserError(
            f"{flag} holds {whose} that this command would replace ({', '.join(clash[:3])}{more}); {hint}",
            out,
        )


def mark_output_dir(folder: str | Path, kind: str, flag: str = "output folder") -> Path:
    """Create ``folder`` (after :func:`check_output_dir`) and record that svldrl writes ``kind`` output there."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if owner_kind(out) != kind:
            write_text(out / MARKER, json.dumps({"written_by": "svldrl", "kind": kind}) + "\n")
    except OSError as exc:
        if isinstance(exc, UserError):
            raise
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise UserError(f"{flag} is not writable ({exc.strerror})", out) from None
        raise UserError(f"cannot create the {flag} ({exc.strerror or exc})", out) from None
    return out


@contextmanager
def output_dir_for_first_write(folder: str | Path, kind: str, flag: str = "output folder") -> Iterator[Path]:
    """:func:`mark_output_dir` around the first write into ``folder``: if the folder is new and the write
    fails (a full disk, a bad input found late), the folder and its marker are removed again."""
    out = Path(folder)
    created = not out.exists()
    mark_output_dir(out, kind, flag)
    try:
        yield out
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def claim_output_dir(
    folder: str | Path,
    kind: str,
    will_write: Iterable[str] = (),
    overwrite: bool | None = False,
    flag: str = "output folder",
) -> Path:
    """:func:`check_output_dir`, then :func:`mark_output_dir`; returns the folder."""
    check_output_dir(folder, kind, will_write, overwrite, flag)
    return mark_output_dir(folder, kind, flag)
