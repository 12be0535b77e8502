"""Seeded 3D phantoms with organ-like objects and clean masks, written as an nnU-Net raw dataset.

Each case holds one foreground "organ" (a deformed ellipsoid with lobes and a tubular part, or a
thresholded smooth random field; 3-15 % of the volume) inside a torso-like body: air, a fat layer,
several textured soft-tissue classes, bright vessels, and a structure of nearly the organ's
intensity that touches it (so intensity alone does not segment the organ; shape and texture must).
Partial-volume blur, a smooth multiplicative bias field and Rician noise follow; intensities are
MR-like (roughly 0..1500, stored as int16), so the pipeline has to normalise.

Every case is a pure function of (seed, split, index, difficulty): the same call writes the same arrays,
and the same bytes (nibabel's gzip writer stores no time stamp or file name).

Difficulty (``difficulty=``, ``svldrl synth --difficulty``) sets how the organ looks, never its shape: every
preset draws the same random numbers, so a seed gives the same organs, distractors and vessels at every
difficulty, only their contrast, texture, noise and bias differ (:data:`DIFFICULTIES`):

- ``standard`` (default; the phantoms of every benchmark before phantom_converged, byte-identical to
  earlier versions): the touching distractor within 5-12 % of the organ's intensity, a fat plane along ~60 %
  of their interface, Rician noise 2-5 % of the organ's intensity, bias field 10-25 %.
- ``easy``: the distractor 35-50 % brighter or darker than the organ (a contrast real organs often have
  with their neighbours), a fat plane along their whole interface, Rician noise 0.5-1 %, almost no organ
  texture or bias field, half the partial-volume blur. Plain training on clean masks segments these to
  ~95 % Dice within 1000 iterations on a CPU and then stops improving (benchmarks/results/phantom_converged
  /learning_curve.md), so what remains is the cost of wrong masks: the regime in which noisy-label methods
  are compared (benchmarks/phantom_converged.yaml). A first, milder preset (distractor 20-35 %, half the
  noise) still gained 2.5 Dice points from 2000 to 4000 iterations, too slow to converge on a CPU.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from svldrl.data.io import read_json, write_nifti, write_text
from svldrl.data.outputs import check_writable_dir, refuse_dataset_folder
from svldrl.errors import UserError

GENERATOR = "svldrl.data.synth"
VERSION = 1


@dataclass(frozen=True)
class Difficulty:
    """How hard a phantom is to segment; every range is drawn per case (the same draws at every preset).

    Attributes:
        distractor_contrast: (low, high) of the touching distractor's mean intensity over the organ's,
            applied brighter or darker at random.
        fat_plane: share of the organ-distractor interface covered by a darker fat plane, as a threshold on
            a smooth unit-variance field (-0.3 covers ~60 %; -inf all of it).
        noise: (low, high) Rician noise sigma over the organ's mean intensity.
        organ_texture: (low, high) amplitude of the organ's fine texture.
        bias: (low, high) strength of the multiplicative bias field.
        blur: factor on the partial-volume blur's width.
    """

    distractor_contrast: tuple[float, float]
    fat_plane: float
    noise: tuple[float, float]
    organ_texture: tuple[float, float]
    bias: tuple[float, float]
    blur: float = 1.0


DIFFICULTIES: dict[str, Difficulty] = {
    "standard": Difficulty((1.05, 1.12), -0.3, (0.02, 0.05), (0.03, 0.08), (0.10, 0.25)),
    "easy": Difficulty((1.35, 1.5), -math.inf, (0.005, 0.01), (0.005, 0.01), (0.0, 0.02), blur=0.5),
}
SPACING = (1.0, 1.0, 1.5)
FG_FRACTION = (0.03, 0.15)
_SUBDIRS = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")
_OUR_FILE = re.compile(r"\.?phantom_\d{3,}(_0000)?(\.nii\.gz|\..*\.part\.nii\.gz)")


def synthesize(
    out: str | Path,
    cases: int,
    size: int,
    seed: int,
    test_cases: int = 0,
    reporter: Any = None,
    difficulty: str = "standard",
) -> Path:
    """Write ``cases`` training and ``test_cases`` test phantoms of ``size``^3 voxels to ``out``.

    Args:
        out: dataset folder to create (nnU-Net raw layout). An existing folder is reused only if it
            holds nothing but an earlier output of this generator.
        cases: number of training cases (>= 1).
        size: voxels per side (16..512; 32..128 typical).
        seed: non-negative integer; the same seed gives the same files.
        test_cases: number of held-out cases in imagesTs/labelsTs.
        reporter: a :class:`svldrl.reporter.Reporter` for progress lines, or None (quiet).
        difficulty: a preset of :data:`DIFFICULTIES` (``standard``, ``easy``); see the module docstring.

    Returns:
        ``out``.

    Raises:
        UserError: bad arguments, or ``out`` holds other data.
    """
    out = Path(out)
    for name, value, lo, hi in (("cases", cases, 1, 100000), ("test_cases", test_cases, 0, 100000)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise UserError(f"synth: {name} must be an integer in [{lo}, {hi}], got {value!r}")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 512:
        raise UserError(f"synth: size must be an integer in [16, 512], got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"synth: seed must be a non-negative integer, got {seed!r}")
    if difficulty not in DIFFICULTIES:
        raise UserError(f"synth: difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")

    settings = {
        "generator": GENERATOR,
        "version": VERSION,
        "seed": seed,
        "size": size,
        "cases": cases,
        "test_cases": test_cases,
    }
    if difficulty != "standard":  # standard datasets stay byte-identical to those made before the option
        settings["difficulty"] = difficulty
    _check_out(out, settings)
    names = {"Tr": [f"phantom_{i:03d}" for i in range(cases)]}
    names["Ts"] = [f"phantom_{cases + k:03d}" for k in range(test_cases)]
    dataset_json = {
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, "organ": 1},
        "numTraining": cases,
        "file_ending": ".nii.gz",
        "name": "svldrl_phantoms",
        "description": f"Synthetic MR-like phantoms by {GENERATOR} v{VERSION} (seed {seed}, size {size}"
        + ("" if difficulty == "standard" else f", difficulty {difficulty}")
        + ")",
        "synth": settings,
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        # dataset.json first: an interrupted run is then recognised as ours and can simply be rerun.
        write_text(out / "dataset.json", json.dumps(dataset_json, indent=2) + "\n")
        affine = phantom_affine(size)
        total, done, started = cases + test_cases, 0, time.monotonic()
        for split, split_id in (("Tr", 0), ("Ts", 1)):
            for index, case_id in enumerate(names[split]):
                image, label = make_phantom(size, seed, index, split=split_id, difficulty=difficulty)
                write_nifti(out / f"images{split}" / f"{case_id}_0000.nii.gz", image, affine)
                write_nifti(out / f"labels{split}" / f"{case_id}.nii.gz", label, affine)
                done += 1
                if reporter is not None:
                    reporter.progress("synth", done, total, started, extra=case_id)
    except OSError as exc:
        raise UserError(f"cannot write the dataset ({exc.strerror or exc})", out) from None
    _remove_stale(out, names)
    return out


def phantom_affine(size: int) -> np.ndarray:
    """RAS affine of a phantom: spacing (1, 1, 1.5) mm, the volume centred on the origin."""
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-(size - 1) / 2 * s for s in SPACING]
    return affine


def make_phantom(
    size: int, seed: int, index: int, split: int = 0, difficulty: str = "standard"
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: (image int16 in an MR-like range, mask uint8 {0, 1}), both ``size``^3.

    Deterministic in (seed, split, index, difficulty); ``split`` 0 for training cases, 1 for test cases, so
    the test phantoms do not change when the number of training cases does. The mask does not depend on
    ``difficulty``.
    """
    look = DIFFICULTIES[difficulty]
    rng = np.random.default_rng(np.random.SeedSequence([seed, split, index]))
    n = size
    ext = np.array([n * s for s in SPACING], dtype=np.float32)  # mm per axis
    x, y, z = (((np.arange(n, dtype=np.float32) - (n - 1) / 2) * s) for s in SPACING)
    grid = (x[:, None, None], y[None, :, None], z[None, None, :])
    field = _FieldMaker(n, rng)

    # Body: a torso-like cylinder along z with a wobbly outline, air outside, fat under the skin.
    semi = ext[:2] * rng.uniform(0.40, 0.52, 2)
    body_r = np.sqrt((grid[0] / semi[0]) ** 2 + (grid[1] / semi[1]) ** 2) + 0.04 * field(3)
    body = body_r < 1.0
    fat = body & (body_r > 1.0 - rng.uniform(0.08, 0.16))

    # Soft-tissue classes: argmax of smooth random fields gives blob-like regions with smooth borders.
    n_tissue = int(rng.integers(3, 5))
    tissue = np.argmax(np.stack([field(int(rng.integers(3, 6))) for _ in range(n_tissue)]), axis=0)

    interior = body & ~fat
    organ, radius = _organ(rng, grid, ext, field, semi, interior)
    distractor = _distractor(rng, grid, field, organ, radius) & body
    vessels = _vessels(rng, grid, ext, int(rng.integers(2, 5))) & body & ~organ & ~distractor

    # Intensities (MR T1-like): the organ sits in the middle of the soft-tissue range, the touching
    # distractor within a few percent of it.
    organ_mean = rng.uniform(550.0, 850.0)
    # Tissues differ from the organ by 30-70 % (darker or brighter): its border is visible where it meets
    # them, and only shape and texture tell it from the touching distractor.
    tissue_means = organ_mean * rng.uniform(1.3, 1.7, n_tissue) ** rng.choice([-1.0, 1.0], n_tissue)
    fine = _texture(rng, n, 0.8)
    coarse = _texture(rng, n, 2.0)
    img = np.empty((n, n, n), dtype=np.float32)
    img[...] = tissue_means[tissue]
    img *= 1.0 + rng.uniform(0.04, 0.10) * fine + 0.06 * coarse
    img[fat] = rng.uniform(1.35, 1.7) * organ_mean * (1.0 + 0.05 * fine[fat])
    img[vessels] = rng.uniform(1.3, 1.6) * organ_mean
    organ_tex = 1.0 + rng.uniform(*look.organ_texture) * fine + rng.uniform(0.02, 0.06) * coarse
    img[organ] = organ_mean * organ_tex[organ]
    d_mean = organ_mean * rng.uniform(*look.distractor_contrast) ** rng.choice([-1.0, 1.0])
    img[distractor] = d_mean * (1.0 + rng.uniform(0.05, 0.10) * fine[distractor])
    # A fat plane separates organ and distractor along part of their interface only, as in real anatomy.
    contact = distractor & ndimage.binary_dilation(organ, iterations=1) & (field(4) > look.fat_plane)
    img[contact] *= rng.uniform(0.75, 0.9)
    img[~body] = 0.02 * organ_mean

    # Partial-volume blur (a little more across the thicker slices), then bias field and noise.
    img = ndimage.gaussian_filter(img, sigma=np.array([0.7, 0.7, 0.9]) * rng.uniform(0.8, 1.3) * look.blur)
    img *= np.exp(rng.uniform(*look.bias) * field(3))  # coil bias field
    sigma = rng.uniform(*look.noise) * organ_mean
    real = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(img.shape, dtype=np.float32)
    img = np.sqrt(real * real + imag * imag)  # Rician magnitude noise
    return np.clip(np.rint(img), 0, 32767).astype(np.int16), organ.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Shapes


class _FieldMaker:
    """Smooth random fields (zero mean, unit std) from a few Gaussian bumps per axis.

    Separable: coefficients on a coarse lattice are spread by one small matrix per axis, so a
    128^3 field costs a few tensor contractions instead of a large Gaussian filter.
    """

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n, self.rng = n, rng
        self._cache: dict[int, np.ndarray] = {}

    def _matrix(self, cells: int) -> np.ndarray:
        if cells not in self._cache:
            t = (np.arange(self.n, dtype=np.float32) + 0.5) / self.n
            s = np.linspace(-0.15, 1.15, cells, dtype=np.float32)
            w = s[1] - s[0]
            self._cache[cells] = np.exp(-0.5 * ((t[:, None] - s[None, :]) / w) ** 2)
        return self._cache[cells]

    def __call__(self, cells: int) -> np.ndarray:
        # z is 1.5x longer in mm: more cells there keep features round in world space.
        cz = max(2, int(round(cells * SPACING[2] / SPACING[0])))
        coef = self.rng.standard_normal((cells, cells, cz)).astype(np.float32)
        mx, mz = self._matrix(cells), self._matrix(cz)
        f = np.einsum("ia,abc->ibc", mx, coef)
        f = np.einsum("jb,ibc->ijc", mx, f)
        f = np.einsum("kc,ijc->ijk", mz, f)
        f -= f.mean()
        return f / max(float(f.std()), 1e-6)


def _texture(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    t = ndimage.gaussian_filter(rng.standard_normal((n, n, n), dtype=np.float32), sigma)
    return t / max(float(t.std()), 1e-6)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.astype(np.float32)


def _ellipsoid_sdf(grid: tuple, centre: np.ndarray, axes: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm) to a rotated ellipsoid: negative inside."""
    d = [g - c for g, c in zip(grid, centre, strict=True)]
    acc = 0.0
    for k in range(3):
        p = rot[0, k] * d[0] + rot[1, k] * d[1] + rot[2, k] * d[2]  # coordinate along the k-th axis
        acc = acc + (p / axes[k]) ** 2
    return (np.sqrt(acc) - 1.0) * float(axes.mean())


def _tube_sdf(grid: tuple, points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Signed distance (mm) to a tube through ``points`` with per-point radii, within its bounding box."""
    n_shape = tuple(len(g.ravel()) for g in grid)
    # Far outside is a large finite distance, not inf: smooth unions multiply it by zero.
    out = np.full(n_shape, 1e4, dtype=np.float32)
    lo = points.min(axis=0) - radii.max() - 2.0
    hi = points.max(axis=0) + radii.max() + 2.0
    sl = []
    for g, a, b in zip(grid, lo, hi, strict=True):
        v = g.ravel()
        i0, i1 = int(np.searchsorted(v, a)), int(np.searchsorted(v, b))
        sl.append(slice(i0, max(i0, i1)))
    if any(s.stop <= s.start for s in sl):
        return out
    sub = tuple(g[tuple(s if g.shape[k] > 1 else slice(None) for k, s in enumerate(sl))] for g in grid)
    best = np.full([s.stop - s.start for s in sl], 1e4, dtype=np.float32)
    for q, r in zip(points, radii, strict=True):
        dist = np.sqrt((sub[0] - q[0]) ** 2 + (sub[1] - q[1]) ** 2 + (sub[2] - q[2]) ** 2) - r
        np.minimum(best, dist, out=best)
    out[tuple(sl)] = best
    return out


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Union of two distance fields with a fillet of about ``k`` mm (no crease where lobes meet)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, count: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, count, dtype=np.float32)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3).astype(np.float32)
    return v / np.linalg.norm(v)


def _organ(
    rng: np.random.Generator,
    grid: tuple,
    ext: np.ndarray,
    field: _FieldMaker,
    semi: np.ndarray,
    interior: np.ndarray,
) -> tuple[np.ndarray, float]:
    """The foreground object inside the body's ``interior``; returns (mask, main radius in mm)."""
    target = rng.uniform(0.045, 0.12)
    volume = target * float(np.prod(ext))
    elong = rng.uniform(0.55, 1.0, 2)
    radius = float((volume / (4.0 / 3.0 * np.pi * elong.prod() * 1.3)) ** (1.0 / 3.0))
    # Centre well inside the body (semi-axes ``semi`` in x, y); z is open, organs may leave the field of view.
    margin = np.array([*(semi * 0.85 - radius), 0.5 * ext[2] - radius], dtype=np.float32)
    centre = (rng.uniform(-1.0, 1.0, 3) * np.maximum(margin, 0.0) * 0.7).astype(np.float32)
    rot = _rotation(rng)
    axes = (radius * np.array([1.0, *elong])).astype(np.float32)
    if rng.random() < 0.6:
        # Deformed ellipsoid with lobes and a tubular extension (pancreas tail, atrial appendage ...).
        sdf = _ellipsoid_sdf(grid, centre, axes, rot)
        for _ in range(int(rng.integers(1, 4))):
            d = _unit(rng)
            c = centre + rot @ (axes * d * rng.uniform(0.55, 0.9))
            lobe_axes = (radius * rng.uniform(0.3, 0.55, 3)).astype(np.float32)
            sdf = _smooth_min(sdf, _ellipsoid_sdf(grid, c, lobe_axes, _rotation(rng)), 0.15 * radius)
        d = _unit(rng)
        p0 = centre + rot @ (axes * d * 0.5)
        length = radius * rng.uniform(1.0, 1.7)
        p2 = p0 + length * d
        p1 = 0.5 * (p0 + p2) + 0.4 * length * _unit(rng)
        points = _bezier(p0, p1, p2, max(12, int(length / 1.5)))
        radii = (radius * rng.uniform(0.18, 0.3) * np.linspace(1.0, 0.6, len(points))).astype(np.float32)
        sdf = _smooth_min(sdf, _tube_sdf(grid, points, radii), 0.1 * radius)
        sdf = sdf + 0.12 * radius * field(6)
    else:
        # Thresholded smooth noise inside a soft ellipsoidal envelope: irregular, blob-like.
        sdf = 0.6 * _ellipsoid_sdf(grid, centre, axes * 1.2, rot) + 0.45 * radius * field(5)
    # The threshold that gives the target volume, inside the body only; then one connected object.
    sdf = np.where(interior, sdf, np.float32(1e4))
    mask = sdf <= np.quantile(sdf, target)
    lab, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        mask = lab == int(sizes.argmax())
    return mask, radius


def _distractor(
    rng: np.random.Generator, grid: tuple, field: _FieldMaker, organ: np.ndarray, radius: float
) -> np.ndarray:
    """A structure touching the organ (bowel loop, neighbouring organ): its own mask, disjoint from it."""
    idx = np.argwhere(organ)
    spacing = np.asarray(SPACING, dtype=np.float32)
    origin = np.array([g.ravel()[0] for g in grid], dtype=np.float32)
    pts = idx * spacing + origin
    d = _unit(rng)
    # The organ voxel farthest along d is on its surface; the distractor starts just beyond it.
    surface = pts[int(np.argmax(pts @ d))]
    r = radius * rng.uniform(0.45, 0.75)
    if rng.random() < 0.5:
        c = surface + d * r * rng.uniform(0.5, 0.8)
        axes = (r * np.array([1.0, *rng.uniform(0.5, 0.9, 2)])).astype(np.float32)
        sdf = _ellipsoid_sdf(grid, c, axes, _rotation(rng))
    else:
        # A tube that runs along the organ's side, like bowel or a large vessel.
        side = np.cross(d, _unit(rng))
        side /= max(np.linalg.norm(side), 1e-6)
        length = radius * rng.uniform(1.5, 2.5)
        mid = surface + d * r * 0.5
        p0, p2 = mid - side * length / 2, mid + side * length / 2
        p1 = mid + d * r * rng.uniform(-0.5, 0.8)
        points = _bezier(p0, p1, p2, max(12, int(length / 1.5)))
        radii = np.full(len(points), r * 0.6, dtype=np.float32)
        sdf = _tube_sdf(grid, points, radii)
    sdf = sdf + 0.1 * r * field(6)
    return (sdf <= 0) & ~organ


def _vessels(rng: np.random.Generator, grid: tuple, ext: np.ndarray, count: int) -> np.ndarray:
    """Thin bright tubes crossing the body."""
    mask = np.zeros(tuple(len(g.ravel()) for g in grid), dtype=bool)
    for _ in range(count):
        p0 = (rng.uniform(-0.45, 0.45, 3) * ext).astype(np.float32)
        p2 = (rng.uniform(-0.45, 0.45, 3) * ext).astype(np.float32)
        p1 = 0.5 * (p0 + p2) + (rng.uniform(-0.2, 0.2, 3) * ext).astype(np.float32)
        length = float(np.linalg.norm(p2 - p0))
        points = _bezier(p0, p1, p2, max(8, int(length / 1.5)))
        radii = np.full(len(points), rng.uniform(1.0, 2.5), dtype=np.float32)
        mask |= _tube_sdf(grid, points, radii) <= 0
    return mask


# ----------------------------------------------------------------------------------------------------------
# Output folder safety


def _check_out(out: Path, settings: dict) -> None:
    """Refuse a non-empty ``out`` unless it holds only an earlier output of this generator, and any folder
    of another dataset's images or masks."""
    refuse_dataset_folder(out, "OUT", allow_root=True)  # a dataset folder itself: checked below
    check_writable_dir(out, "OUT")
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError("output exists and is not a folder", out)
    entries = [p for p in out.iterdir()]
    if not entries:
        return
    dataset_json = out / "dataset.json"
    previous = None
    if dataset_json.is_file():
        data = read_json(dataset_json, None)
        previous = data.get("synth") if isinstance(data, dict) else None
        if not isinstance(previous, dict) or previous.get("generator") != GENERATOR:
            raise UserError(
                "output folder holds a dataset.json not written by svldrl synth; refusing to overwrite", out
            )
    if previous == settings:
        return  # the same call again writes the same bytes, so anything derived from them stays valid
    for p in entries:
        if p.name == "dataset.json":
            continue
        if p.name not in _SUBDIRS or not p.is_dir():
            raise UserError(
                f"output folder is not empty and '{p.name}' was not written by svldrl synth "
                "(new phantoms would make it stale); choose another folder",
                out,
            )
        for f in p.iterdir():
            if not _OUR_FILE.fullmatch(f.name):
                raise UserError(
                    "output folder holds a file not written by svldrl synth; choose another folder", f
                )


def _remove_stale(out: Path, names: dict[str, list[str]]) -> None:
    """Delete phantom files of an earlier, larger run so the folder matches dataset.json."""
    keep = set()
    for split, ids in names.items():
        for cid in ids:
            keep.add(f"images{split}/{cid}_0000.nii.gz")
            keep.add(f"labels{split}/{cid}.nii.gz")
    for sub in _SUBDIRS:
        folder = out / sub
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if _OUR_FILE.fullmatch(f.name) and f"{sub}/{f.name}" not in keep:
                f.unlink()
