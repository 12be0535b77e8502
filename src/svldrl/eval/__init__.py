"""Evaluation: per-case metrics (Dice, IoU, HD95, ASD in mm) and nnU-Net style folder summaries."""

from __future__ import annotations

from svldrl.eval.metrics import METRIC_KEYS, case_metrics, empty_metrics, surface_distances
from svldrl.eval.summary import evaluate_folders, format_table, markdown_table

__all__ = [
    "METRIC_KEYS",
    "case_metrics",
    "empty_metrics",
    "evaluate_folders",
    "format_table",
    "markdown_table",
    "surface_distances",
]
