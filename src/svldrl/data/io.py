"""Read and write 3D volumes.

NIfTI through nibabel (voxel order and affine kept as stored), NRRD/MHA/DICOM series through
SimpleITK, HDF5 (``image``/``label`` datasets, LA / Pancreas-CT releases) through h5py.
Every reader returns a :class:`Volume` whose array is indexed (i, j, k) in the voxel order of
its ``affine`` (RAS+ world, nibabel convention), so masks written with the same affine overlay
the input in any viewer.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from svldrl.errors import UserError

NIFTI_ENDINGS = (".nii.gz", ".nii")
SITK_ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd")
H5_ENDINGS = (".h5", ".hdf5")
READABLE_ENDINGS = NIFTI_ENDINGS + SITK_ENDINGS + H5_ENDINGS


@dataclass
class Volume:
    """A 3D array with its voxel-to-world affine (RAS+, mm) and the source header if any."""

    array: np.ndarray
    affine: np.ndarray
    header: Any = None
    meta: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        return self.grid.spacing

    @property
    def grid(self) -> Grid:
        """Shape and affine of the volume."""
        return Grid(tuple(self.array.shape), self.affine)


@dataclass(frozen=True)
class Grid:
    """The voxel grid of a volume: array shape and voxel-to-world affine (RAS+, mm)."""

    shape: tuple[int, ...]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        return tuple(float(s) for s in np.sqrt((np.asarray(self.affine)[:3, :3] ** 2).sum(axis=0)))


def read_grid(path: str | Path, key: str = "image") -> Grid:
    """The grid of a volume without reading its voxels where the format allows (NIfTI); else via
    :func:`read_volume`. Raises :class:`UserError` as :func:`read_volume` does."""
    path = Path(path)
    if path.is_file() and file_ending(path) in NIFTI_ENDINGS:
        check_volume_header(path)
        img = nib.load(str(path))
        return Grid(tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=np.float64))
    vol = read_volume(path, key=key)
    return Grid(tuple(vol.array.shape), vol.affine)


def file_ending(path: str | Path) -> str:
    """The recognised ending of ``path`` ('.nii.gz', '.nrrd', ...) or its last suffix."""
    name = str(path).lower()
    for ending in READABLE_ENDINGS:
        if name.endswith(ending):
            return ending
    return Path(name).suffix


def read_volume(path: str | Path, key: str = "image") -> Volume:
    """Read a 3D volume; ``key`` picks the dataset of an HDF5 file.

    Raises:
        UserError: missing, empty, truncated or unreadable file, unknown ending, not 3D,
            or NaN/Inf values.
    """
    path = Path(path)
    if path.is_dir():
        vol = _read_dicom_series(path)
    else:
        if not path.exists():
            raise UserError("file not found", path)
        if path.stat().st_size == 0:
            raise UserError("file is empty (0 bytes)", path)
        ending = file_ending(path)
        try:
            if ending in NIFTI_ENDINGS:
                img = nib.load(str(path))
                arr = np.asarray(img.dataobj)
                vol = Volume(arr, np.asarray(img.affine, dtype=np.float64), img.header)
            elif ending in SITK_ENDINGS:
                vol = _read_sitk(path)
            elif ending in H5_ENDINGS:
                vol = _read_h5(path, key)
            else:
                raise UserError(
                    f"unsupported file ending '{ending}' (expected one of {', '.join(READABLE_ENDINGS)})",
                    path,
                )
        except UserError:
            raise
        except Exception as exc:  # nibabel / SimpleITK / h5py raise many types for broken files
            raise UserError(f"cannot read volume ({type(exc).__name__}: {_short(exc)})", path) from None
    arr = vol.array
    _check_3d(arr.shape, path)
    if arr.ndim == 4:
        arr = arr[..., 0]
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise UserError("contains NaN or Inf values", path)
    vol.array = arr
    vol.meta.setdefault("path", str(path))
    return vol


def _check_3d(shape: tuple[int, ...], path: Path) -> None:
    """3D, or 4D with one trailing component (a NIfTI time axis of length 1)."""
    if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] == 1)):
        raise UserError(f"expected a 3D volume, got {len(shape)}D with shape {tuple(shape)}", path)


def check_volume_header(path: str | Path) -> None:
    """Cheap checks of a volume before a long job reads it: present, not empty, a readable ending and, for
    NIfTI, a 3D header. Problems only the data shows (truncated data, NaN) are found by :func:`read_volume`.

    Raises:
        UserError: as :func:`read_volume` would for the same problem.
    """
    path = Path(path)
    if path.is_dir():
        return
    if not path.exists():
        raise UserError("file not found", path)
    if path.stat().st_size == 0:
        raise UserError("file is empty (0 bytes)", path)
    ending = file_ending(path)
    if ending not in READABLE_ENDINGS:
        raise UserError(
            f"unsupported file ending '{ending}' (expected one of {', '.join(READABLE_ENDINGS)})", path
        )
    if ending in NIFTI_ENDINGS:
        try:
            shape = nib.load(str(path)).shape
        except Exception as exc:
            raise UserError(f"cannot read volume ({type(exc).__name__}: {_short(exc)})", path) from None
        _check_3d(shape, path)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else "unreadable"


def _read_sitk(path: Path) -> Volume:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    return _from_sitk(img)


def _read_dicom_series(folder: Path) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    if not files:
        raise UserError("folder holds no DICOM series", folder)
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except Exception as exc:
        raise UserError(f"cannot read DICOM series ({_short(exc)})", folder) from None
    return _from_sitk(img)


def _from_sitk(img: Any) -> Volume:
    """SimpleITK image (LPS, array z,y,x) -> Volume (RAS affine, array i,j,k)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(img)
    if arr.ndim == 3:
        arr = np.transpose(arr, (2, 1, 0))
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
    affine[:3, 3] = lps_to_ras @ origin
    return Volume(arr, affine, None)


def _read_h5(path: Path, key: str) -> Volume:
    import h5py

    with h5py.File(path, "r") as f:
        if key not in f:
            raise UserError(f"HDF5 file has no dataset '{key}' (has: {', '.join(f.keys())})", path)
        arr = np.asarray(f[key])
        spacing = np.asarray(f.attrs.get("spacing", (1.0, 1.0, 1.0)), dtype=np.float64)
    # The LA / Pancreas-CT releases store no geometry; spacing defaults to 1 mm unless an attribute says.
    return Volume(arr, np.diag([*spacing[:3], 1.0]), None)


class DiskFullError(UserError, OSError):
    """No space (or quota) left while writing: a :class:`UserError` for the CLI (one line, exit 2) and
    still an ``OSError`` for callers that fall back when a folder cannot be written."""


class NotWritableError(UserError, OSError):
    """A folder or file that cannot be written (permissions, a read-only file system); like
    :class:`DiskFullError` both a user error and an ``OSError``."""


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def current_umask() -> int:
    """The process's file-creation mask (read from /proc on Linux; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Any) -> Path:
    """Call ``write(tmp_path)`` then fsync and rename onto ``path``, so readers never see half a file.

    A failure (disk full, kill) leaves the previous file, if any, untouched and removes the temporary and
    any folder this call created.

    Raises:
        DiskFullError: the disk or quota is full ("disk full while writing <path>").
    """
    path = Path(path)
    created = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes) or ".tmp"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{suffix}", dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates the temporary with mode 0600; the file in place gets what the user's umask says
        # (0644 under the usual 022), as a plain open() would have given it.
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        for d in created:  # deepest first; only folders still empty
            with contextlib.suppress(OSError):
                d.rmdir()
        if isinstance(exc, OSError) and not isinstance(exc, UserError):
            if exc.errno in _DISK_FULL:
                raise DiskFullError(f"disk full while writing {path}") from None
            if exc.errno in _NOT_WRITABLE:
                where = exc.filename or path
                raise NotWritableError(f"cannot write here ({exc.strerror})", where) from None
        raise
    return path


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray, header: Any = None) -> Path:
    """Write ``array`` as NIfTI with the given affine (and the reference header when given), atomically."""
    array = np.asarray(array)
    if header is not None and isinstance(header, nib.Nifti1Header):
        hdr = header.copy()
        hdr.set_data_dtype(array.dtype)
        img = nib.Nifti1Image(array, affine, hdr)
    else:
        img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    # Masks must not be rescaled by a header's scl_slope/inter copied from the image.
    img.header.set_slope_inter(1.0, 0.0)

    def _write(tmp: str) -> None:
        nib.save(img, tmp)

    return atomic_write(path, _write)


_REQUIRED = object()


def read_json(path: str | Path, default: Any = _REQUIRED) -> Any:
    """The JSON document in ``path``.

    With ``default`` given, a missing, unreadable or malformed file gives ``default`` (for svldrl's own
    bookkeeping files, where absence means "not done yet"); without it, a :class:`UserError` naming the file
    and the problem (for files the user gives).
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        if default is not _REQUIRED:
            return default
        raise UserError(f"malformed JSON (line {exc.lineno}: {exc.msg})", path) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if default is not _REQUIRED:
            return default
        raise UserError(f"cannot read file ({type(exc).__name__})", path) from None


def json_default(x: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays and paths as plain JSON."""
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""

    def _write(tmp: str) -> None:
        Path(tmp).write_text(text)

    return atomic_write(path, _write)
