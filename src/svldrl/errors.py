"""User-facing errors: the command line prints them as one line and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Something the user gave us is wrong (a file, a flag, a config value).

    The message names the file or option and the problem in one line; the CLI prints
    ``svldrl: error: <message>`` and exits with code 2, without a traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{path}: {message}" if path is not None else message)
