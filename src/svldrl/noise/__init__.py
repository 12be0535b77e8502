"""Noise: seeded, reported corruption of clean training masks (MT-Noise, Markov, SP-guided).

The protocol functions are pure (binary uint8 mask and a ``numpy.random.Generator`` in, noisy
uint8 mask and a dict of the operation and its parameters out); :func:`run_noise` applies one
to a dataset's training cases and writes ``labelsTr_noisy/<name>/`` with a noise report.
"""

from __future__ import annotations

from svldrl.noise.markov import markov_noise
from svldrl.noise.mt import mt_noise
from svldrl.noise.report import build_report, mask_dice, voxel_error_rate
from svldrl.noise.run import PROTOCOLS, default_name, run_noise
from svldrl.noise.spg import spg_noise

__all__ = [
    "PROTOCOLS",
    "build_report",
    "default_name",
    "markov_noise",
    "mask_dice",
    "mt_noise",
    "run_noise",
    "spg_noise",
    "voxel_error_rate",
]
