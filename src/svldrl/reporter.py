"""User-facing output. The library stays quiet; the command line hands down a :class:`Reporter`."""

from __future__ import annotations

import math
import sys
import time
from typing import Any


class Reporter:
    """Prints progress lines to stderr unless quiet. The silent default is used when imported as a library."""

    def __init__(self, quiet: bool = True, stream=None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr

    def info(self, message: str) -> None:
        """One line of progress or status."""
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def progress(self, label: str, done: int, total: int, started: float, extra: str = "") -> None:
        """``label done/total [extra] ETA mm:ss`` from the elapsed time since ``started``."""
        if self.quiet:
            return
        elapsed = time.monotonic() - started
        eta = elapsed / max(done, 1) * max(total - done, 0)
        print(
            f"{label} {done}/{total} {extra} ETA {fmt_seconds(eta)}".replace("  ", " "),
            file=self.stream,
            flush=True,
        )


def fmt_number(value: Any, digits: int | None = None, nan: str = "nan") -> str:
    """One number as text: a float with ``digits`` decimals (None: 6 significant digits, the CSV form),
    ``nan`` for NaN, anything else as ``str``."""
    if isinstance(value, float):
        if math.isnan(value):
            return nan
        return f"{value:.6g}" if digits is None else f"{value:.{digits}f}"
    return str(value)


def fmt_mean_std(mean: float, std: float | None, digits: int, scale: float = 1.0, nan: str = "n/a") -> str:
    """``mean ± std`` (each times ``scale``, ``digits`` decimals); the mean alone when ``std`` is None."""
    if mean is None or math.isnan(mean):
        return nan
    text = fmt_number(mean * scale, digits)
    return text if std is None else f"{text} ± {fmt_number(std * scale, digits)}"


def fmt_seconds(seconds: float) -> str:
    """``3725`` -> ``'1:02:05'``; ``65`` -> ``'1:05'``."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


QUIET = Reporter(quiet=True)
