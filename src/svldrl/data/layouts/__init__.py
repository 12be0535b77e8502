"""Dataset layouts: one module per format, found by what a path holds.

Each format module has ``probe(path) -> bool`` (does it claim this folder or file?), ``load(path) -> Dataset``
and a :class:`~svldrl.data.layouts.common.Layout` that names them; :data:`LAYOUTS` lists them in the order they
are probed. A new format is one module here and one line in :data:`LAYOUTS` (README, "Extending svldrl").
"""

from __future__ import annotations

from pathlib import Path

from svldrl.data.cases import Dataset
from svldrl.data.layouts import datalist, hdf5, nnunet, pairs
from svldrl.data.layouts.common import Layout
from svldrl.errors import UserError

#: Probed in order; the first that claims a path reads it. The datalist comes before nnU-Net, whose folders an
#: MSD task's ``dataset.json`` would otherwise claim; folders of loose files (HDF5, pairs) come last.
LAYOUTS: list[Layout] = [
    datalist.LAYOUT,
    nnunet.LAYOUT,
    hdf5.LAYOUT,
    pairs.LAYOUT,
]


def read_layout(path: Path) -> Dataset:
    """The dataset at ``path`` (an existing folder or file) in the first layout that claims it.

    Raises:
        UserError: what the layout says is wrong, or, when none claims the path, which forms were expected.
    """
    for layout in LAYOUTS:
        if layout.probe(path):
            return layout.load(path)
    if path.is_file():
        expected = _either([layout.file_hint for layout in LAYOUTS if layout.file_hint])
        raise UserError(f"expected a dataset folder or {expected}", path)
    expected = _either([layout.folder_hint for layout in LAYOUTS if layout.folder_hint])
    raise UserError(f"no cases found: expected {expected}", path)


def _either(options: list[str]) -> str:
    """``a``, ``a or b``, ``a, b, or c``."""
    if len(options) <= 2:
        return " or ".join(options)
    return ", ".join(options[:-1]) + ", or " + options[-1]
