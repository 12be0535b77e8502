"""Noise: seeded, reported corruption of clean training masks (MT-Noise, Markov, SP-guided, SFDA-style).

The protocol functions are pure (binary uint8 mask and a ``numpy.random.Generator`` in, noisy
uint8 mask and a dict of the operation and its parameters out); :func:`run_noise` applies one
to a dataset's training cases and writes ``labelsTr_noisy/<name>/`` with a noise report. SFDA-style
noise (:mod:`svldrl.noise.sfda`) needs the images and a source model, so it is not in PROTOCOLS (the
pure mask functions) but in ALL_PROTOCOLS; its source model trains, so it is prepared above the methods
(:func:`svldrl.runs.run_noise`) and handed to run_noise.
"""

from __future__ import annotations

from svldrl.noise.markov import markov_noise
from svldrl.noise.mt import mt_noise
from svldrl.noise.report import build_report, mask_dice, voxel_error_rate
from svldrl.noise.run import ALL_PROTOCOLS, PROTOCOLS, default_name, run_noise
from svldrl.noise.sfda import apply_shift, draw_shift, mask_from_probability
from svldrl.noise.spg import spg_noise

__all__ = [
    "ALL_PROTOCOLS",
    "PROTOCOLS",
    "apply_shift",
    "build_report",
    "default_name",
    "draw_shift",
    "markov_noise",
    "mask_dice",
    "mask_from_probability",
    "mt_noise",
    "run_noise",
    "spg_noise",
    "voxel_error_rate",
]
