"""Methods are small trainer subclasses picked by name (``svldrl train --method NAME``)."""

from __future__ import annotations

import importlib

from svldrl.errors import UserError

#: name -> "module:Class"; imported lazily so that ``svldrl --help`` stays fast.
METHODS: dict[str, str] = {
    "supervised": "svldrl.methods.supervised:SupervisedTrainer",
    "supervised_confident": "svldrl.methods.confident:SupervisedConfidentTrainer",
    "supervised_band": "svldrl.methods.band:SupervisedBandTrainer",
    "supervised_shift": "svldrl.methods.shift:SupervisedShiftTrainer",
    "tloss_band": "svldrl.methods.tloss:TLossBandTrainer",
    "svldrl": "svldrl.methods.svldrl:SVLDRLTrainer",
    "coteaching": "svldrl.methods.coteaching:CoTeachingTrainer",
    "adele": "svldrl.methods.adele:ADELETrainer",
    "mtcl": "svldrl.methods.mtcl:MTCLTrainer",
    "tloss": "svldrl.methods.tloss:TLossTrainer",
}


def get_method(name: str) -> type:
    """The trainer class registered under ``name``."""
    if name not in METHODS:
        raise UserError(f"unknown method '{name}' (choose from: {', '.join(sorted(METHODS))})")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)
