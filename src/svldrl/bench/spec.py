"""The benchmark file: its YAML format, types and structural checks (run configs are checked when planned).


A benchmark is a YAML file (examples in ``benchmarks/``)::

    name: phantom_cpu                  # optional; default the file's stem
    description: one paragraph         # optional, copied into results.md
    dataset:                           # exactly one of synth / path; cv optional
      synth: {cases: 16, size: 40, seed: 0, test_cases: 6}   # phantoms written to OUT/dataset
      # path: ${DATASET}               # a dataset with a clean test part imagesTs/labelsTs;
      #                                # ${VAR} is replaced by the environment variable VAR
      # cv: 5                          # K-fold cross-validation instead of a test part: each
      #                                # fold's held-out cases are the test cases (clean masks)
    noise_seed: 0                      # one noise seed: every method sees the same masks
    noise:                             # noisy-label settings (run_noise's protocols)
      - {name: mt0.5, protocol: mt, ratio: 0.5}
      - {name: mt_dilate1.0, protocol: mt, ratio: 1.0, params: {mode: dilate}}
      - {name: dilate_t8, protocol: mt, ratio: 1.0, params: {mode: dilate}, trusted: 8}
                                       # trusted: N cases left clean and recorded as trusted (svldrl noise
                                       # --trusted N); runs on this setting validate and select on them, MTCL
                                       # takes them as its clean subset, ratio applies to the other cases
    methods:                           # rows: a label, a registered method, config overrides
      - {name: supervised, method: supervised}
      - {name: svldrl_label, method: svldrl, set: [rl.action_space=label]}
      - {name: recommended, preset: recommended}   # a shipped preset (svldrl/presets/, --preset NAME)
      - {name: svldrl_mine, method: svldrl, config: mine.yaml}   # a --config file (its folder: the
                                       # benchmark file's, or the current one); set: lines come after both
      - {name: supervised_trusted_only, method: supervised, set: [data.train_on=trusted]}
                                       # plain training on the trusted cases alone (settings with trusted:)
    methods_on_clean: [supervised]     # also trained on the clean masks (default: supervised = the oracle)
    base: [train.patch=32, train.iterations=400]   # overrides shared by every run (list or mapping)
    seeds: [0, 1, 2]                   # training seeds

Runs live in ``OUT/runs/<noise>/<method>/seed<k>/`` (``.../seed<k>/fold<f>/`` with ``cv``); the clean
oracle under ``OUT/runs/clean/``. A run is a training run folder plus ``pred_final/`` and ``pred_val/``
(the clean test cases segmented with the final and with the best-on-noisy-validation checkpoint, each
with its ``summary.json``) and ``result.json``, written atomically last. Rerunning the benchmark skips
runs with a result, resumes trainings that have a ``checkpoint_latest.pt`` but no final checkpoint, and
rewrites ``results.csv``, ``results.md`` and ``plots/`` from every completed run.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from svldrl import config as C
from svldrl.errors import UserError

#: Name of the oracle setting (training on the clean masks).
CLEAN = "clean"
_TOP_KEYS = (
    "name",
    "description",
    "dataset",
    "noise",
    "noise_seed",
    "methods",
    "methods_on_clean",
    "base",
    "seeds",
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_ENV = re.compile(r"\$\{([^}]*)\}")
# The runner sets these per run; a config that sets them would silently be overridden.
_RUNNER_KEYS = ("method", "labels", "seed")


@dataclass
class NoiseSetting:
    """One noisy-label setting; ``protocol`` None is the clean oracle."""

    name: str
    protocol: str | None = None
    ratio: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    trusted: int = 0  # cases left clean and recorded as trusted (run_noise's trusted); 0: none


@dataclass
class MethodEntry:
    """One row of the results: a label, the registered method and its config overrides."""

    name: str
    method: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Benchmark:
    """A parsed and structurally checked benchmark file."""

    path: Path
    name: str
    description: str
    dataset: dict[str, Any]
    noise: list[NoiseSetting]
    noise_seed: int
    methods: list[MethodEntry]
    methods_on_clean: list[str]
    base: list[str]
    seeds: list[int]

    @property
    def cv(self) -> int:
        """Number of cross-validation folds (0: a fixed test part)."""
        return int(self.dataset.get("cv", 0))

    def method(self, name: str) -> MethodEntry:
        """The entry labelled ``name``; ``supervised`` exists implicitly (plain training)."""
        for m in self.methods:
            if m.name == name:
                return m
        if name == "supervised":
            return MethodEntry("supervised", "supervised")
        raise KeyError(name)


def load_benchmark(config_path: str | Path) -> Benchmark:
    """Read a benchmark YAML file and check its structure (run configs are checked by :func:`plan_runs`).

    Raises:
        UserError: a missing or malformed file, a missing or unknown key, a bad value, an unknown method.
    """
    from svldrl.methods import METHODS

    path = Path(config_path)
    if not path.is_file():
        raise UserError("benchmark config not found", path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"malformed YAML ({str(exc).splitlines()[0]})", path) from None
    if not isinstance(data, dict):
        raise UserError("a benchmark config must hold a mapping of keys", path)

    def fail(message: str) -> UserError:
        return UserError(message, path)

    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)} (accepted: {', '.join(_TOP_KEYS)})")
    for key in ("dataset", "noise", "methods", "seeds"):
        if key not in data:
            raise fail(f"missing key '{key}'")

    dataset = _check_dataset(data["dataset"], fail)
    noise_seed = data.get("noise_seed", 0)
    if isinstance(noise_seed, bool) or not isinstance(noise_seed, int) or noise_seed < 0:
        raise fail(f"noise_seed must be a non-negative integer, got {noise_seed!r}")

    if not isinstance(data["noise"], list):
        raise fail("noise must be a list of {name, protocol, ratio, params} (empty: the clean oracle only)")
    noise: list[NoiseSetting] = []
    for i, entry in enumerate(data["noise"]):
        setting = _check_noise(entry, i, fail)
        if setting.protocol is None:
            continue  # an explicit clean entry: the oracle is always there
        if setting.name in [n.name for n in noise]:
            raise fail(f"noise setting name '{setting.name}' appears twice")
        noise.append(setting)

    if not isinstance(data["methods"], list) or not data["methods"]:
        raise fail("methods must be a non-empty list of {name, method, set}")
    methods: list[MethodEntry] = []
    for i, entry in enumerate(data["methods"]):
        if not isinstance(entry, dict):
            raise fail(f"methods[{i}] must be a mapping with name, method and optionally set")
        extra = sorted(set(entry) - {"name", "method", "set", "config", "preset"})
        if extra:
            raise fail(
                f"methods[{i}]: unknown key(s) {', '.join(extra)} (accepted: name, method, preset, set, config)"
            )
        preset = entry.get("preset")
        preset_file = None
        if preset is not None:
            try:
                preset_file = C.preset_path(str(preset))
            except UserError as exc:
                raise fail(f"methods[{i}]: {exc}") from None
        name = entry.get("name", entry.get("method", preset))
        method = entry.get("method", name)
        if preset_file is not None and "method" not in entry:
            method = (yaml.safe_load(preset_file.read_text()) or {}).get("method", name)
        if name is None:
            raise fail(f"methods[{i}]: missing key 'method'")
        _check_name(name, f"methods[{i}].name", fail)
        if method not in METHODS:
            raise fail(
                f"methods[{i}] ({name}): unknown method '{method}' "
                f"(choose from: {', '.join(sorted(METHODS))})"
            )
        if name in [m.name for m in methods]:
            raise fail(f"method name '{name}' appears twice")
        from_file = [
            *_config_file(
                None if preset_file is None else str(preset_file),
                path,
                f"methods[{i}].preset ({name})",
                fail,
                method,
            ),
            *_config_file(entry.get("config"), path, f"methods[{i}].config ({name})", fail, method),
        ]
        overrides = from_file + _overrides(entry.get("set"), f"methods[{i}].set ({name})", fail)
        methods.append(MethodEntry(str(name), str(method), overrides))

    on_clean = data.get("methods_on_clean", ["supervised"])
    if on_clean is None:
        on_clean = []
    if not isinstance(on_clean, list) or not all(isinstance(n, str) for n in on_clean):
        raise fail("methods_on_clean must be a list of method names")
    known = [m.name for m in methods]
    for n in on_clean:
        if n not in known and n != "supervised":
            raise fail(f"methods_on_clean names '{n}', which is not in methods ({', '.join(known)})")

    seeds = data["seeds"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise fail(f"seeds must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise fail(f"seeds repeat a value: {seeds}")

    description = data.get("description", "")
    return Benchmark(
        path=path,
        name=str(data.get("name") or path.stem),
        description=str(description or "").strip(),
        dataset=dataset,
        noise=noise,
        noise_seed=noise_seed,
        methods=methods,
        methods_on_clean=list(dict.fromkeys(on_clean)),
        base=_overrides(data.get("base"), "base", fail),
        seeds=list(seeds),
    )


def _check_dataset(spec: Any, fail: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise fail("dataset must be a mapping with synth or path (and optionally cv)")
    extra = sorted(set(spec) - {"synth", "path", "cv"})
    if extra:
        raise fail(f"dataset: unknown key(s) {', '.join(extra)} (accepted: synth, path, cv)")
    if ("synth" in spec) == ("path" in spec):
        raise fail("dataset needs exactly one of 'synth' (phantoms) or 'path' (a dataset folder)")
    cv = spec.get("cv", 0)
    if isinstance(cv, bool) or not isinstance(cv, int) or cv == 1 or cv < 0:
        raise fail(f"dataset.cv must be an integer >= 2 (folds), got {cv!r}")
    if "synth" in spec:
        synth = spec["synth"]
        if not isinstance(synth, dict):
            raise fail("dataset.synth must be a mapping {cases, size, seed, test_cases}")
        from svldrl.data.synth import DIFFICULTIES

        accepted = ("cases", "size", "seed", "test_cases", "difficulty")
        extra = sorted(set(synth) - set(accepted))
        if extra:
            raise fail(f"dataset.synth: unknown key(s) {', '.join(extra)} (accepted: {', '.join(accepted)})")
        for key in ("cases", "size"):
            if key not in synth:
                raise fail(f"dataset.synth: missing key '{key}'")
        synth = {"seed": 0, "test_cases": 0, **synth}
        for key, value in synth.items():
            if key == "difficulty":
                if value not in DIFFICULTIES:
                    raise fail(
                        f"dataset.synth.difficulty must be one of {', '.join(DIFFICULTIES)}, got {value!r}"
                    )
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise fail(f"dataset.synth.{key} must be a non-negative integer, got {value!r}")
        if synth.get("difficulty") == "standard":
            del synth["difficulty"]  # the default: the spec (and --reuse matching) stays as before the option
        if not cv and synth["test_cases"] < 1:
            raise fail("dataset.synth.test_cases must be >= 1 (the clean test cases), or use cv: K")
        return {"synth": synth, **({"cv": cv} if cv else {})}
    if not isinstance(spec["path"], str) or not spec["path"].strip():
        raise fail(f"dataset.path must be a path, got {spec['path']!r}")
    return {"path": spec["path"], **({"cv": cv} if cv else {})}


def _check_noise(entry: Any, i: int, fail: Any) -> NoiseSetting:
    if not isinstance(entry, dict):
        raise fail(f"noise[{i}] must be a mapping {{name, protocol, ratio, params, trusted}}")
    extra = sorted(set(entry) - {"name", "protocol", "ratio", "params", "trusted"})
    if extra:
        raise fail(
            f"noise[{i}]: unknown key(s) {', '.join(extra)} (accepted: name, protocol, ratio, params, trusted)"
        )
    name = entry.get("name")
    if name is None:
        raise fail(f"noise[{i}]: missing key 'name'")
    _check_name(name, f"noise[{i}].name", fail)
    if name == CLEAN:
        if set(entry) - {"name"}:
            raise fail(f"noise[{i}]: the setting named '{CLEAN}' is the clean oracle and takes no protocol")
        return NoiseSetting(CLEAN)
    for key in ("protocol", "ratio"):
        if key not in entry:
            raise fail(f"noise[{i}] ({name}): missing key '{key}'")
    protocol, ratio, params = entry["protocol"], entry["ratio"], entry.get("params") or {}
    if not isinstance(protocol, str) or not protocol:
        raise fail(f"noise[{i}] ({name}): protocol must be a name, got {protocol!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise fail(f"noise[{i}] ({name}): ratio must be a number in [0, 1], got {ratio!r}")
    if not isinstance(params, dict):
        raise fail(f"noise[{i}] ({name}): params must be a mapping of protocol parameters")
    trusted = entry.get("trusted", 0)
    if "trusted" in entry and (isinstance(trusted, bool) or not isinstance(trusted, int) or trusted < 1):
        raise fail(
            f"noise[{i}] ({name}): trusted must be a number of training cases of at least 1 (leave it out for "
            f"none), got {trusted!r}"
        )
    return NoiseSetting(str(name), protocol, float(ratio), dict(params), int(trusted))


def _check_name(name: Any, where: str, fail: Any) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail(f"{where} must be a plain name (letters, digits, _ . + -), got {name!r}")


def _overrides(value: Any, where: str, fail: Any) -> list[str]:
    """A list of ``key=value`` strings or a (nested or dotted) mapping -> ``key=value`` strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        items = [f"{k}={json.dumps(v)}" for k, v in C.flatten(value).items()]  # JSON is YAML
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise fail(f"{where} must be a list of key=value strings or a mapping of config keys")
    for item in items:
        if "=" not in item:
            raise fail(f"{where}: expected key=value, got '{item}'")
        key = item.split("=", 1)[0].strip()
        if key in _RUNNER_KEYS:
            raise fail(f"{where} sets '{key}', which the benchmark sets per run")
    return items


def _config_file(value: Any, bench_path: Path, where: str, fail: Any, method: str) -> list[str]:
    """``key=value`` overrides from a config YAML file (the file a user passes to ``svldrl train --config``),
    relative to the benchmark file's folder or the current one. The file may name the row's ``method`` (so
    that ``svldrl train --config FILE`` picks it), no other."""
    if value is None:
        return []
    if not isinstance(value, str) or not value.strip():
        raise fail(f"{where} must be the path of a config YAML file")
    candidates = [Path(value), bench_path.parent / value]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise fail(f"{where}: config file {value} not found")
    try:
        data = yaml.safe_load(found.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"malformed YAML ({str(exc).splitlines()[0]})", found) from None
    if not isinstance(data, dict):
        raise UserError("config file must hold a mapping of keys", found)
    if "method" in data:
        if data["method"] != method:
            raise fail(f"{where} ({found}) is a config of method {data['method']}, this row's is {method}")
        data = {k: v for k, v in data.items() if k != "method"}
    return _overrides(data, f"{where} ({found})", fail)


def expand_env(text: str, where: str = "dataset.path") -> str:
    """Replace every ``${VAR}`` by the environment variable VAR and expand ``~``.

    Raises:
        UserError: a variable that is not set (or an empty ``${}``).
    """

    def sub(match: re.Match) -> str:
        var = match.group(1)
        if not var or var not in os.environ:
            raise UserError(f"{where}: environment variable {var or '(empty name)'} is not set ({text})")
        return os.environ[var]

    return os.path.expanduser(_ENV.sub(sub, text))
