"""User-facing output. The library stays quiet; the command line hands down a :class:`Reporter`.

Two kinds of output: progress (:meth:`Reporter.info`, :meth:`Reporter.progress`), which ``--quiet`` hides,
and warnings (:meth:`Reporter.warn`: something the user should act on or know is wrong), which always print.
Errors are :class:`~svldrl.errors.UserError` and print as one line whatever the reporter.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Any

#: The help text of every command's ``--quiet``.
QUIET_HELP = "no progress output; warnings and errors still print"


class SvldrlWarning(UserWarning):
    """A warning svldrl gives about the user's data or settings (what :meth:`Reporter.warn` says), raised as a
    Python warning where no command line prints it: library calls with the default :data:`QUIET` reporter."""


def python_warning(message: str, stacklevel: int = 3) -> None:
    """``message`` as an :class:`SvldrlWarning` (``stacklevel`` 3: attributed to the caller of the function
    that calls this one, e.g. the line that called ``reporter.warn``)."""
    warnings.warn(message, SvldrlWarning, stacklevel=stacklevel)


def report_warning(reporter: Any, message: str) -> None:
    """``reporter.warn(message)``, or a Python warning where there is no reporter (``None``) or it is a
    caller's own progress object with ``info`` only (the functions that take ``reporter: Any``)."""
    warn = getattr(reporter, "warn", None)
    if warn is None:
        python_warning(message, stacklevel=4)
    else:
        warn(message)


class Reporter:
    """The command line's output, on stderr: progress lines unless ``quiet``, warnings always.

    ``quiet`` (``--quiet``) hides progress only: a warning names something about the user's data or settings
    that a result depends on, and hiding it would let a run finish with exit code 0 and a wrong result
    nobody was told about.
    """

    def __init__(self, quiet: bool = True, stream=None) -> None:
        self.quiet = quiet
        self.stream = stream or sys.stderr

    def info(self, message: str) -> None:
        """One line of progress or status (hidden by ``quiet``)."""
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        """One ``warning: <message>`` line, printed even when ``quiet``."""
        print(f"warning: {message}", file=self.stream, flush=True)

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


class _LibraryReporter(Reporter):
    """The default when svldrl is used as a library (:data:`QUIET`): it prints nothing itself.

    Progress is dropped. Warnings are not: they become Python warnings (:class:`SvldrlWarning`), the
    standard channel a library reports through, so that a caller learns that, say, most of its masks hold
    none of the foreground labels, and can still filter, record or escalate them with :mod:`warnings` (and the
    command line, which catches Python warnings, prints them as its own ``warning:`` lines). Dropping them would
    make a library call the one place where such a warning is silently lost; importing svldrl stays silent.
    """

    def __init__(self) -> None:
        super().__init__(quiet=True)

    def warn(self, message: str) -> None:
        python_warning(message)


class _Silent(Reporter):
    """Drops everything, warnings included: for the ranks other than 0 of a distributed run, whose rank 0
    says the same things once."""

    def __init__(self) -> None:
        super().__init__(quiet=True)

    def warn(self, message: str) -> None:
        pass


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


#: The library's default reporter: no progress; warnings as Python warnings (see :class:`_LibraryReporter`).
QUIET: Reporter = _LibraryReporter()
#: Prints nothing at all (distributed ranks other than 0).
SILENT: Reporter = _Silent()
