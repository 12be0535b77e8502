"""User-facing output. The library stays quiet; the command line hands down a :class:`Reporter`."""

from __future__ import annotations

import sys
import time


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


def fmt_seconds(seconds: float) -> str:
    """``3725`` -> ``'1:02:05'``; ``65`` -> ``'1:05'``."""
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


QUIET = Reporter(quiet=True)
