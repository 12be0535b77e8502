"""Methods are small trainer subclasses picked by name (``svldrl train --method NAME``); each names the config
sections of its own that it reads (``sections``), from which :func:`section_owners` derives who owns a section."""

from __future__ import annotations

import importlib

from svldrl.errors import UserError

#: name -> "module:Class"; imported lazily so that ``svldrl --help`` stays fast.
METHODS: dict[str, str] = {
    "supervised": "svldrl.methods.supervised:SupervisedTrainer",
    "supervised_confident": "svldrl.methods.confident:SupervisedConfidentTrainer",
    "supervised_band": "svldrl.methods.band:SupervisedBandTrainer",
    "supervised_shift": "svldrl.methods.shift:SupervisedShiftTrainer",
    "supervised_agents": "svldrl.methods.agents:SupervisedAgentsTrainer",
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


def section_owners() -> dict[str, tuple[str, ...]]:
    """Method section -> the methods that read it (the trainers' ``sections``), the method of its name first, then
    in registry order: what :func:`svldrl.config.load_config` takes as ``owners`` to refuse a key of a section the
    run's method does not read. Sections no method names (``data``, ``nets``, ``train`` ...) are every method's."""
    owners: dict[str, list[str]] = {}
    for name in METHODS:
        for section in get_method(name).sections:
            owners.setdefault(section, []).append(name)
    return {section: tuple(sorted(names, key=lambda n: n != section)) for section, names in owners.items()}
