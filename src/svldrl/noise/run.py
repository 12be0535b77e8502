"""Write a seeded noisy copy of a dataset's training masks, with its noise report.

Layout: ``<dataset>/labelsTr_noisy/<NAME>/{case_id}.nii.gz`` plus ``noise_report.json``; the
clean ``labelsTr/`` is only read. With ``trusted`` N > 0, N cases drawn with the noise seed keep their clean
masks untouched and are recorded as trusted (``trusted.json`` in the set, ``trusted`` in the report), so a
benchmark simulates "a few expert masks beside many noisy ones" reproducibly. The set is built in
``<NAME>.partial/`` and renamed to ``<NAME>`` when complete, so a killed run never leaves a set that looks
finished, and the next run with the same settings resumes where it stopped.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svldrl.data.io import json_default, read_grid, read_json, read_volume, write_nifti, write_text
from svldrl.data.normalize import ForegroundCheck
from svldrl.errors import UserError
from svldrl.noise.markov import check_markov_params, markov_noise
from svldrl.noise.mt import check_mt_params, mt_noise
from svldrl.noise.report import build_report, mask_dice, voxel_error_rate
from svldrl.noise.sfda import SOURCE_SUFFIX, check_sfda_params, sfda_defaults
from svldrl.noise.spg import check_spg_params, spg_noise
from svldrl.reporter import report_warning

PROTOCOLS: dict[str, Callable[..., tuple[np.ndarray, dict[str, Any]]]] = {
    "mt": mt_noise,
    "markov": markov_noise,
    "spg": spg_noise,
}
# Protocols that need the images and a model, not just a mask: their parameters and defaults. The caller
# hands run_noise a ``prepare(ds, cases, params, seed, noisy_dir, foreground, info)`` for each (svldrl.runs
# does, for SFDA's source model, which trains); it is called once, lazily, before the first corrupted case
# still to do, and returns ``per_case(index, case, clean) -> (noisy, op)``.
IMAGE_PROTOCOLS: dict[str, Callable[[], dict[str, Any]]] = {"sfda": sfda_defaults}
ALL_PROTOCOLS = [*PROTOCOLS, *IMAGE_PROTOCOLS]
_CHECKS: dict[str, Callable[..., None]] = {
    "mt": check_mt_params,
    "markov": check_markov_params,
    "spg": check_spg_params,
    "sfda": check_sfda_params,
}

REPORT_NAME = "noise_report.json"
SETTINGS_NAME = ".settings.json"
CASES_DIR = ".cases"
PARTIAL_SUFFIX = ".partial"
FORMAT_VERSION = 1


def protocol_defaults(protocol: str) -> dict[str, Any]:
    """The parameters of a protocol and their defaults (a mask protocol's keyword arguments)."""
    if protocol in IMAGE_PROTOCOLS:
        return IMAGE_PROTOCOLS[protocol]()
    sig = inspect.signature(PROTOCOLS[protocol])
    return {k: p.default for k, p in list(sig.parameters.items())[2:]}


def resolve_params(protocol: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Protocol defaults overridden by ``params``, validated.

    Raises:
        UserError: unknown protocol, unknown parameter name or invalid value.
    """
    if protocol not in ALL_PROTOCOLS:
        raise UserError(f"unknown noise protocol {protocol!r} (choose one of {', '.join(ALL_PROTOCOLS)})")
    params = dict(params or {})
    defaults = protocol_defaults(protocol)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise UserError(
            f"unknown parameter(s) {', '.join(unknown)} for noise protocol {protocol!r} "
            f"(accepted: {', '.join(defaults)})"
        )
    resolved = {**defaults, **params}
    if isinstance(resolved.get("spacing"), (list, tuple)):
        resolved["spacing"] = [float(s) if _is_number(s) else s for s in resolved["spacing"]]
    check = {k: v for k, v in resolved.items() if not (k == "spacing" and v == "auto")}
    try:
        _CHECKS[protocol](**check)
    except ValueError as exc:
        raise UserError(f"noise protocol {protocol!r}: {exc}") from None
    return resolved


def _is_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float, np.number))


def _is_integral(x: Any) -> bool:
    return _is_number(x) and math.isfinite(x) and float(x) == int(x)


def format_ratio(ratio: float) -> str:
    """``0.5`` -> ``'0.5'``, ``1`` -> ``'1.0'``, ``1/3`` -> ``'0.333'``."""
    text = f"{float(ratio):.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def default_name(protocol: str, ratio: float, params: dict[str, Any] | None = None, trusted: int = 0) -> str:
    """``mt0.5``, ``markov0.5``, ``spg0.5``; one-sided MT-Noise adds its mode (``mt_dilate1.0``), trusted
    cases their number (``mt0.5_t8``)."""
    mode = (params or {}).get("mode", "both")
    prefix = f"{protocol}_{mode}" if protocol == "mt" and mode != "both" else protocol
    return f"{prefix}{format_ratio(ratio)}" + (f"_t{trusted}" if trusted else "")


def _check_name(name: str) -> None:
    if (
        not isinstance(name, str)
        or not name.strip()
        or name in (".", "..")
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or name.endswith(PARTIAL_SUFFIX)
        or name.endswith(SOURCE_SUFFIX)
    ):
        raise UserError(
            f"invalid noisy-set name {name!r}: use a plain folder name "
            f"(no '/', not starting with '.', not ending in '{PARTIAL_SUFFIX}' or '{SOURCE_SUFFIX}')"
        )


def case_seed(seed: int, index: int) -> np.random.SeedSequence:
    """Seed of case ``index`` (position in the sorted training case ids): independent of processing order."""
    return np.random.SeedSequence(seed, spawn_key=(1, index))


def select_cases(n: int, ratio: float, seed: int) -> list[int]:
    """Indices of the round(ratio * n) corrupted cases (half rounds up), from the seed alone."""
    k = int(math.floor(ratio * n + 0.5))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False)) if k else []


def select_trusted(n: int, k: int, seed: int) -> list[int]:
    """Indices of the ``k`` trusted cases (left untouched), from the seed alone (a stream of its own, so the
    corruption draws of a set without trusted cases stay what they were)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False)) if k else []


def select_corrupted(n: int, ratio: float, seed: int, trusted: list[int]) -> list[int]:
    """Indices of the corrupted cases: ``ratio`` of the cases that are not trusted (:func:`select_cases` over
    them; without trusted cases exactly :func:`select_cases`)."""
    others = [i for i in range(n) if i not in set(trusted)]
    return sorted(others[j] for j in select_cases(len(others), ratio, seed))


def check_cases(
    cases: list[Any],
    foreground: list[int] | None,
    info: Callable[[str], None],
    where: str | Path | None = None,
    reporter: Any = None,
) -> None:
    """What ``svldrl train`` checks, before any noisy mask is written: every clean mask exists, is readable,
    binary (or mapped by ``foreground``) and on its image's grid, and ``foreground`` is not a wrong label value
    (:class:`~svldrl.data.normalize.ForegroundCheck`; a few masks without its labels are warned about through
    ``reporter``: their noisy masks stay empty).

    Raises:
        UserError: the first case that fails, naming its file; most masks holding labels but none of
            ``foreground``'s (naming ``where``).
    """
    from svldrl.data.dataset import check_grid  # lazy: the pure noise functions need no dataset code

    labels = ForegroundCheck(foreground)
    for case in cases:
        if case.label is None:
            raise UserError(f"training case {case.case_id} has no clean label to corrupt", case.image)
        vol = read_volume(case.label, key=case.label_key)
        labels.add(case.case_id, vol.array, _binary(vol.array, Path(case.label), foreground))
        check_grid(read_grid(case.image, case.image_key), vol, case.image, case.label)
    lacking = labels.check("training masks", "their noisy masks would be empty", where)
    if lacking:
        report_warning(
            reporter,
            f"{len(lacking)} training mask(s) hold other labels ({labels.held()}) but none of --foreground "
            f"{','.join(map(str, foreground or []))}; their noisy masks stay empty (structure absent): "
            f"{', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}",
        )
    info(f"checked {len(cases)} training cases (masks binary and on their images' grids)")


def _binary(array: np.ndarray, path: Path, foreground: list[int] | None) -> np.ndarray:
    from svldrl.data.dataset import check_mask  # lazy: the pure noise functions need no dataset code

    # An empty clean mask is kept (its noisy copy is empty too and the report says so); whether a
    # training set may hold one is the trainer's call, not the noise generator's.
    return check_mask(array, path, foreground, allow_empty=True)


def _json(obj: Any) -> Any:
    """Round-trip through JSON so settings compare equal to what was stored (tuples -> lists)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=json_default))


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n"


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {b.get(k)!r} exists, {a.get(k)!r} asked" for k in keys if k != "cases") + (
        "; the training cases differ" if "cases" in keys else ""
    )


def _tidy(folder: Path) -> None:
    """Remove our bookkeeping and temporaries left by an atomic write that was killed."""
    shutil.rmtree(folder / CASES_DIR, ignore_errors=True)
    for p in folder.iterdir():
        if p.name.startswith(".") and p.is_file():
            p.unlink()


def run_noise(
    dataset_path: str | Path,
    protocol: str,
    ratio: float,
    seed: int,
    name: str | None = None,
    params: dict[str, Any] | None = None,
    foreground: Any = None,
    reporter: Any = None,
    prepare: dict[str, Callable[..., Any]] | None = None,
    trusted: int = 0,
) -> Path:
    """Corrupt a seeded fraction of a dataset's clean training masks and write them with a report.

    Args:
        dataset_path: dataset root (nnU-Net layout or any layout ``load_dataset`` reads).
        protocol: ``"mt"``, ``"markov"``, ``"spg"`` or ``"sfda"`` (see :data:`ALL_PROTOCOLS`; ``"sfda"``
            trains a source model on shifted images, cached in ``labelsTr_noisy/<name>.source/``).
        ratio: fraction of training cases to corrupt, in [0, 1] (SP-guided alpha), of those not trusted; the
            other cases get their clean mask, binarised, unchanged.
        seed: non-negative integer; the same seed gives byte-identical files.
        name: folder name under ``labelsTr_noisy/``; default from protocol and ratio
            (:func:`default_name`).
        params: protocol parameters overriding the defaults; a protocol's ``spacing`` left at None (or
            ``"auto"``) is each case's own voxel size, so MT-Noise sizes are in mm.
        foreground: label value(s) counted as foreground (default: the mask must be binary).
        reporter: object with ``.info(str)`` for progress and ``.warn(str)`` for warnings (a Python warning
            where it has none); progress is silent when None.
        prepare: protocol -> its preparer, for the image protocols (:data:`IMAGE_PROTOCOLS`);
            :func:`svldrl.runs.run_noise` passes SFDA's.
        trusted: number of training cases (drawn with ``seed``, :func:`select_trusted`) left untouched and
            recorded as trusted: ``trusted.json`` in the set (``{"cases": [...]}``, read by ``svldrl train
            --trusted auto``) and ``trusted`` / ``n_trusted`` in the report. 0: none, and the set is exactly the
            one made without this option.

    Returns:
        The folder of the complete noisy set.

    Raises:
        UserError: invalid settings (``trusted`` not below the number of training cases among them), or
            ``name`` already holds a set made with other settings.
    """
    info = reporter.info if reporter is not None else (lambda _msg: None)
    req = _request(protocol, ratio, seed, name, params, foreground, trusted)
    from svldrl.data.dataset import load_dataset  # lazy: the pure noise functions need none

    ds = load_dataset(dataset_path, labels="clean")
    cases = _training_cases(ds, req.trusted, dataset_path)
    check_cases(cases, req.foreground, info, ds.root, reporter)
    trusted_idx = set(select_trusted(len(cases), req.trusted, req.seed))
    chosen = set(select_corrupted(len(cases), req.ratio, req.seed, sorted(trusted_idx)))
    settings = _settings(req, cases)
    trusted_ids = [cases[i].case_id for i in sorted(trusted_idx)]

    final = Path(ds.noisy_dir(req.name))
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    if final.exists():
        return _existing_set(final, settings, req.name, info)
    _open_partial(partial, settings, trusted_ids, req, info)
    if protocol in IMAGE_PROTOCOLS and protocol not in (prepare or {}):
        raise UserError(
            f"noise protocol {protocol!r} trains a model: run it through svldrl.runs.run_noise (svldrl noise)"
        )
    per_case = _write_cases(
        req, ds, cases, chosen, trusted_idx, partial, final, prepare or {}, info, reporter
    )
    return _finish(req, settings, per_case, trusted_ids, partial, final, info)


@dataclass
class _Request:
    """A noisy set asked for, checked: the protocol and its resolved parameters, the ratio, the seed, the
    foreground labels, the number of trusted cases and the set's name."""

    protocol: str
    params: dict[str, Any]
    ratio: float
    seed: int
    foreground: list[int] | None
    trusted: int
    name: str


def _request(
    protocol: str,
    ratio: float,
    seed: int,
    name: str | None,
    params: dict[str, Any] | None,
    foreground: Any,
    trusted: int,
) -> _Request:
    """:func:`run_noise`'s arguments checked and resolved (the protocol's defaults, a default name).

    Raises:
        UserError: the first invalid argument.
    """
    resolved = resolve_params(protocol, params)
    if not _is_number(ratio) or not math.isfinite(ratio) or not 0.0 <= ratio <= 1.0:
        raise UserError(f"noise ratio must be a number in [0, 1], got {ratio!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    if foreground is not None:
        values = [foreground] if _is_number(foreground) else foreground
        if not isinstance(values, (list, tuple)) or not values or not all(_is_integral(v) for v in values):
            raise UserError(f"foreground must be a label value or a list of label values, got {foreground!r}")
        foreground = sorted({int(v) for v in values})
    if isinstance(trusted, bool) or not isinstance(trusted, (int, np.integer)) or trusted < 0:
        raise UserError(f"trusted must be a number of training cases (>= 1), got {trusted!r}")
    trusted = int(trusted)
    name = default_name(protocol, ratio, resolved, trusted) if name is None else name
    _check_name(name)
    return _Request(protocol, resolved, float(ratio), int(seed), foreground, trusted, name)


def _training_cases(ds: Any, trusted: int, dataset_path: str | Path) -> list[Any]:
    """The training cases sorted by id (the order of the seeds), at least one more than ``trusted``."""
    cases = sorted(ds.train, key=lambda c: c.case_id)
    if not cases:
        raise UserError("dataset has no training cases to corrupt", dataset_path)
    if trusted >= len(cases):
        raise UserError(
            f"--trusted {trusted}: the dataset has {len(cases)} training cases; at least one must stay noisy "
            f"(use at most {len(cases) - 1})",
            ds.root,
        )
    return cases


def _settings(req: _Request, cases: list[Any]) -> dict[str, Any]:
    """What makes a set what it is (stored in it; a set with other settings is never reused or resumed)."""
    return _json(
        {
            "version": FORMAT_VERSION,
            "protocol": req.protocol,
            "params": req.params,
            "ratio": req.ratio,
            "seed": req.seed,
            "foreground": req.foreground,
            "labels": "clean",
            # only when asked: a set made without trusted cases keeps the settings it always had
            **({"trusted": req.trusted} if req.trusted else {}),
            "cases": [c.case_id for c in cases],
        }
    )


def _existing_set(final: Path, settings: dict[str, Any], name: str, info: Callable[[str], None]) -> Path:
    """A complete set of this name: reused when made with the same settings, else refused."""
    report = read_json(final / REPORT_NAME, None)
    old = report.get("settings") if isinstance(report, dict) else None
    if old is None:
        raise UserError(
            f"exists but is not a complete noisy set (no readable {REPORT_NAME}); choose another --name",
            final,
        )
    if old != settings:
        raise UserError(
            f"noisy set {name!r} already exists with other settings ({_differences(settings, old)}); "
            "choose another --name",
            final,
        )
    _tidy(final)  # a run killed between the rename and the clean-up leaves bookkeeping files
    info(f"noisy set {name} already exists with the same settings: {final}")
    return final


def _open_partial(
    partial: Path,
    settings: dict[str, Any],
    trusted_ids: list[str],
    req: _Request,
    info: Callable[[str], None],
) -> None:
    """The unfinished set: resumed when made with the same settings, restarted when it holds no finished case,
    else refused; then its settings (and trusted cases) written."""
    from svldrl.data.dataset import TRUSTED_FILE  # lazy: the pure noise functions need none

    if partial.exists():
        old = read_json(partial / SETTINGS_NAME, None)
        # A leftover without any finished case (e.g. a run stopped by a bad first mask) holds
        # nothing to mix up and is simply restarted with the new settings.
        started = any(partial.glob("*.nii.gz"))
        if old is None and started:
            raise UserError(f"{partial} holds files of an unknown run; delete it or choose another --name")
        if old is not None and old != settings and started:
            raise UserError(
                f"an unfinished noisy set {req.name!r} was made with other settings "
                f"({_differences(settings, old)}); delete it or choose another --name",
                partial,
            )
        if old == settings and started:
            info(f"resuming unfinished noisy set {req.name} in {partial}")
        elif old != settings:
            shutil.rmtree(partial / CASES_DIR, ignore_errors=True)
    (partial / CASES_DIR).mkdir(parents=True, exist_ok=True)
    write_text(partial / SETTINGS_NAME, _dump(settings))
    if trusted_ids:
        write_text(partial / TRUSTED_FILE, _dump(trusted_record(trusted_ids, req.seed)))


def _write_cases(
    req: _Request,
    ds: Any,
    cases: list[Any],
    chosen: set[int],
    trusted_idx: set[int],
    partial: Path,
    final: Path,
    prepare: dict[str, Callable[..., Any]],
    info: Callable[[str], None],
    reporter: Any,
) -> dict[str, dict[str, Any]]:
    """Each case's noisy mask and its entry, written to ``partial`` (cases done earlier are read back);
    returns case id -> entry. An image protocol is prepared once, before the first corrupted case still to do."""
    prepared: Callable[..., tuple[np.ndarray, dict[str, Any]]] | None = None
    per_case: dict[str, dict[str, Any]] = {}
    n = len(cases)
    for index, case in enumerate(cases):
        out = partial / f"{case.case_id}.nii.gz"
        meta = partial / CASES_DIR / f"{case.case_id}.json"
        entry = read_json(meta, None) if meta.exists() and out.exists() else None
        if entry is not None:
            per_case[case.case_id] = entry
            info(f"noise {req.name}: {index + 1}/{n} {case.case_id} done earlier, skipped")
            continue
        vol = read_volume(case.label, key=case.label_key)
        clean = _binary(vol.array, Path(case.label), req.foreground)
        selected = index in chosen
        if selected:
            if req.protocol in IMAGE_PROTOCOLS and prepared is None:
                prepared = prepare[req.protocol](ds, cases, req.params, req.seed, final, req.foreground, info)
            noisy, op = _corrupt(req, index, case, clean, vol.spacing, prepared)
        else:
            noisy, op = clean, {"operation": "none"}
        noisy = np.asarray(noisy, dtype=np.uint8)
        is_trusted = index in trusted_idx
        entry, removed = _entry(clean, noisy, op, selected, is_trusted)
        if removed > 0.9:
            report_warning(
                reporter,
                f"noise {req.name}: {case.case_id} lost {100 * removed:.0f}% of its foreground "
                f"({op.get('operation')}); such a mask is barely an annotation of the same structure",
            )
        write_nifti(out, noisy, vol.affine, vol.header)
        # The entry is written after the mask: a case counts as done only when both exist.
        write_text(meta, _dump(entry))
        per_case[case.case_id] = entry
        done = "trusted (untouched)" if is_trusted else op["operation"]
        info(
            f"noise {req.name}: {index + 1}/{n} {case.case_id} {done} "
            f"dice={entry['dice']:.3f} error={entry['voxel_error_rate']:.4f}"
        )
    return per_case


def _corrupt(
    req: _Request, index: int, case: Any, clean: np.ndarray, spacing: Any, prepared: Callable[..., Any] | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The noisy mask of case ``index`` drawn for corruption (its own seed), and the operation done."""
    if req.protocol in IMAGE_PROTOCOLS:
        noisy, op = prepared(index, case, clean)
    else:
        kwargs = dict(req.params)
        if "spacing" in kwargs and kwargs["spacing"] in (None, "auto"):
            kwargs["spacing"] = list(spacing)  # sizes in mm: each case's own voxel size
        noisy, op = PROTOCOLS[req.protocol](
            clean, np.random.default_rng(case_seed(req.seed, index)), **kwargs
        )
    return noisy, {k: v for k, v in op.items() if k not in ("dice", "protocol")}


def _entry(
    clean: np.ndarray, noisy: np.ndarray, op: dict[str, Any], selected: bool, is_trusted: bool
) -> tuple[dict[str, Any], float]:
    """A case's entry in the report, and the fraction of its foreground the noise removed."""
    n_clean, kept = int(clean.sum()), int(np.count_nonzero(clean & noisy))
    removed = (n_clean - kept) / n_clean if n_clean else 0.0
    entry = _json(
        {
            # selected: drawn for corruption; corrupted: its mask actually changed (a drawn operation
            # that changes nothing is reported, not counted)
            "selected": selected,
            "corrupted": selected and not np.array_equal(clean, noisy),
            "dice": mask_dice(clean, noisy),
            "voxel_error_rate": voxel_error_rate(clean, noisy),
            "foreground_clean": n_clean,
            "foreground_noisy": int(noisy.sum()),
            "removed_fraction": round(removed, 6),
            "added_fraction": round((int(noisy.sum()) - kept) / n_clean, 6) if n_clean else 0.0,
            "noise": op,
            **({"trusted": True} if is_trusted else {}),
        }
    )
    return entry, removed


def _finish(
    req: _Request,
    settings: dict[str, Any],
    per_case: dict[str, dict[str, Any]],
    trusted_ids: list[str],
    partial: Path,
    final: Path,
    info: Callable[[str], None],
) -> Path:
    """The report written last, then the set renamed to its final name (complete only now) and tidied."""
    from svldrl.data.dataset import TRUSTED_FILE  # lazy: the pure noise functions need none

    report = build_report(req.protocol, {k: v for k, v in settings.items() if k != "cases"}, per_case)
    if trusted_ids:
        report["n_trusted"] = len(trusted_ids)
        report["trusted"] = trusted_ids
    report["settings"] = settings
    write_text(partial / REPORT_NAME, _dump(report))
    os.replace(partial, final)
    _tidy(final)
    corrupted_dice = report["mean_dice_corrupted"]
    info(
        f"noisy set {req.name}: {report['n_corrupted']}/{report['n_cases']} cases corrupted, "
        f"mean label Dice {report['mean_dice']:.3f}"
        + (f" (corrupted only {corrupted_dice:.3f})" if corrupted_dice is not None else "")
        + (f"; {len(trusted_ids)} trusted cases left untouched ({TRUSTED_FILE})" if trusted_ids else "")
        + f" -> {final}"
    )
    return final


def trusted_record(case_ids: list[str], seed: int) -> dict[str, Any]:
    """The content of a noisy set's ``trusted.json``: the trusted cases and how they were drawn."""
    return {
        "cases": sorted(case_ids),
        "written_by": "svldrl noise --trusted",
        "note": f"{len(case_ids)} training cases drawn with noise seed {seed} and left untouched: their masks "
        "here are the clean ones, trusted by svldrl train (--trusted auto)",
    }
