"""What every dataset layout reads a dataset into: its cases (an image and its mask each) and the dataset."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from svldrl.errors import UserError

NOISY_DIR = "labelsTr_noisy"


@dataclass
class Case:
    """One volume and its mask.

    ``image_key`` / ``label_key`` pick the datasets of HDF5 files. ``modality`` is the dataset's
    ("mr" / "ct"), used when the config says ``data.modality: auto``. With a noisy label set, ``label`` is
    the noisy mask and ``clean_label`` / ``clean_label_key`` the dataset's own (methods with a clean subset,
    such as MTCL's, train those cases on it). ``trusted``: the mask in ``label`` is trusted (an expert's, or
    one the noise left untouched; see :mod:`svldrl.data.dataset`): validation and MTCL's clean subset use it.
    """

    case_id: str
    image: Path
    label: Path | None
    image_key: str = "image"
    label_key: str = "label"
    modality: str | None = None
    clean_label: Path | None = None
    clean_label_key: str = "label"
    trusted: bool = False

    def with_clean_label(self) -> Case:
        """This case with the dataset's own mask (itself when no other label set was chosen)."""
        if self.clean_label is None:
            return self
        return replace(self, label=self.clean_label, label_key=self.clean_label_key)


@dataclass
class Dataset:
    """Training and test cases of one dataset.

    ``labels`` maps label names to values as in dataset.json (region-based nnU-Net datasets may
    map a name to a list of values). ``layout`` names the format it was read from
    (:data:`svldrl.data.layouts.LAYOUTS`). ``label_set`` is ``"clean"`` or ``"noisy/<name>"``.
    ``trusted_source`` says where the trusted cases (``Case.trusted``) come from, empty without any.
    """

    root: Path
    train: list[Case]
    test: list[Case]
    modality: str
    labels: dict[str, int]
    layout: str
    file_ending: str
    label_set: str = "clean"
    trusted_source: str = ""

    def noisy_dir(self, name: str) -> Path:
        """Folder of the noisy training masks called ``name``."""
        return self.root / NOISY_DIR / name

    @property
    def case_ids(self) -> list[str]:
        """Ids of the training cases, in order."""
        return [c.case_id for c in self.train]

    @property
    def trusted_ids(self) -> list[str]:
        """Ids of the trusted training cases, sorted (empty without trusted cases)."""
        return sorted(c.case_id for c in self.train if c.trusted)

    def case(self, case_id: str) -> Case:
        """The training or test case with this id."""
        for c in self.train + self.test:
            if c.case_id == case_id:
                return c
        raise UserError(f"no case '{case_id}' in the dataset", self.root)
