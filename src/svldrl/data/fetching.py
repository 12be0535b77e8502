"""What the scripts that fetch real data (scripts/fetch_*.py) share: a file's checksum, and the git work tree a
cache folder would fall into (data are never committed)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_work_tree(path: Path) -> Path | None:
    """The git work tree holding ``path`` (or the nearest existing parent of it), if any."""
    p = path.resolve()
    for parent in (p, *p.parents):
        if (parent / ".git").exists():
            return parent
    return None
