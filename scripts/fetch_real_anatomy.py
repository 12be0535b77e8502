#!/usr/bin/env python
"""Build real-anatomy benchmark datasets offline from Colin27 + AAL (Debian mricron-data) and a chest CT (slicerio).

    python scripts/fetch_real_anatomy.py [--cache DIR] [--structures putamen,caudate,...|all] [--seed 0]
        [--spacing 1.5] [--size 32] [--train-cases 48] [--test-cases 40] [--skip-ct] [--force]

Sources (pinned, sha256-checked against ``scripts/real_anatomy_manifest.json``; a mismatch is refused, exit 2):

- Debian ``mricron-data 1.2.20211006+dfsg-4``, fetched without root: ``apt-get download`` + ``dpkg-deb -x``
  into ``DIR/sources/`` (an installed copy in ``/usr/share/mricron/templates`` is used when the download
  fails and its checksums match). Used: ``ch2.nii.gz`` (Colin27's T1, 181 x 217 x 181 at 1 mm, uint8, RAS;
  with its skull: ``ch2bet.nii.gz`` has the same values inside the brain), ``aal.nii.gz`` (the AAL atlas of
  116 regions drawn on this brain, same grid, checked) and ``aal.nii.txt`` (region numbers and names; odd =
  ``_L``, even = ``_R``, checked against the manifest and against the affine: every ``_L`` region must lie
  at world x < 0, RAS). Licence: the package is BSD-3-Clause, but Colin27 (MNI) and AAL (GIN-IMN) are for
  research use: never commit copies or the datasets made from them.
- slicerio 1.4.0 wheel (PyPI, MIT; ``pip download --no-deps``): ``slicerio/data/CTChest4.nrrd``, a chest CT
  128 x 128 x 34 at 3.05 x 3.05 x 10 mm, and ``Segmentation.seg.nrrd``, its 7-segment label map.

What it writes under DIR (default ``~/.cache/svldrl/real_anatomy``; must lie outside any git work tree),
nnU-Net v2 raw layout (``imagesTr/{CASE}_0000.nii.gz``, ``labelsTr/{CASE}.nii.gz``, ``dataset.json``):

1. ``Dataset80N_Colin<Structure>`` per structure of ``--structures`` (putamen 801 (default), caudate 802,
   thalamus 803, hippocampus 804, pallidum 805, amygdala 806): ``--train-cases`` augmented crops of the LEFT
   structure in imagesTr/labelsTr and ``--test-cases`` of the RIGHT one in imagesTs/labelsTs (anatomy never
   trained on). Each case: ``--size``^3 voxels at ``--spacing`` mm isotropic (affine = that spacing, RAS,
   world positions as in Colin27), a random small affine (rotation about a random axis up to 10 degrees,
   per-axis scale 0.9-1.1; never a left-right flip) and a smooth elastic deformation applied to image and
   mask in one resampling from the 1 mm original (image: linear after a light anti-alias blur; mask: the
   binary mask interpolated linearly, then > 0.5), a random crop offset (up to ``--size``/4 voxels from
   centred, drawn until at least 90 % of the structure lies in the crop, or 95 % of what a centred crop
   holds where the structure is larger than the crop: caudate's tail), then intensity augmentation (slight
   blur in 30 % of cases, gamma 0.78-1.28, contrast 0.85-1.15, a smooth multiplicative bias field (typically
   +-5-15 % over the crop), Rician noise with sigma 1-4 % of the white-matter level, global scale 0.8-1.25).
   Mask = that one AAL structure, binary, whatever other region shares the crop.
2. ``Dataset810_ColinAAL``: a check set of clean masks without augmentation, for mask-correcting rules (no
   training): 12 training cases, one per (structure, hemisphere) of caudate, putamen, pallidum, thalamus,
   hippocampus, amygdala, each the un-augmented crop at ``--spacing`` holding the structure with a margin of
   at least 8 voxels. dataset.json's ``svldrl_split`` (and README.txt) name the left cases "dev" and the right
   ones "test".
3. ``Dataset811_ChestCTSegments`` (unless ``--skip-ct``): the same kind of check set from slicerio's chest CT
   on its native grid (3.05 x 3.05 x 10 mm: no resampling across the 10 mm slices), one case per segment that
   is one connected organ (right lung, left lung, cervical, thoracic, lumbar vertebral column; its largest
   connected component, a few stray voxels dropped), channel "CT", HU clipped to [-1024, 3071] (the scan's
   -3024 outside the field of view is padding, not HU), margin 8 voxels or up to the volume's edge.
   Ribs (76 pieces) and "tissue" (everything else) are left out.

All Colin cases share ONE subject (Colin27: one brain scanned 27 times and averaged): the benchmark tests
generalisation to another hemisphere's structure and to augmentations, not to other people; say so when
reporting. Intensities: Colin27's uint8 values x 4 (0-1016, a scanner-like MR range, int16), never
normalised to [0, 1] (svldrl normalises itself); CT in HU.

"Clean" means un-augmented, not perfect: AAL was drawn on this brain, but not voxel by voxel along the T1's
edges (measured on the 1 mm data; ``AAL_NOTES``, also in the check set's README): the caudate spills 1-2 mm
into the lateral ventricle (13-17 % of its voxels are CSF-dark), the thalamus and hippocampus follow their
CSF / white-matter edges within about 1-2 mm (the hippocampus holding some temporal-horn CSF and white
matter), while putamen, pallidum and amygdala have little or no intensity edge at their AAL border. A rule
that moves a mask to intensity edges may "correct" the caudate away from the ventricle and be scored wrong.

Determinism and reruns: every case draws from its own ``numpy.random.Generator`` seeded by (``--seed``, AAL
label, case number), so the same settings give byte-identical files. Each dataset folder carries a stamp
(``.fetch.json``) of the settings that made it; a rerun with the same settings does nothing (no download);
a folder made with other settings is refused (exit 2) unless ``--force`` rebuilds it. The seed does not
affect the check sets. Datasets are built beside as ``<name>.partial`` and renamed when complete.

Needs only svldrl's dependencies (numpy, scipy, nibabel, SimpleITK), ``apt-get`` and ``dpkg-deb`` (no root).
It prints, at the end, the datasets written and their mean structure volume (mL).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from svldrl.data.fetching import git_work_tree, sha256_file
from svldrl.data.io import read_volume, write_nifti

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "real_anatomy_manifest.json"
DEFAULT_CACHE = Path("~/.cache/svldrl/real_anatomy").expanduser()
STAMP = ".fetch.json"
SCRIPT_VERSION = 1
INTENSITY_SCALE = 4.0  # Colin27's uint8 -> 0..1016
CHECK_MARGIN = 8  # voxels around the structure in the check sets
MIN_INSIDE = 0.9  # fraction of the structure a training crop must hold
CT_RANGE = (-1024, 3071)
ELASTIC_SIGMA_MM = 8.0  # smoothness of the elastic displacement
ELASTIC_RMS_MM = (0.8, 2.0)  # RMS displacement per axis
MAX_ROTATION_DEG = 10.0
SCALE_RANGE = (0.9, 1.1)


AAL_NOTES = {
    "caudate": "AAL's caudate overlaps the lateral ventricle by 1-2 mm (13-17 % of its voxels CSF-dark)",
    "putamen": "weak edge: putamen barely darker than the capsules (T1 98 vs 104); border not on a gradient peak",
    "pallidum": "no visible edge in T1 (102 inside, 102-105 around): the border is the atlas' alone",
    "thalamus": "follows the ventricle / CSF edge within about 1-2 mm (T1 95 inside, 80 just outside)",
    "hippocampus": "grey/white edge followed within about 1 mm; holds some temporal-horn CSF and white matter",
    "amygdala": "no intensity edge to grey matter around it (T1 81-88 on both sides): the border is the atlas'",
}


class FetchError(Exception):
    """A problem the user can fix (exit code 2)."""


def log(msg: str) -> None:
    print(f"fetch_real_anatomy: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# Manifest, checksums, sources


def load_manifest(path: Path = MANIFEST) -> dict[str, Any]:
    data = json.loads(path.read_text())
    ids = {s["id"] for s in data["sources"]}
    if not {"mricron-data", "slicerio"} <= ids:
        raise FetchError(f"{path}: the manifest must list the sources mricron-data and slicerio")
    for name in data["check_structures"]:
        if name not in data["structures"]:
            raise FetchError(f"{path}: check structure {name!r} is not in structures")
    return data


def source(manifest: dict[str, Any], source_id: str) -> dict[str, Any]:
    return next(s for s in manifest["sources"] if s["id"] == source_id)


def verify_sha256(path: Path, expected: str) -> None:
    """Raise :class:`FetchError` (one line) unless ``path`` exists and has this sha256."""
    if not path.is_file():
        raise FetchError(f"missing file {path}")
    digest = sha256_file(path)
    if digest != expected:
        raise FetchError(f"checksum mismatch for {path}: sha256 {digest}, manifest {expected}")


def verify_files(folder: Path, files: dict[str, str]) -> Path:
    for name, digest in files.items():
        verify_sha256(folder / name, digest)
    return folder


def _run(cmd: Sequence[str], cwd: Path) -> None:
    try:
        res = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise FetchError(f"{cmd[0]} not found") from None
    if res.returncode != 0:
        tail = " | ".join((res.stdout + res.stderr).strip().splitlines()[-3:])
        raise FetchError(f"{' '.join(cmd)} failed (exit {res.returncode}): {tail}")


def download_deb(entry: dict[str, Any], dest: Path) -> Path:
    """``apt-get download PACKAGE=VERSION`` into ``dest`` (no root needed); checksum verified."""
    log(f"apt-get download {entry['package']}={entry['version']}")
    _run(["apt-get", "download", "-q", f"{entry['package']}={entry['version']}"], dest)
    path = dest / entry["filename"]
    verify_sha256(path, entry["sha256"])
    return path


def download_wheel(entry: dict[str, Any], dest: Path) -> Path:
    """``pip download --no-deps PACKAGE==VERSION`` into ``dest``; checksum verified."""
    spec = f"{entry['package']}=={entry['version']}"
    log(f"pip download {spec}")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
            str(dest),
            spec,
        ],
        dest,
    )
    path = dest / entry["filename"]
    verify_sha256(path, entry["sha256"])
    return path


def extract(archive: Path, entry: dict[str, Any], dest: Path) -> None:
    """The manifest's files of ``archive`` (a .deb or a wheel) into ``dest/<prefix>/``."""
    if entry["kind"] == "deb":
        _run(["dpkg-deb", "-x", str(archive), str(dest)], dest)
        return
    with zipfile.ZipFile(archive) as zf:
        names = [f"{entry['prefix']}/{name}" for name in entry["files"]]
        missing = [n for n in names if n not in zf.namelist()]
        if missing:
            raise FetchError(f"{archive.name} lacks {', '.join(missing)}")
        zf.extractall(dest, names)


def obtain(entry: dict[str, Any], cache: Path) -> Path:
    """Folder holding the verified files of one manifest source.

    Order: the extracted copy in ``cache/sources/<id>`` (a checksum mismatch there is refused, not
    overwritten); else download (apt-get / pip), verify the archive, extract beside and rename into place,
    verify every file; for the Debian package, when the download fails, an installed copy whose files match.
    """
    done = cache / "sources" / entry["id"]
    folder = done / entry["prefix"]
    if done.is_dir():
        return verify_files(folder, entry["files"])
    (cache / "sources").mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{entry['id']}-", dir=cache / "sources") as tmp:
            tmp = Path(tmp)
            (tmp / "dl").mkdir()
            (tmp / "x").mkdir()
            fetcher = download_deb if entry["kind"] == "deb" else download_wheel
            archive = fetcher(entry, tmp / "dl")
            extract(archive, entry, tmp / "x")
            verify_files(tmp / "x" / entry["prefix"], entry["files"])
            os.replace(tmp / "x", done)
    except FetchError as exc:
        installed = Path(entry["installed"]) if entry.get("installed") else None
        if installed is None or not installed.is_dir() or "checksum mismatch" in str(exc):
            raise
        log(f"{exc}; using the installed copy in {installed}")
        return verify_files(installed, entry["files"])
    return verify_files(folder, entry["files"])


# ----------------------------------------------------------------------------------------------------------
# The atlas


@dataclass
class Atlas:
    """A T1 volume (float32, already scaled to the output range), its label volume and labels' names."""

    t1: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    names: dict[int, str]


def parse_label_text(text: str) -> dict[int, str]:
    """``aal.nii.txt``: lines ``<number> <name> [<code>]`` -> {number: name}."""
    names = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    if not names:
        raise FetchError("the atlas label file lists no regions")
    return names


def make_atlas(
    t1: np.ndarray,
    t1_affine: np.ndarray,
    labels: np.ndarray,
    labels_affine: np.ndarray,
    names: dict[int, str],
) -> Atlas:
    """Check that the labels lie on the T1's grid and build the :class:`Atlas` (T1 scaled to the MR range)."""
    if t1.shape != labels.shape or not np.allclose(t1_affine, labels_affine, atol=1e-4):
        raise FetchError(
            f"the atlas is not on the T1's grid: T1 {t1.shape} {np.round(t1_affine, 3).tolist()}, "
            f"labels {labels.shape} {np.round(labels_affine, 3).tolist()}"
        )
    if np.abs(np.asarray(labels) - np.rint(labels)).max() > 0:
        raise FetchError("the atlas has non-integer labels")
    return Atlas(
        np.asarray(t1, dtype=np.float32) * np.float32(INTENSITY_SCALE),
        np.asarray(labels).astype(np.int16),
        np.asarray(t1_affine, dtype=np.float64),
        names,
    )


def read_atlas(folder: Path) -> Atlas:
    t1 = read_volume(folder / "ch2.nii.gz")
    lab = read_volume(folder / "aal.nii.gz")
    names = parse_label_text((folder / "aal.nii.txt").read_text())
    return make_atlas(t1.array, t1.affine, lab.array, lab.affine, names)


def structure_labels(atlas: Atlas, spec: dict[str, Any]) -> tuple[int, int]:
    """(left, right) label numbers of a structure, checked against the label file and against the affine.

    The names must read ``<aal>_L`` / ``<aal>_R`` and, in world (RAS) coordinates, the left region's centre
    must lie at x < 0 and the right one's at x > 0: voxel order is whatever the affine says.
    """
    left, right = int(spec["left"]), int(spec["right"])
    for value, side in ((left, "L"), (right, "R")):
        name = atlas.names.get(value)
        if name != f"{spec['aal']}_{side}":
            raise FetchError(
                f"label {value} is {name!r} in the atlas label file, expected {spec['aal']}_{side}"
            )
        x = world_centroid(atlas.labels == value, atlas.affine)[0]
        if (x >= 0) if side == "L" else (x <= 0):
            raise FetchError(
                f"{name} lies at world x = {x:.1f} mm: the atlas is flipped or its affine is wrong"
            )
    return left, right


def world_centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)
    if len(idx) == 0:
        raise FetchError("a structure is absent from the atlas")
    return affine[:3, :3] @ idx.mean(axis=0) + affine[:3, 3]


def antialias(volume: np.ndarray, affine: np.ndarray, spacing: float) -> np.ndarray:
    """Gaussian blur before resampling to ``spacing`` (sigma = (factor - 1) / 2 native voxels per axis)."""
    native = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    sigma = np.maximum(0.0, (spacing / native - 1.0) / 2.0)
    if not np.any(sigma > 0):
        return volume.astype(np.float32)
    return ndi.gaussian_filter(volume.astype(np.float32), sigma)


# ----------------------------------------------------------------------------------------------------------
# Augmented training crops


@dataclass(frozen=True)
class Settings:
    seed: int = 0
    spacing: float = 1.5
    size: int = 32
    train_cases: int = 48
    test_cases: int = 40


def rotation_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def sample(volume: np.ndarray, world: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``volume`` at world points (3, ...); 0 outside."""
    inv = np.linalg.inv(affine)
    shape = world.shape[1:]
    pts = world.reshape(3, -1)
    vox = inv[:3, :3] @ pts + inv[:3, 3:4]
    out = ndi.map_coordinates(volume, vox, order=1, mode="constant", cval=0.0, prefilter=False)
    return out.reshape(shape)


def augment_intensity(img: np.ndarray, rng: np.random.Generator, ref: float) -> tuple[np.ndarray, dict]:
    """Realistic MR intensity changes of a crop; ``ref`` is the white-matter level. Returns int16 and facts."""
    facts: dict[str, Any] = {}
    x = img.astype(np.float64)
    blur = float(rng.uniform(0.3, 0.6)) if rng.random() < 0.3 else 0.0
    if blur:
        x = ndi.gaussian_filter(x, blur)
    facts["blur_vox"] = round(blur, 3)
    gamma = float(np.exp(rng.uniform(-0.25, 0.25)))
    x = ref * (np.clip(x, 0, None) / ref) ** gamma
    contrast = float(rng.uniform(0.85, 1.15))
    mean = float(x.mean())
    x = np.clip(mean + contrast * (x - mean), 0, None)
    # Smooth multiplicative bias: exp of a random quadratic over the crop (coordinates in [-1, 1]).
    n = x.shape
    g = np.meshgrid(*[np.linspace(-1, 1, s) for s in n], indexing="ij")
    lin = rng.uniform(-0.06, 0.06, 3)
    quad = rng.uniform(-0.03, 0.03, 3)
    log_bias = sum(lin[i] * g[i] + quad[i] * (g[i] ** 2 - 1 / 3) for i in range(3))
    x = x * np.exp(log_bias)
    noise = float(rng.uniform(0.01, 0.04)) * ref
    x = np.sqrt((x + rng.normal(0, noise, n)) ** 2 + rng.normal(0, noise, n) ** 2)  # Rician
    scale = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    x = x * scale
    facts.update(
        gamma=round(gamma, 3),
        contrast=round(contrast, 3),
        bias_range=[round(float(np.exp(log_bias.min())), 3), round(float(np.exp(log_bias.max())), 3)],
        noise_sigma=round(noise, 2),
        intensity_scale=round(scale, 3),
    )
    return np.clip(np.rint(x), 0, 32767).astype(np.int16), facts


def make_case(
    t1_aa: np.ndarray,
    structure: np.ndarray,
    atlas: Atlas,
    centre: np.ndarray,
    radius: float,
    settings: Settings,
    rng: np.random.Generator,
    ref: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """One augmented crop: (int16 image, uint8 mask, affine, facts).

    ``structure`` is the float32 binary mask of the one structure on the atlas grid, ``centre`` its world
    centroid, ``radius`` the largest distance (mm) of its voxels from it.
    """
    s, size = settings.spacing, settings.size
    max_shift = size // 4
    # A padded grid around the structure, large enough for the whole deformed structure and every crop.
    pad = max(size + 2 * max_shift, int(np.ceil((2 * radius * 1.12 + 12) / s)) + 4)
    half = (pad - 1) / 2.0
    axis = rng.standard_normal(3)
    angle = float(rng.uniform(0, np.deg2rad(MAX_ROTATION_DEG)))
    scales = rng.uniform(*SCALE_RANGE, 3)
    rot = rotation_matrix(axis, angle)
    inverse = np.diag(1.0 / scales) @ rot.T  # output offset -> native offset (forward: rot @ diag(scales))
    elastic_rms = float(rng.uniform(*ELASTIC_RMS_MM))
    disp = rng.standard_normal((3, pad, pad, pad))
    for i in range(3):
        disp[i] = ndi.gaussian_filter(disp[i], ELASTIC_SIGMA_MM / s, mode="reflect")
        disp[i] *= elastic_rms / max(float(disp[i].std()), 1e-12)
    offsets = (np.indices((pad, pad, pad), dtype=np.float64) - half) * s  # output world offsets from centre
    world = centre[:, None, None, None] + np.einsum("ij,j...->i...", inverse, offsets) + disp
    mask_full = sample(structure, world, atlas.affine) > 0.5
    total = int(mask_full.sum())
    if total == 0:
        raise FetchError("the deformed structure is empty")
    # Random crop offset: at least MIN_INSIDE of the structure in the crop (or 95 % of what the centred
    # crop holds when the structure is larger than the crop).
    c0 = pad // 2 - size // 2

    def inside(start: np.ndarray) -> float:
        a, b, c = start
        return float(mask_full[a : a + size, b : b + size, c : c + size].sum()) / total

    centred = inside(np.array([c0, c0, c0]))
    need = min(MIN_INSIDE, 0.95 * centred)
    best, best_frac = np.array([c0, c0, c0]), centred
    for _ in range(100):
        shift = rng.integers(-max_shift, max_shift + 1, 3)
        start = np.clip(c0 + shift, 0, pad - size)
        frac = inside(start)
        if frac >= need:
            best, best_frac = start, frac
            break
        if frac > best_frac:
            best, best_frac = start, frac
    a, b, c = best
    sl = (slice(a, a + size), slice(b, b + size), slice(c, c + size))
    mask = mask_full[sl].astype(np.uint8)
    img = sample(t1_aa, world[(slice(None), *sl)], atlas.affine)
    img, ifacts = augment_intensity(img, rng, ref)
    affine = np.diag([s, s, s, 1.0])
    affine[:3, 3] = centre + (best - half) * s
    facts = {
        "rotation_deg": round(float(np.rad2deg(angle)), 2),
        "scale_xyz": [round(float(v), 3) for v in scales],
        "elastic_rms_mm": round(elastic_rms, 2),
        "shift_vox": [int(v) for v in best - c0],
        "inside": round(best_frac, 3),
        "voxels": int(mask.sum()),
        "volume_ml": round(float(mask.sum()) * s**3 / 1000.0, 3),
        **ifacts,
    }
    return img, mask, affine, facts


def white_matter_level(atlas: Atlas) -> float:
    """A robust bright-tissue level of the T1 (95th percentile of the labelled brain)."""
    brain = atlas.t1[atlas.labels > 0]
    return float(np.percentile(brain, 95)) if brain.size else float(np.percentile(atlas.t1, 99))


def build_training_set(
    atlas: Atlas, name: str, spec: dict[str, Any], out: Path, settings: Settings, provenance: dict[str, Any]
) -> dict[str, Any]:
    """Write one augmented benchmark dataset into ``out``: left structure -> imagesTr, right -> imagesTs."""
    left, right = structure_labels(atlas, spec)
    t1_aa = antialias(atlas.t1, atlas.affine, settings.spacing)
    ref = white_matter_level(atlas)
    cases: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for split, label, n, sub, tag in (
        ("train", left, settings.train_cases, "Tr", "L"),
        ("test", right, settings.test_cases, "Ts", "R"),
    ):
        structure = (atlas.labels == label).astype(np.float32)
        idx = np.argwhere(atlas.labels == label)
        world = atlas.affine[:3, :3] @ idx.T + atlas.affine[:3, 3:4]
        centre = world.mean(axis=1)
        radius = float(np.sqrt(((world - centre[:, None]) ** 2).sum(axis=0)).max())
        for i in range(n):
            rng = np.random.default_rng([settings.seed, label, i])
            img, mask, affine, facts = make_case(t1_aa, structure, atlas, centre, radius, settings, rng, ref)
            if mask.sum() == 0:
                raise FetchError(f"{name}: case {i} of {atlas.names[label]} has an empty mask")
            case_id = f"colin_{tag}{i:03d}"
            write_nifti(out / f"images{sub}" / f"{case_id}_0000.nii.gz", img, affine)
            write_nifti(out / f"labels{sub}" / f"{case_id}.nii.gz", mask, affine)
            cases[split].append({"id": case_id, "aal_label": label, "region": atlas.names[label], **facts})
    structure_name = name
    ds = {
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, structure_name: 1},
        "numTraining": len(cases["train"]),
        "numTest": len(cases["test"]),
        "file_ending": ".nii.gz",
        "name": dataset_name(out),
        "description": (
            f"Augmented {settings.size}^3 crops at {settings.spacing:g} mm of the {structure_name} of ONE "
            f"subject (Colin27 T1 with the AAL atlas, Debian mricron-data): training cases from the LEFT "
            f"{structure_name} (AAL {left}, {atlas.names[left]}), test cases (imagesTs/labelsTs) from the RIGHT "
            f"one (AAL {right}, {atlas.names[right]}), anatomy never trained on. All cases share one subject: "
            "this tests generalisation across hemispheres and augmentations, not across people. Mask = that "
            "structure only. Intensities: Colin27 x 4 with augmentation (MR-like range, not normalised)."
        ),
        "spacing_mm": [settings.spacing] * 3,
        "settings": asdict(settings),
        "licence": "Colin27 and AAL: research use only; never commit copies",
        "source": provenance,
        "mean_volume_ml": {
            k: round(float(np.mean([c["volume_ml"] for c in v])), 3) if v else None for k, v in cases.items()
        },
        "cases": cases,
        "made_by": f"svldrl scripts/fetch_real_anatomy.py v{SCRIPT_VERSION}",
    }
    write_json(out / "dataset.json", ds)
    return ds


# ----------------------------------------------------------------------------------------------------------
# Clean check sets


def lattice_crop(
    atlas: Atlas, t1_aa: np.ndarray, label: int, spacing: float, margin: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Un-augmented crop of one label on a ``spacing`` lattice over the atlas' field of view (axes
    along world RAS): (int16 image, uint8 mask, affine, smallest margin per axis in voxels)."""
    idx = np.argwhere(atlas.labels == label)
    world = atlas.affine[:3, :3] @ idx.T + atlas.affine[:3, 3:4]
    # Voxel centres at corner + spacing * (k + 1/2), the corner being the atlas' first voxel's outer corner:
    # the same field of view as the 1 mm grid, and (at 1.5 mm) no sample falls exactly halfway between two
    # atlas voxels, where the interpolated binary mask would be 0.5 and the threshold would erode it.
    anchor = atlas.affine[:3, :3] @ np.full(3, -0.5) + atlas.affine[:3, 3] + spacing / 2.0
    lo = np.floor((world.min(axis=1) - anchor) / spacing).astype(int) - margin - 1
    hi = np.ceil((world.max(axis=1) - anchor) / spacing).astype(int) + margin + 1
    shape = tuple(int(v) for v in hi - lo + 1)
    grid = np.indices(shape, dtype=np.float64)
    pts = anchor[:, None, None, None] + (grid + lo[:, None, None, None]) * spacing
    # Other spacings (2 mm) do put samples halfway: a tiny shift breaks those ties, one way on the faces
    # looking down an axis and the other way on the faces looking up (no net erosion or dilation).
    tie = 1e-3 * np.abs(atlas.affine[:3, :3]).sum(axis=1)[:, None, None, None]
    mask = (sample((atlas.labels == label).astype(np.float32), pts + tie, atlas.affine) > 0.5).astype(
        np.uint8
    )
    img = np.clip(np.rint(sample(t1_aa, pts, atlas.affine)), -32768, 32767).astype(np.int16)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = anchor + lo * spacing
    return img, mask, affine, margins(mask)


def margins(mask: np.ndarray) -> list[int]:
    """Smallest number of background voxels between the mask and the crop's faces, per axis."""
    nz = np.argwhere(mask)
    if len(nz) == 0:
        return [0, 0, 0]
    return [int(min(a, b)) for a, b in zip(nz.min(axis=0), np.array(mask.shape) - 1 - nz.max(axis=0))]


def build_check_set(
    atlas: Atlas,
    structures: dict[str, dict[str, Any]],
    names: Sequence[str],
    out: Path,
    spacing: float,
    provenance: dict[str, Any],
    margin: int = CHECK_MARGIN,
) -> dict[str, Any]:
    """One clean case per (structure, hemisphere): left = "dev", right = "test"."""
    t1_aa = antialias(atlas.t1, atlas.affine, spacing)
    facts, split = [], {"dev": [], "test": []}
    for name in names:
        left, right = structure_labels(atlas, structures[name])
        for label, side, part in ((left, "L", "dev"), (right, "R", "test")):
            img, mask, affine, marg = lattice_crop(atlas, t1_aa, label, spacing, margin)
            if mask.sum() == 0 or min(marg) < margin:
                raise FetchError(f"check case {name} {side}: empty mask or margin {marg} < {margin}")
            case_id = f"{name}_{side}"
            write_nifti(out / "imagesTr" / f"{case_id}_0000.nii.gz", img, affine)
            write_nifti(out / "labelsTr" / f"{case_id}.nii.gz", mask, affine)
            split[part].append(case_id)
            facts.append(
                {
                    "id": case_id,
                    "structure": name,
                    "hemisphere": "left" if side == "L" else "right",
                    "split": part,
                    "aal_label": label,
                    "region": atlas.names[label],
                    "shape": list(mask.shape),
                    "margin_vox": marg,
                    "aal_boundary": AAL_NOTES.get(name, ""),
                    "voxels": int(mask.sum()),
                    "volume_ml": round(float(mask.sum()) * spacing**3 / 1000.0, 3),
                }
            )
    ds = {
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, "structure": 1},
        "numTraining": len(facts),
        "file_ending": ".nii.gz",
        "name": dataset_name(out),
        "description": (
            f"Clean (un-augmented) crops at {spacing:g} mm of Colin27's T1 around each of "
            f"{', '.join(names)}, left and right (AAL masks drawn on this same brain), margin >= {margin} "
            "voxels, mask = that structure only. A check set for rules that correct masks, not for training. "
            "All cases share ONE subject. svldrl_split: left = dev, right = test."
        ),
        "svldrl_split": split,
        "spacing_mm": [spacing] * 3,
        "licence": "Colin27 and AAL: research use only; never commit copies",
        "source": provenance,
        "mean_volume_ml": round(float(np.mean([f["volume_ml"] for f in facts])), 3),
        "cases": facts,
        "made_by": f"svldrl scripts/fetch_real_anatomy.py v{SCRIPT_VERSION}",
    }
    write_json(out / "dataset.json", ds)
    write_readme(
        out, ds, "left hemisphere (development: tune rules here)", "right hemisphere (held-out test)"
    )
    return ds


def read_segment_names(seg_path: Path) -> dict[int, str]:
    """Label value -> segment name from a Slicer ``.seg.nrrd`` header (SegmentN_Name / SegmentN_LabelValue)."""
    with open(seg_path, "rb") as fh:
        head = fh.read(1 << 16).split(b"\n\n", 1)[0].decode("latin-1")
    fields = dict(line.split(":=", 1) for line in head.splitlines() if ":=" in line)
    out = {}
    for key, value in fields.items():
        if key.startswith("Segment") and key.endswith("_Name"):
            n = key[len("Segment") : -len("_Name")]
            lv = fields.get(f"Segment{n}_LabelValue")
            if lv is not None and fields.get(f"Segment{n}_Layer", "0") == "0":
                out[int(lv)] = value.strip()
    return out


def build_ct_check_set(
    ct: np.ndarray,
    seg: np.ndarray,
    affine: np.ndarray,
    segment_names: dict[int, str],
    segments: Sequence[dict[str, Any]],
    out: Path,
    provenance: dict[str, Any],
    margin: int = CHECK_MARGIN,
) -> dict[str, Any]:
    """One clean case per segment (its largest connected component) on the CT's native grid."""
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    facts = []
    for entry in segments:
        value = int(entry["value"])
        if segment_names.get(value) != entry["name"]:
            raise FetchError(f"segment {value} is {segment_names.get(value)!r}, expected {entry['name']!r}")
        comp, n = ndi.label(seg == value, structure=np.ones((3, 3, 3)))
        if n == 0:
            raise FetchError(f"segment {entry['name']!r} is empty")
        sizes = np.bincount(comp.ravel())[1:]
        keep = comp == (int(np.argmax(sizes)) + 1)
        nz = np.argwhere(keep)
        lo = np.maximum(nz.min(axis=0) - margin, 0)
        hi = np.minimum(nz.max(axis=0) + margin + 1, np.array(seg.shape))
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        img = np.clip(ct[sl], *CT_RANGE).astype(np.int16)
        mask = keep[sl].astype(np.uint8)
        aff = affine.copy()
        aff[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
        write_nifti(out / "imagesTr" / f"{entry['id']}_0000.nii.gz", img, aff)
        write_nifti(out / "labelsTr" / f"{entry['id']}.nii.gz", mask, aff)
        centre = world_centroid(keep, affine)
        facts.append(
            {
                "id": entry["id"],
                "segment": entry["name"],
                "label_value": value,
                "shape": list(mask.shape),
                "components": int(n),
                "kept_fraction": round(float(sizes.max()) / float(sizes.sum()), 4),
                "margin_vox": margins(mask),
                "centre_ras_mm": [round(float(v), 1) for v in centre],
                "voxels": int(mask.sum()),
                "volume_ml": round(float(mask.sum()) * float(np.prod(spacing)) / 1000.0, 2),
            }
        )
    ds = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "structure": 1},
        "numTraining": len(facts),
        "file_ending": ".nii.gz",
        "name": dataset_name(out),
        "description": (
            "Clean crops of slicerio 1.4.0's chest CT (one subject, native grid "
            f"{' x '.join(f'{v:.2f}' for v in spacing)} mm) around each segment that is one connected organ "
            "(largest connected component), margin 8 voxels or to the volume's edge; HU clipped to "
            f"[{CT_RANGE[0]}, {CT_RANGE[1]}]. A check set for rules that correct masks, not for training."
        ),
        "spacing_mm": [round(float(v), 4) for v in spacing],
        "licence": "MIT (slicerio)",
        "source": provenance,
        "mean_volume_ml": round(float(np.mean([f["volume_ml"] for f in facts])), 2),
        "cases": facts,
        "made_by": f"svldrl scripts/fetch_real_anatomy.py v{SCRIPT_VERSION}",
    }
    write_json(out / "dataset.json", ds)
    write_readme(out, ds, None, None)
    return ds


def build_ct_from_files(data: Path, out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The chest CT check set from slicerio's extracted ``data`` folder."""
    ct = read_volume(data / "CTChest4.nrrd")
    seg = read_volume(data / "Segmentation.seg.nrrd")
    if ct.array.shape != seg.array.shape or not np.allclose(ct.affine, seg.affine, atol=1e-3):
        raise FetchError("slicerio's segmentation is not on the CT's grid")
    return build_ct_check_set(
        ct.array,
        seg.array,
        ct.affine,
        read_segment_names(data / "Segmentation.seg.nrrd"),
        manifest["ct_segments"],
        out,
        provenance_of(source(manifest, "slicerio"), ["CTChest4.nrrd", "Segmentation.seg.nrrd"]),
    )


def dataset_name(out: Path) -> str:
    """The dataset's folder name (``out`` may be the ``.partial`` folder it is built in)."""
    return out.name[: -len(".partial")] if out.name.endswith(".partial") else out.name


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_readme(out: Path, ds: dict[str, Any], dev: str | None, test: str | None) -> None:
    lines = [ds["name"], "", ds["description"], "", f"Licence: {ds['licence']}.", ""]
    if dev is not None:
        lines += [
            f"dev  = {dev}: {', '.join(ds['svldrl_split']['dev'])}",
            f"test = {test}: {', '.join(ds['svldrl_split']['test'])}",
            "",
        ]
    lines += ["Cases (volume in mL):"]
    lines += [f"  {c['id']}: {c['volume_ml']} mL, {c['shape']} voxels" for c in ds["cases"]]
    notes = {c["structure"]: c["aal_boundary"] for c in ds["cases"] if c.get("aal_boundary")}
    if notes:
        lines += ["", "How AAL's borders sit on this T1 (clean = un-augmented, not perfect):"]
        lines += [f"  {k}: {v}" for k, v in notes.items()]
    lines += ["", ds["made_by"]]
    (out / "README.txt").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------
# Dataset folders: stamps, reruns, partial builds


def check_existing(final: Path, stamp: dict[str, Any], force: bool) -> bool:
    """True when ``final`` is complete with this stamp (nothing to do); raises when made otherwise."""
    if not final.exists() or force:
        return False
    try:
        if json.loads((final / STAMP).read_text()) == stamp:
            return True
    except (OSError, ValueError):
        pass
    raise FetchError(f"{final} exists but was made with other settings (or is not ours); --force rebuilds it")


def ensure_dataset(final: Path, stamp: dict[str, Any], force: bool, build: Callable[[Path], Any]) -> Any:
    """Build ``final`` with ``build(partial_folder)`` unless it is up to date (then None); returns what
    ``build`` returns. The folder is built beside as ``<name>.partial`` and renamed when complete."""
    if check_existing(final, stamp, force):
        log(f"{final.name} is up to date (same settings); --force rebuilds it")
        return None
    part = final.with_name(final.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    result = build(part)
    write_json(part / STAMP, stamp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(part, final)
    return result


def plan(
    manifest: dict[str, Any], settings: Settings, structures: Sequence[str], with_ct: bool
) -> list[tuple[str, dict[str, Any]]]:
    """(dataset folder name, stamp) of every dataset this run makes."""
    sums = {s["id"]: s["files"] for s in manifest["sources"]}
    out = []
    for name in structures:
        spec = manifest["structures"][name]
        folder = f"Dataset{spec['dataset']:03d}_Colin{name.capitalize()}"
        out.append(
            (
                folder,
                {
                    "version": SCRIPT_VERSION,
                    "kind": "train",
                    "structure": name,
                    "settings": asdict(settings),
                    "files": sums["mricron-data"],
                },
            )
        )
    out.append(
        (
            manifest["check_dataset"],
            {
                "version": SCRIPT_VERSION,
                "kind": "check",
                "spacing": settings.spacing,
                "margin": CHECK_MARGIN,
                "structures": list(manifest["check_structures"]),
                "files": sums["mricron-data"],
            },
        )
    )
    if with_ct:
        out.append(
            (
                manifest["ct_dataset"],
                {
                    "version": SCRIPT_VERSION,
                    "kind": "ct_check",
                    "margin": CHECK_MARGIN,
                    "segments": manifest["ct_segments"],
                    "files": sums["slicerio"],
                },
            )
        )
    return out


def provenance_of(entry: dict[str, Any], used: Sequence[str]) -> dict[str, Any]:
    return {
        "package": entry["package"],
        "version": entry["version"],
        "kind": entry["kind"],
        "archive_sha256": entry["sha256"],
        "files": {k: entry["files"][k] for k in used},
    }


def fetch(
    cache: Path,
    settings: Settings,
    structures: Sequence[str],
    with_ct: bool = True,
    force: bool = False,
    manifest: dict[str, Any] | None = None,
) -> list[tuple[Path, dict | None]]:
    """Make every planned dataset under ``cache``; returns (folder, dataset.json or None when up to date)."""
    manifest = manifest or load_manifest()
    repo = git_work_tree(cache)
    if repo is not None:
        raise FetchError(
            f"the cache {cache} lies inside the git work tree {repo}; Colin27 / AAL are for research use and "
            "must never be committed: choose a --cache outside any repository"
        )
    unknown = [s for s in structures if s not in manifest["structures"]]
    if unknown:
        raise FetchError(
            f"unknown structure(s) {', '.join(unknown)} (known: {', '.join(manifest['structures'])})"
        )
    todo = plan(manifest, settings, structures, with_ct)
    pending = [(folder, stamp) for folder, stamp in todo if not check_existing(cache / folder, stamp, force)]
    results: list[tuple[Path, dict | None]] = [
        (cache / f, None) for f, _ in todo if f not in {p for p, _ in pending}
    ]
    for f, _ in todo:
        if f not in {p for p, _ in pending}:
            log(f"{f} is up to date (same settings); --force rebuilds it")
    if not pending:
        return results
    cache.mkdir(parents=True, exist_ok=True)
    deb = source(manifest, "mricron-data")
    need_atlas = any(stamp["kind"] in ("train", "check") for _, stamp in pending)
    atlas = read_atlas(obtain(deb, cache)) if need_atlas else None
    colin = provenance_of(deb, ["ch2.nii.gz", "aal.nii.gz", "aal.nii.txt"])
    for folder, stamp in pending:
        t0 = time.perf_counter()
        if stamp["kind"] == "train":
            spec = manifest["structures"][stamp["structure"]]
            build = partial(
                build_training_set, atlas, stamp["structure"], spec, settings=settings, provenance=colin
            )
        elif stamp["kind"] == "check":
            build = partial(
                build_check_set,
                atlas,
                manifest["structures"],
                manifest["check_structures"],
                spacing=settings.spacing,
                provenance=colin,
            )
        else:
            build = partial(
                build_ct_from_files, obtain(source(manifest, "slicerio"), cache), manifest=manifest
            )
        ds = ensure_dataset(cache / folder, stamp, True, lambda out, build=build: build(out=out))
        log(f"{folder}: written in {time.perf_counter() - t0:.1f} s")
        results.append((cache / folder, ds))
    return results


def summary_line(folder: Path, ds: dict[str, Any] | None) -> str:
    if ds is None:
        try:
            ds = json.loads((folder / "dataset.json").read_text())
        except (OSError, ValueError):
            return f"{folder}: (unreadable dataset.json)"
        state = "up to date"
    else:
        state = "written"
    vol = ds.get("mean_volume_ml")
    if isinstance(vol, dict):
        n_test = ds.get("numTest", 0)
        return (
            f"{folder} ({state}): {ds['numTraining']} training cases (mean structure {vol['train']} mL), "
            f"{n_test} test cases (mean {vol['test']} mL)"
        )
    return f"{folder} ({state}): {ds['numTraining']} cases, mean structure {vol} mL"


def parse_structures(text: str, manifest: dict[str, Any]) -> list[str]:
    if text.strip() == "all":
        return list(manifest["structures"])
    return [s.strip().lower() for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"output folder (default {DEFAULT_CACHE})"
    )
    p.add_argument(
        "--structures",
        default="putamen",
        help="comma-separated training structures, or 'all' (putamen, caudate, thalamus, hippocampus, "
        "pallidum, amygdala; default putamen)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentations (default 0)")
    p.add_argument("--spacing", type=float, default=1.5, help="isotropic voxel size in mm (default 1.5)")
    p.add_argument("--size", type=int, default=32, help="training crop size in voxels (default 32)")
    p.add_argument("--train-cases", type=int, default=48, help="training cases per structure (default 48)")
    p.add_argument("--test-cases", type=int, default=40, help="test cases per structure (default 40)")
    p.add_argument("--skip-ct", action="store_true", help="do not build the slicerio chest CT check set")
    p.add_argument("--force", action="store_true", help="rebuild datasets made with other settings")
    args = p.parse_args(argv)
    if not 0.5 <= args.spacing <= 5:
        log("error: --spacing must be between 0.5 and 5 mm")
        return 2
    if not 8 <= args.size <= 256 or args.train_cases < 1 or args.test_cases < 0:
        log("error: --size must be 8..256, --train-cases >= 1, --test-cases >= 0")
        return 2
    t0 = time.perf_counter()
    try:
        manifest = load_manifest()
        settings = Settings(args.seed, args.spacing, args.size, args.train_cases, args.test_cases)
        results = fetch(
            args.cache.expanduser().resolve(),
            settings,
            parse_structures(args.structures, manifest),
            not args.skip_ct,
            args.force,
            manifest,
        )
    except FetchError as exc:
        log(f"error: {exc}")
        return 2
    for folder, ds in results:
        print(summary_line(folder, ds))
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
