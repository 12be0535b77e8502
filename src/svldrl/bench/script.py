"""What the benchmark scripts of ``benchmarks/`` share: one line for a user error, and the record of how a result
was made (command, date, machine, wall time) written beside it as JSON and CSV."""

from __future__ import annotations

import csv
import datetime
import io
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from svldrl.bench.report import machine_description
from svldrl.data.io import write_text
from svldrl.errors import UserError


def run_script(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``'s payload stamped with the command, the UTC date, the machine and the wall time; a
    :class:`~svldrl.errors.UserError` ends the script with one line and exit code 2, as the CLI does."""
    t0 = time.monotonic()
    try:
        payload = run()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    payload.update(
        command="python " + " ".join(sys.argv),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_description(),
        wall_s=time.monotonic() - t0,
    )
    return payload


def write_rows(out: Path, payload: dict[str, Any], name: str = "results") -> None:
    """``out/results.json`` (the whole payload) and ``out/results.csv`` (its ``rows``), atomically; another
    ``name``: only ``out/NAME.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    if name == "results":
        write_text(out / "results.json", json.dumps(payload, indent=2) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(payload["rows"][0]), lineterminator="\n")
    w.writeheader()
    w.writerows(payload["rows"])
    write_text(out / f"{name}.csv", buf.getvalue())


def made_with(payload: dict[str, Any]) -> list[str]:
    """The results.md lines that say how :func:`run_script`'s payload was made: command, date, machine, wall time."""
    return [
        f"- Command: `{payload['command']}`",
        f"- Date: {payload['date']}; machine: {payload['machine']}; wall time {payload['wall_s'] / 60:.1f} min",
    ]
