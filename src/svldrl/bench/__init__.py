"""Benchmarks: methods x noise settings x seeds on one dataset, scored on clean test masks.

``svldrl benchmark CONFIG --out DIR`` (see :func:`svldrl.bench.runner.run_benchmark` and the
YAML files in ``benchmarks/``) writes ``results.csv``, ``results.md`` and plots.
"""

from __future__ import annotations

from svldrl.bench.runner import load_benchmark, run_benchmark

__all__ = ["load_benchmark", "run_benchmark"]
