"""Runs: train or predict a run folder by method name (the layer above the methods).

- :func:`train`: a dataset path, a label set and a config -> a run folder, with the trainer of
  ``cfg.method`` (construct, build, restore with ``resume``, fit).
- :func:`load_run`: a run folder -> its method class, network (chosen checkpoint) and config.
- :func:`predict_folder`: ``svldrl predict``.
- :func:`run_noise`: ``svldrl noise``, with the SFDA source model (:mod:`svldrl.runs.sfda`), which trains.
- :func:`svldrl.runs.targets.write_targets`: ``svldrl targets``, the masks a configuration starts training from.
"""

from __future__ import annotations

from svldrl.runs.noise import run_noise
from svldrl.runs.run import load_run, predict_folder, train

__all__ = ["load_run", "predict_folder", "run_noise", "train"]
