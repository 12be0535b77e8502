"""``svldrl noise`` with every protocol: :func:`svldrl.noise.run.run_noise` plus the SFDA source model."""

from __future__ import annotations

import functools

from svldrl.noise.run import run_noise as _run_noise
from svldrl.runs.sfda import prepare_sfda

#: :func:`svldrl.noise.run.run_noise` with the image protocols prepared here (SFDA's source model trains).
run_noise = functools.partial(_run_noise, prepare={"sfda": prepare_sfda})
