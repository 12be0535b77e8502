"""Single figures in prose, generated from the committed results files of ``benchmarks/results/``.

A measured number quoted in README.md (or in a BENCHMARKS.md paragraph) is written between two comments that
name its source, which markdown does not render::

    T-Loss recovers everything: <!--fig phantom_converged/mt0.5/tloss-->98.21 ± 0.17<!--/fig--> against ...

``python benchmarks/collect.py`` rewrites the text between the comments from the files the key names; the
number's shape as written is the format it keeps (its decimals, a leading ``+``, a `` ± `` spread). The key::

    TERM [STAT] [OP TERM [STAT]] [*100]

TERM, from a benchmark folder's ``results.csv``, read as its report reads it (:func:`report.aggregate`: mean and
sample std over seeds of each seed's mean, folds averaged within a seed):

- ``FOLDER/SETTING/METHOD[/seedK][:FIELD]``: FIELD ``dice`` (the default), ``iou``, ``hd95``, ``asd``, their
  ``*_val_selected``, ``train_seconds``, ``predict_seconds``; Dice and IoU in %, as the report shows them.
- ``FOLDER/SETTING:label_dice``: the label Dice (%) of that setting's training masks.
- ``FOLDER/*/METHOD[:FIELD]``: every run of METHOD, over all settings (its cost: ``mean``, ``min``, ``max``
  seconds a run, ``xplain`` the report's `x plain` ratio, :func:`report.cost`).

TERM, from another file of the folder:

- ``FOLDER/NAME.csv[COLUMN=VALUE]...:COLUMN``: the row matching every filter, or a STAT over the rows.
- ``FOLDER/NAME.json:KEY.KEY...``: one number; a list item by its index, or by ``[KEY=VALUE]`` filters.

STAT: ``mean``, ``std`` (over seeds; a figure written ``m ± s`` takes both), ``min``, ``max`` (over seeds, or
over runs or rows), ``xplain``. OP: ``-`` (the difference of the two numbers, in the first's unit: a gain,
a gap) or ``/`` (their ratio). A second TERM may be short: ``METHOD[/seedK]`` or ``SETTING/METHOD[/seedK]``
keep the first term's folder and setting (a seed is never kept), ``:PATH`` keeps its file (and filters).
``*100`` shows a fraction in points.

An unknown key, folder, file, setting, method, seed, column or path, or a value that is not a number to take
the format from, raises :class:`FigureError`: a figure is either generated or refused, never left stale.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svldrl.bench.report import METRICS, aggregate, cost
from svldrl.bench.run import num
from svldrl.reporter import fmt_mean_std

OPEN, CLOSE = "<!--fig ", "<!--/fig-->"
MARKER = re.compile(r"<!--fig (?P<key>[^\n]*?)-->(?P<value>[^\n]*?)<!--/fig-->")
#: A figure as written: ``98.21``, ``+8.5``, ``-0.011``, ``98.21 ± 0.17``.
SHAPE = re.compile(r"(?P<plus>\+)?-?\d+(?:\.(?P<dec>\d+))?(?P<pm> ± \d+(?:\.\d+)?)?")
STATS = ("mean", "std", "min", "max", "xplain")
PERCENT = ("dice", "iou", "dice_val_selected", "iou_val_selected", "label_dice")
SEED = re.compile(r"seed(\d+)")
_TOKEN = re.compile(r"(?:\[[^\]]*\]|[^\s\[])+")


class FigureError(ValueError):
    """A marker that names nothing, or whose figure cannot be formatted."""


@dataclass
class Figure:
    mean: float
    std: float | None = None  # a spread over seeds (mean ± std figures)
    n: int = 1
    scale: float = 1.0  # 100 for Dice / IoU fractions shown in %


def fill(text: str, root: Path, where: str, changed: list[str] | None = None) -> str:
    """``text`` with every marker's figure regenerated from the results folders under ``root``.

    ``where`` names the text in messages (``README.md``); each figure that changes is appended to ``changed``
    as ``where:line: KEY: old -> new``. Raises :class:`FigureError`, one line naming the place and the marker,
    on the first marker that cannot be filled or a marker comment without its pair."""
    cache: dict[Path, Any] = {}

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    spans = [m.span() for m in MARKER.finditer(text)]
    for hit in re.finditer(r"<!--\s*/?fig", text):  # a typo or a broken pair would otherwise go unseen
        if not any(a <= hit.start() < b for a, b in spans):
            raise FigureError(
                f"{where}:{line_of(hit.start())}: {text[hit.start() : hit.start() + 40].splitlines()[0]!r} is not "
                "a marker with its pair on the same line (<!--fig KEY-->VALUE<!--/fig-->)"
            )

    def one(m: re.Match) -> str:
        if not text[text.rfind("\n", 0, m.start()) + 1 : m.start()].strip():
            raise FigureError(
                f"{where}:{line_of(m.start())}: <!--fig {m['key']}--> starts a line: markdown reads a line that "
                "starts with a comment as an HTML block (move a word before it)"
            )
        try:
            value = render(m["key"], m["value"], root, cache)
        except FigureError as e:
            raise FigureError(f"{where}:{line_of(m.start())}: <!--fig {m['key']}-->: {e}") from None
        if changed is not None and value != m["value"]:
            changed.append(f"{where}:{line_of(m.start())}: {m['key']}: {m['value']} -> {value}")
        return f"{OPEN}{m['key']}-->{value}{CLOSE}"

    return MARKER.sub(one, text)


def render(key: str, written: str, root: Path, cache: dict[Path, Any] | None = None) -> str:
    """The figure ``key`` names, in the format of the figure as ``written``."""
    shape = SHAPE.fullmatch(written)
    if shape is None:
        raise FigureError(f"{written!r} is not a number to take the format from (write e.g. 98.21 or +8.5)")
    fig = evaluate(key, root, {} if cache is None else cache)
    if math.isnan(fig.mean):
        raise FigureError("gives no number (NaN)")
    digits = len(shape["dec"] or "")
    if shape["pm"]:
        if fig.std is None:
            raise FigureError(
                "written as mean ± std, but the key gives one number (name a setting and method)"
            )
        return fmt_mean_std(fig.mean, fig.std if fig.n > 1 else None, digits, scale=fig.scale)
    return f"{fig.mean * fig.scale:{'+' if shape['plus'] else ''}.{digits}f}"


def evaluate(key: str, root: Path, cache: dict[Path, Any]) -> Figure:
    """The number ``key`` names (module docstring), unformatted; ``cache`` holds the files read so far."""
    tokens = _TOKEN.findall(key)
    if not tokens:
        raise FigureError("empty key")
    first, i = tokens[0], 1
    stat1 = stat2 = op = second = None
    scale = 1.0
    if i < len(tokens) and tokens[i] in STATS:
        stat1, i = tokens[i], i + 1
    if i < len(tokens) and tokens[i] in ("-", "/"):
        if i + 1 >= len(tokens):
            raise FigureError(f"{tokens[i]!r} without a second term")
        op, second, i = tokens[i], tokens[i + 1], i + 2
        if i < len(tokens) and tokens[i] in STATS:
            stat2, i = tokens[i], i + 1
    if i < len(tokens) and tokens[i] == "*100":
        scale, i = 100.0, i + 1
    if i < len(tokens):
        raise FigureError(f"unexpected {tokens[i]!r} (a key is TERM [STAT] [- or / TERM [STAT]] [*100])")
    a = _term(_parse(first), stat1, root, cache)
    if op is None:
        a.scale *= scale
        return a
    b = _term(_relative(second, _parse(first)), stat2, root, cache)
    if op == "-":
        if a.scale != b.scale:
            raise FigureError("the two terms are in different units")
        return Figure(a.mean - b.mean, scale=a.scale * scale)
    return Figure(a.mean / b.mean if b.mean else math.nan, scale=scale)


@dataclass
class _Ref:
    folder: str
    file: str | None = None  # None: the benchmark's results.csv, read as its report reads it
    filters: tuple[tuple[str, str], ...] = ()
    setting: str | None = None
    method: str | None = None
    seed: str | None = None
    field: str | None = None


def _split_field(term: str) -> tuple[str, str | None]:
    depth = 0
    for k, ch in enumerate(term):
        depth += ch == "["
        depth -= ch == "]"
        if ch == ":" and depth == 0:
            return term[:k], term[k + 1 :]
    return term, None


def _filters(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``name[a=1][b=x y]`` -> ``('name', (('a', '1'), ('b', 'x y')))``."""
    m = re.fullmatch(r"([^\[\]]*)((?:\[[^\[\]=]+=[^\[\]]*\])*)", text)
    if m is None:
        raise FigureError(f"malformed {text!r} (filters are [KEY=VALUE])")
    pairs = tuple(tuple(p.split("=", 1)) for p in re.findall(r"\[([^\]]*)\]", m[2]))
    return m[1], pairs  # type: ignore[return-value]


def _parse(term: str) -> _Ref:
    path, field = _split_field(term)
    parts = path.split("/")
    if len(parts) < 2 or not parts[0]:
        raise FigureError(f"{term!r} names no folder (FOLDER/SETTING/METHOD, FOLDER/NAME.csv:COLUMN, ...)")
    name, filters = _filters(parts[1])
    if name.endswith((".csv", ".json")):
        if len(parts) > 2 or field is None:
            raise FigureError(
                f"{term!r}: a file term is FOLDER/NAME.csv[...]:COLUMN or FOLDER/NAME.json:PATH"
            )
        if name.endswith(".json") and filters:
            raise FigureError(f"{term!r}: filters of a JSON file go in its path (KEY[K=V])")
        return _Ref(parts[0], name, filters, field=field)
    if filters:
        raise FigureError(f"{term!r}: filters belong to a file term")
    seed = None
    if len(parts) > 2 and SEED.fullmatch(parts[-1]):
        seed = SEED.fullmatch(parts.pop())[1]
    if len(parts) > 3:
        raise FigureError(f"{term!r}: a benchmark term is FOLDER/SETTING[/METHOD][/seedK][:FIELD]")
    method = parts[2] if len(parts) == 3 else None
    return _Ref(parts[0], None, (), parts[1], method, seed, field)


def _relative(term: str, first: _Ref) -> _Ref:
    """The second term of a difference or ratio, its missing leading parts taken from the first."""
    if term.startswith(":"):
        if first.file is None:
            raise FigureError(f"{term!r}: ':PATH' shortens a second term of a file term only")
        return _Ref(first.folder, first.file, first.filters, field=term[1:])
    path, field = _split_field(term)
    parts = path.split("/")
    seed = None
    if SEED.fullmatch(parts[-1]):
        seed = SEED.fullmatch(parts.pop())[1]
    if len(parts) >= 3 or (len(parts) == 2 and parts[1].split("[")[0].endswith((".csv", ".json"))):
        return _parse(term)
    if first.file is not None:
        raise FigureError(f"{term!r}: shorten a second file term as ':PATH'")
    setting, method = (first.setting, parts[0]) if len(parts) == 1 else parts
    return _Ref(first.folder, None, (), setting, method, seed, field or first.field)


def _read(path: Path, cache: dict[Path, Any]) -> Any:
    if path not in cache:
        if not path.is_file():
            raise FigureError(f"no {path.parent.name}/{path.name} under the results folder")
        if path.suffix == ".json":
            cache[path] = json.loads(path.read_text())
        else:
            with path.open(newline="") as f:
                cache[path] = list(csv.DictReader(f))
    return cache[path]


def _term(ref: _Ref, stat: str | None, root: Path, cache: dict[Path, Any]) -> Figure:
    folder = root / ref.folder
    if not folder.is_dir():
        raise FigureError(f"no results folder {ref.folder!r}")
    if ref.file is None:
        return _bench(ref, stat, _read(folder / "results.csv", cache))
    if ref.file.endswith(".json"):
        if stat is not None:
            raise FigureError(f"{stat!r}: a JSON value is one number")
        return Figure(_json_value(_read(folder / ref.file, cache), ref.field or ""))
    rows = _read(folder / ref.file, cache)
    columns = set(rows[0]) if rows else set()
    for col, _ in ref.filters:
        if col not in columns:
            raise FigureError(f"{ref.file} has no column {col!r}")
    if ref.field not in columns:
        raise FigureError(f"{ref.file} has no column {ref.field!r}")
    rows = [r for r in rows if all(r[c] == v for c, v in ref.filters)]
    if not rows:
        raise FigureError(f"no row of {ref.file} matches {''.join(f'[{c}={v}]' for c, v in ref.filters)}")
    values = [num(r[ref.field], math.nan) for r in rows]
    if stat is None:
        if len(values) > 1:
            raise FigureError(f"{len(values)} rows match: filter to one or name a STAT (mean, min, max)")
        return Figure(values[0])
    return Figure(_over(values, stat))


def _over(values: list[float], stat: str) -> float:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan
    if stat == "mean":
        return float(np.mean(vals))
    if stat == "std":
        return float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    if stat in ("min", "max"):
        return float(min(vals) if stat == "min" else max(vals))
    raise FigureError(f"{stat!r} needs a benchmark term over every run (FOLDER/*/METHOD)")


def _bench(ref: _Ref, stat: str | None, every: list[dict[str, str]]) -> Figure:
    rows = every
    field = ref.field or "dice"
    scale = 100.0 if field in PERCENT else 1.0
    where = f"{ref.folder}/results.csv"
    if field != "label_dice" and field not in METRICS:
        raise FigureError(f"unknown field {field!r} (one of {', '.join(('label_dice',) + METRICS)})")
    if ref.setting != "*":
        rows = [r for r in rows if r["noise"] == ref.setting]
        if not rows:
            raise FigureError(f"{where} has no setting {ref.setting!r}")
    if ref.method is not None:
        rows = [r for r in rows if r["method"] == ref.method]
        if not rows:
            raise FigureError(
                f"{where} has no method {ref.method!r}" + (f" on {ref.setting}" if ref.setting != "*" else "")
            )
    elif field != "label_dice":
        raise FigureError("name a method (FOLDER/SETTING/METHOD); only label_dice belongs to a setting alone")
    if ref.seed is not None:
        rows = [r for r in rows if r["seed"] == ref.seed]
        if not rows:
            raise FigureError(f"{where} has no seed {ref.seed} of {ref.method} on {ref.setting}")
    if field == "label_dice":
        if ref.setting == "*" or stat is not None:
            raise FigureError("label_dice is one number of one setting")
        values = {num(r["label_dice"], math.nan) for r in rows}
        if len(values) != 1:
            raise FigureError(f"the rows of {ref.setting} disagree on its label Dice")
        return Figure(values.pop(), scale=scale)
    if ref.setting == "*":  # every run of the method: its cost
        if stat == "xplain" or (stat == "mean" and field == "train_seconds"):
            seconds, ratio = cost(every, ref.method)  # type: ignore[arg-type]
            return Figure(ratio if stat == "xplain" else seconds)
        if stat not in ("mean", "min", "max"):
            raise FigureError("a term over every run (FOLDER/*/METHOD) takes mean, min, max or xplain")
        return Figure(_over([num(r[field], math.nan) for r in rows], stat), scale=scale)
    if stat == "xplain":
        raise FigureError("xplain is a method's cost over every run: FOLDER/*/METHOD xplain")
    mean, std = aggregate(rows)[(ref.setting, ref.method)][field]
    n = len({r["seed"] for r in rows})
    if stat in ("min", "max"):  # over the seeds' means
        seeds = sorted({r["seed"] for r in rows})
        per_seed = [
            aggregate([r for r in rows if r["seed"] == s])[(ref.setting, ref.method)][field][0] for s in seeds
        ]
        return Figure(_over(per_seed, stat), scale=scale)
    if stat == "std":
        return Figure(std, scale=scale)
    return Figure(mean, None if stat == "mean" else std, n, scale)


def _json_value(data: Any, path: str) -> float:
    node = data
    for part in _json_parts(path):
        name, filters = _filters(part)
        if name:
            if isinstance(node, list) and name.isdigit() and int(name) < len(node):
                node = node[int(name)]
            elif isinstance(node, dict) and name in node:
                node = node[name]
            else:
                raise FigureError(f"no {name!r} at {path!r}")
        if filters:
            items = (
                [x for x in node if isinstance(x, dict) and all(str(x.get(k)) == v for k, v in filters)]
                if isinstance(node, list)
                else []
            )
            if len(items) != 1:
                raise FigureError(f"{len(items)} items match {part!r} in {path!r} (need one)")
            node = items[0]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise FigureError(f"{path!r} is not a number")
    return float(node)


def _json_parts(path: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in path:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "." and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur] if path else []
