"""The matrix of runs (settings x methods x seeds x folds) with validated configs, and the check that a run
folder found on disk was made with the same settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from svldrl import config as C
from svldrl.bench.spec import CLEAN, Benchmark, MethodEntry
from svldrl.data.io import read_json
from svldrl.errors import UserError
from svldrl.methods import section_owners
from svldrl.settings import Config

RESULT_NAME = "result.json"


@dataclass
class Run:
    """One training run of the matrix."""

    noise: str
    method: MethodEntry
    seed: int
    fold: int | None
    dir: Path
    cfg: Config
    #: Whether the run may have trusted cases: its noise setting records some, or the dataset is a folder (which
    #: may hold labelsTr_trusted/); keys that act only with them (``config.TRUSTED_ONLY_KEYS``) matter only here.
    trusted: bool = True

    @property
    def labels(self) -> str:
        """The training masks: ``clean`` or ``noisy/<setting>``."""
        return "clean" if self.noise == CLEAN else f"noisy/{self.noise}"

    @property
    def label(self) -> str:
        """``<setting>/<method>/seed<k>[/fold<f>]``, as in the run folder's path."""
        fold = "" if self.fold is None else f"/fold{self.fold}"
        return f"{self.noise}/{self.method.name}/seed{self.seed}{fold}"


def plan_runs(bench: Benchmark, out_dir: Path) -> list[Run]:
    """Every run of the matrix with its validated config, seed-major (a full table exists after one seed).

    Raises:
        UserError: an override with an unknown config key, a bad value or a key of a section the method does not
            read (from ``load_config``).
    """
    owners = section_owners()
    folds: list[int | None] = list(range(bench.cv)) if bench.cv else [None]
    settings = [CLEAN, *(n.name for n in bench.noise)]
    trusted = {n.name: n.trusted > 0 for n in bench.noise}
    folder = "path" in bench.dataset  # its labelsTr_trusted/, if any, gives every setting trusted cases
    runs: list[Run] = []
    for seed in bench.seeds:
        for noise in settings:
            names = bench.methods_on_clean if noise == CLEAN else [m.name for m in bench.methods]
            for name in names:
                entry = bench.method(name)
                labels = "clean" if noise == CLEAN else f"noisy/{noise}"
                overrides = [
                    *bench.base,
                    f"method={entry.method}",
                    f"labels={labels}",
                    f"seed={seed}",
                    *entry.overrides,
                ]
                try:
                    cfg = C.load_config(overrides=overrides, owners=owners)
                except UserError as exc:
                    raise UserError(f"method '{name}' on '{noise}': {exc}", bench.path) from None
                # data.trusted=none: the run is told no case is trusted, whatever its noise setting recorded
                has_trusted = (folder or trusted.get(noise, False)) and cfg.data.trusted != "none"
                for fold in folds:
                    d = out_dir / "runs" / noise / name / f"seed{seed}"
                    where = d if fold is None else d / f"fold{fold}"
                    runs.append(Run(noise, entry, seed, fold, where, cfg, has_trusted))
    return runs


def non_default_settings(cfg: Config | dict) -> dict[str, object]:
    """A run's settings that are not at their default, flattened (``train.iterations``: 2000, ...), without
    :data:`svldrl.config.NEUTRAL_KEYS`: what a benchmark keeps of each row's run beside ``results.csv``, so that
    a row whose run folder is gone still tells which settings made it (:func:`config_differences` reads it)."""
    flat, defaults = C.flatten(cfg), C.flatten(C.DEFAULTS)
    # a key that older runs did without is kept whatever its value: its absence means "made before it existed"
    introduced = {k for k, (_, matters) in C.INTRODUCED.items() if matters(flat)}
    return {
        k: v
        for k, v in sorted(flat.items())
        if k not in C.NEUTRAL_KEYS and (v != defaults.get(k) or k in introduced)
    }


def config_differences(asked: Config | dict, saved: Config | dict, trusted: bool = True) -> list[str]:
    """``key: saved there, asked here`` for every setting that changes what a run computes
    (:func:`svldrl.config.differences`); without ``trusted`` cases, keys that act only with them do not."""
    allowed = () if trusted else C.TRUSTED_ONLY_KEYS
    return [
        f"{key}: {there!r} there, {here!r} asked"
        for key, there, here in C.differences(asked, saved, allowed=allowed, owners=section_owners())
    ]


def check_existing(run: Run) -> None:
    """Refuse to skip or resume a run folder made with other settings (its results would be stale)."""
    result = read_json(run.dir / RESULT_NAME, None)
    saved = result.get("config") if isinstance(result, dict) else None
    if saved is None and (run.dir / "config.yaml").is_file():
        try:
            saved = C.load_config([run.dir / "config.yaml"], owners=section_owners(), saved=True)
        except UserError:
            saved = None
    if saved is None:
        return
    diffs = config_differences(run.cfg, saved, run.trusted)
    if diffs:
        raise UserError(
            f"run {run.label} was made with other settings ({'; '.join(diffs[:4])}"
            f"{' ...' if len(diffs) > 4 else ''}); delete that run folder or choose another --out",
            run.dir,
        )
