"""Run configuration: typed sections with their defaults, choices and ranges; YAML files and ``--set key=value``
overrides, validated.

Every decision of docs/method.md is a key with the stated default, named as in the doc (``rl.t_max``,
``rl.action_scale``, ``rl.target_update``, ``infer.refine_steps`` ...). Each section is a dataclass of
:mod:`svldrl.settings` whose fields carry their default, the allowed choices or range, a one-line meaning and
their origin; :data:`DEFAULTS`, the validation and ``svldrl train --help`` are derived from them. A method's own
settings form the section of its name (``coteaching.*``, ``adele.*``, ``mtcl.*``, ``tloss.*``; SVL-DRL's are
``rl.*``); each trainer names the sections it reads (``sections``), and a run of another method may not set them.

:func:`load_config` returns a :class:`~svldrl.settings.Config` (``cfg.train.patch``); plain nested dicts are
the edges' form: YAML files and ``config.yaml`` (:func:`dump_config`), :func:`flatten`, :func:`differences` and
``--set`` overrides, and :func:`validate` checks one before it becomes a Config. An unknown key or a value of
the wrong type, outside its range or not among its choices is a :class:`~svldrl.errors.UserError`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from svldrl.errors import UserError
from svldrl.settings import (  # noqa: F401 - the schema, re-exported: config.SCHEMA, config.DEFAULTS ...
    CHOICES,
    DEFAULTS,
    ORIGINS,
    RANGES,
    SCHEMA,
    Config,
    setting,
)

#: Keys that do not change what a run computes (a rerun on another machine may differ in them).
NEUTRAL_KEYS = frozenset(
    {
        "train.threads",
        "train.memory_format",  # as threads: the kernels' summation order, not the computation
        "train.keep_freed_memory",
        "train.device",
        "data.workers",
        "data.cache",
        "infer.sw_batch",
    }
)
#: Keys that act only where a run has trusted cases (the trusted finish): on data without any they change nothing,
#: so a run made before them, on such data, stands (the benchmark runner knows which settings have trusted cases).
TRUSTED_ONLY_KEYS = (
    "data.trusted_finish",
    "data.trusted_join",
    "data.trusted_bound",
    "data.trusted_bound_band",
    "data.trusted_measure",
    "data.trusted_average",
    "data.trusted_finish_lr",
    "data.trusted_threshold",
)
#: Method section -> the methods that read it (:func:`svldrl.methods.section_owners`, injected by the caller: this
#: layer knows no method): a run of another method may not set its keys (they would do nothing).
Owners = Mapping[str, Sequence[str]]
#: Keys renamed since runs were first saved: old config.yaml files still load.
RENAMED = {
    "method_args.forget_rate": "coteaching.forget_rate",
    "method_args.forget_ramp": "coteaching.forget_ramp",
    "method_args.adele_threshold": "adele.threshold",
    "method_args.adele_consistency": "adele.consistency",
    "method_args.clean_cases": "mtcl.clean_cases",
    "method_args.mtcl_soft": "mtcl.soft",
    "method_args.tloss_init": "tloss.init",
}


def _uses_band(flat: dict[str, Any]) -> bool:
    return flat.get("rl.target_update") == "band" or flat.get("method") in ("supervised_band", "tloss_band")


#: Keys added with a default that differs from what runs saved before them did: the value those runs were made
#: with, and which runs the key matters to (to the others its value changes nothing).
INTRODUCED: dict[str, tuple[Any, Any]] = {
    "rl.band_guard": (False, _uses_band),  # the band update ran unguarded before rl.band_guard (2026-12-06)
}


def differences(
    asked: Config | dict, saved: Config | dict, allowed: tuple[str, ...] = (), owners: Owners | None = None
) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, asked value)`` for every setting in which ``asked`` would compute something else than
    the run ``saved`` describes: neither a :data:`NEUTRAL_KEYS` key (device, threads, layout ...) nor one of
    ``allowed``, nor a key newer than the saved run asked at the value that run was made with
    (:data:`INTRODUCED`, else its default), nor a value the trainer resolves from the data, nor (with ``owners``)
    a key of a section the asked method does not read. The one comparison behind ``svldrl train --resume`` and
    the benchmark's reuse of finished runs."""
    a, s, defaults = flatten(asked), migrate(flatten(saved)), flatten(DEFAULTS)
    unread = _unread_sections(a.get("method"), owners)
    out = []
    for key in sorted(set(a) | set(s)):
        if key in NEUTRAL_KEYS or key in allowed or a.get(key) == s.get(key) or key.split(".")[0] in unread:
            continue
        if key not in s and key in INTRODUCED:
            legacy, matters = INTRODUCED[key]
            if not matters(a) or a.get(key) == legacy:
                continue  # the run predates this key and was made as asked, or the key changes nothing here
        elif key not in s and key in defaults and a.get(key) == defaults[key]:
            continue  # the run predates this key and was made with what is now its default
        if key in ("data.modality", "data.intensity_range") and a.get(key) in ("auto", None):
            continue  # the trainer writes what it resolved from the dataset (modality, CT fingerprint range)
        out.append((key, s.get(key), a.get(key)))
    return out


#: The presets shipped with svldrl (``svldrl/presets/NAME.yaml``; ``--preset NAME``).
PRESET_DIR = Path(__file__).parent / "presets"


def presets() -> list[str]:
    """The names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """The config file of the preset ``name``.

    Raises:
        UserError: no such preset.
    """
    path = PRESET_DIR / f"{name}.yaml"
    if not name or "/" in name or not path.is_file():
        raise UserError(f"unknown preset '{name}' (choose from: {', '.join(presets())})")
    return path


def preset_overrides(name: str) -> list[str]:
    """The preset's settings as ``key=value`` overrides, its ``method`` first."""
    data = yaml.safe_load(preset_path(name).read_text()) or {}
    return [f"{k}={v if not isinstance(v, bool) else str(v).lower()}" for k, v in flatten(data).items()]


def get(cfg: dict, key: str) -> Any:
    """``get(cfg, "rl.t_max")``: read a dotted key of a nested dict."""
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg: dict, key: str, value: Any, source: str) -> None:
    key = RENAMED.get(key, key)
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"unknown config key '{key}' (from {source})")
        if i < len(parts) - 1:
            node = node[part]
    node[parts[-1]] = value


def flatten(d: Config | dict, prefix: str = "") -> dict[str, Any]:
    """A config (or its nested dict) as ``{"train.patch": 64, ...}``."""
    if isinstance(d, Config):
        d = d.as_dict()
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def migrate(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config with renamed keys (:data:`RENAMED`) under their current names."""
    return {RENAMED.get(k, k): v for k, v in flat.items()}


def parse_override(text: str) -> tuple[str, Any]:
    """``"rl.t_max=5"`` -> ``("rl.t_max", 5)``; the value is parsed as YAML.

    A value that YAML cannot read is kept as a plain string (``train.device=cuda:0``), except one that
    opens a list or a mapping, which is a mistake (``nets.features=[4,8``).
    """
    if "=" not in text:
        raise UserError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if raw.strip()[:1] in ("[", "{"):
            reason = str(exc).splitlines()[0]
            raise UserError(f"--set {key.strip()}: malformed value '{raw}' ({reason})") from None
        value = raw
    return key.strip(), value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_value(key: str, value: Any, spec: dict[str, Any]) -> Any:
    """``value`` checked against the key's kind, choices and range (an integral float becomes an int)."""
    kind = spec["kind"]

    def fail(expected: str) -> UserError:
        return UserError(f"config key '{key}' expects {expected}, got {value!r}")

    if kind == "bool" and not isinstance(value, bool):
        raise fail("true/false")
    if kind in ("int", "float"):
        if not _is_number(value):
            raise fail("a number")
        if kind == "int" and isinstance(value, float):
            if not value.is_integer():
                raise fail("an integer")
            value = int(value)
    if kind in ("ints", "floats"):
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            raise fail(f"a list of numbers like {spec['default']!r}")
        if kind == "ints" and not all(float(v).is_integer() for v in value):
            raise fail(f"a list of integers like {spec['default']!r}")
        value = [int(v) for v in value] if kind == "ints" else value
    if kind == "window" and value is not None:
        if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
            raise fail("[low, high] or null")
        if not value[0] < value[1]:
            raise fail("[low, high] with low < high")
    if kind == "labels" and value is not None:
        if not (
            isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise fail("a list of label values or null")
    if kind == "trusted" and not (isinstance(value, str) and value.strip()):
        raise fail("auto, none or the path of a list of case ids")
    if (
        kind == "fold"
        and value != "all"
        and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
    ):
        raise fail("a fold number or all")
    if spec["choices"] and value not in spec["choices"]:
        raise UserError(
            f"config key '{key}' must be one of {', '.join(map(str, spec['choices']))}, got {value!r}"
        )
    if spec["range"] and kind in ("int", "float"):
        lo, hi = spec["range"]
        if not lo <= value <= hi:
            raise UserError(f"config key '{key}' = {value!r} is out of range [{lo:g}, {hi:g}]")
    return value


def validate(cfg: dict, owners: Owners | None = None) -> dict:
    """Check every key of the nested dict ``cfg`` (type, choices and range; with ``owners``, that the run's method
    reads its section) and the rules between keys; return ``cfg``."""
    for name, value in flatten(cfg).items():
        if name not in SCHEMA:
            raise UserError(f"unknown config key '{name}'")
        checked = _check_value(name, value, SCHEMA[name])
        if checked is not value:
            _set(cfg, name, checked, "validation")
        section = name.split(".")[0]
        readers = (owners or {}).get(section)
        if readers and cfg.get("method") not in readers and checked != SCHEMA[name]["default"]:
            raise UserError(
                f"config key '{name}' is a setting of {' / '.join(readers)}; this run's method is "
                f"{cfg.get('method')}, which would ignore it"
            )
    if get(cfg, "rl.warmup") + get(cfg, "rl.transition") > 1.0:
        raise UserError("config keys rl.warmup + rl.transition must not exceed 1")
    if get(cfg, "rl.alpha") + get(cfg, "rl.beta") > 1.0:
        raise UserError("config keys rl.alpha + rl.beta must not exceed 1")
    if 0 < get(cfg, "rl.band_width_max") <= get(cfg, "rl.band_width"):
        raise UserError(
            f"config key 'rl.band_width_max' = {get(cfg, 'rl.band_width_max')} must be 0 (one width for every "
            f"case) or larger than rl.band_width = {get(cfg, 'rl.band_width')}"
        )
    if get(cfg, "nets.backbone") == "swinunetr" and get(cfg, "nets.feature_size") % 12:
        raise UserError("config key 'nets.feature_size' must be a multiple of 12 for swinunetr")
    if get(cfg, "nets.backbone") == "swinunetr" and (
        get(cfg, "train.patch") % 32 or get(cfg, "train.patch") < 64
    ):
        # Swin UNETR's 1/32 bottleneck must hold more than one voxel for instance norm
        raise UserError("config key 'train.patch' must be a multiple of 32 and at least 64 for swinunetr")
    features = get(cfg, "nets.features")
    if len(features) < 2 or any(f < 1 for f in features):
        raise UserError(
            f"config key 'nets.features' expects at least two positive channel counts, got {features!r}"
        )
    if get(cfg, "nets.backbone") == "unet" and get(cfg, "train.patch") % 2 ** (len(features) - 1):
        raise UserError(
            f"config key 'train.patch' = {get(cfg, 'train.patch')} must be a multiple of {2 ** (len(features) - 1)} "
            f"for a unet with {len(features)} levels"
        )
    return cfg


def _unread_sections(method: Any, owners: Owners | None) -> set[str]:
    """The method sections ``method`` does not read (none without ``owners``)."""
    return {section for section, readers in (owners or {}).items() if method not in readers}


def load_config(
    files: list[str | Path] | None = None,
    overrides: list[str] | None = None,
    base: Config | dict | None = None,
    owners: Owners | None = None,
    saved: bool = False,
) -> Config:
    """Defaults (or ``base``), then each YAML file, then each ``key=value`` override; validated (with ``owners``,
    :func:`svldrl.methods.section_owners`, also that the method reads each section set).

    ``saved``: the files are a run's own config.yaml. A run writes every key, the sections its method does not read
    at the defaults of its day; those sections are read at today's defaults (with ``owners``), so that a run made
    before a default changed still loads, resumes and is reused.

    Raises:
        UserError: a missing or malformed file, an unknown key, a bad value, or a key of another method's section.
    """
    if isinstance(base, Config):
        base = base.as_dict()
    cfg = copy.deepcopy(base if base is not None else DEFAULTS)
    for f in files or []:
        path = Path(f)
        if not path.is_file():
            raise UserError("config file not found", path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"malformed YAML ({str(exc).splitlines()[0]})", path) from None
        if not isinstance(data, dict):
            raise UserError("config file must hold a mapping of keys", path)
        for name, value in flatten(data).items():
            _set(cfg, name, value, str(path))
    if saved:
        for section in _unread_sections(cfg.get("method"), owners):
            cfg[section] = copy.deepcopy(DEFAULTS[section])
    for text in overrides or []:
        key, value = parse_override(text)
        _set(cfg, key, value, "--set")
    return Config.from_dict(validate(cfg, owners))


def dump_config(cfg: Config) -> str:
    """YAML text of a resolved config (``config.yaml``), its keys in the schema's order."""
    return yaml.safe_dump(cfg.as_dict(), sort_keys=False)
