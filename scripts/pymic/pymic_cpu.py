"""Run PyMIC 0.6.2's ``pymic_train`` / ``pymic_test`` on a CPU-only torch (used by scripts/pymic_peer.py).

Run with the PyMIC virtual environment's python: ``python pymic_cpu.py train|test CONFIG.cfg [args]``.

PyMIC 0.6.2 selects ``cuda:N`` unconditionally (``SegmentationAgent.train_valid`` / ``infer``), which a
CPU build of torch rejects ("Torch not compiled with CUDA enabled"), and it imports torchvision without
declaring it (only ``transforms.Compose`` is used on the segmentation path; the classification
networks import ``torchvision.models`` eagerly), and its unused 2D transformer networks import
``timm.models.layers`` (timm needs torchvision too). PyPI's torchvision does not load beside the CPU
torch here, so this launcher installs stand-ins for both before PyMIC is imported and, when torch has no CUDA,
points the ``torch`` name inside every PyMIC module at a proxy whose ``device()`` maps CUDA to the CPU.
PyMIC's own files stay untouched.

This file is not part of the svldrl package and imports nothing from it (it runs in another venv).
"""

from __future__ import annotations

import sys
import types

import torch

_REAL_DEVICE = torch.device


def _install_torchvision_standin() -> None:
    try:
        import torchvision  # noqa: F401  (a working torchvision, if any, is used as is)

        return
    except Exception:  # missing or broken beside this torch
        pass

    class Compose:
        """torchvision.transforms.Compose: apply the transforms in order."""

        def __init__(self, transforms: list) -> None:
            self.transforms = list(transforms)

        def __call__(self, sample: object) -> object:
            for t in self.transforms:
                sample = t(sample)
            return sample

    def _missing(name: str) -> object:
        raise AttributeError(
            f"torchvision stand-in (svldrl scripts/pymic): torchvision.models.{name} is not available"
        )

    tv = types.ModuleType("torchvision")
    tv.__path__ = []  # a package, so "import torchvision.models" works
    transforms = types.ModuleType("torchvision.transforms")
    transforms.Compose = Compose
    models = types.ModuleType("torchvision.models")
    models.__getattr__ = _missing
    tv.transforms, tv.models = transforms, models
    sys.modules.update(
        {"torchvision": tv, "torchvision.transforms": transforms, "torchvision.models": models}
    )


def _install_timm_standin() -> None:
    # timm is imported at start-up by PyMIC's 2D Swin / Mamba / UNETR++ networks (never used here) for
    # three helpers; timm itself needs torchvision, so these stand in for it.
    try:
        import timm.models.layers  # noqa: F401

        return
    except Exception:
        pass

    class DropPath(torch.nn.Module):
        """Stochastic depth per sample (timm.layers.DropPath)."""

        def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
            super().__init__()
            self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.drop_prob == 0.0 or not self.training:
                return x
            keep = 1.0 - self.drop_prob
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * (mask / keep if self.scale_by_keep else mask)

    def to_2tuple(x: object) -> tuple:
        return tuple(x) if isinstance(x, (list, tuple)) else (x, x)

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, torch.nn.init.trunc_normal_
    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    timm.__path__, models.__path__ = [], []
    timm.models, models.layers = models, layers
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


def _cpu_device(*args: object, **kwargs: object) -> torch.device:
    dev = _REAL_DEVICE(*args, **kwargs)
    return _REAL_DEVICE("cpu") if dev.type == "cuda" else dev


class _TorchProxy(types.ModuleType):
    """``torch`` as PyMIC's modules see it: everything real except ``device``."""

    def __getattr__(self, name: str) -> object:
        return getattr(torch, name)


def _redirect_devices() -> int:
    proxy = _TorchProxy("torch")
    proxy.device = _cpu_device
    patched = 0
    for name, mod in list(sys.modules.items()):
        if (name == "pymic" or name.startswith("pymic.")) and getattr(mod, "torch", None) is torch:
            mod.torch = proxy
            patched += 1
    return patched


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] not in ("train", "test"):
        print("usage: pymic_cpu.py train|test CONFIG.cfg [pymic arguments]", file=sys.stderr)
        return 2
    stage = sys.argv[1]
    _install_torchvision_standin()
    _install_timm_standin()
    from pymic.net_run import predict, train

    if torch.cuda.is_available():
        print("pymic_cpu: CUDA is available; PyMIC runs on its own device choice", file=sys.stderr)
    else:
        n = _redirect_devices()
        print(
            f"pymic_cpu: CPU-only torch; devices of {n} PyMIC modules redirected to the CPU", file=sys.stderr
        )
    sys.argv = [f"pymic_{stage}", *sys.argv[2:]]
    (train if stage == "train" else predict).main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
