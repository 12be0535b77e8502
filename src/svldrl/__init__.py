"""svldrl: 3D segmentation that stays accurate when the training masks are wrong."""

from __future__ import annotations

__version__ = "0.1.0"
