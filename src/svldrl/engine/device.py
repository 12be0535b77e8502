"""Where training runs and in which number format: the device, bf16 autocast, the weights' memory layout.

CPU is a first-class device: ``auto`` settings pick what is fastest where the run is, never a CUDA call on a
machine without one.
"""

from __future__ import annotations

import torch

from svldrl.engine import distributed as D
from svldrl.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the local CUDA device under torchrun, else cuda:0 if present, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", D.local_rank())
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available on this machine")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 kernels natively: a CUDA GPU with bf16, or a CPU with AMX-BF16 or
    AVX512-BF16 (oneDNN then uses them; without them bf16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def use_amp(setting: bool | str, device: torch.device) -> bool:
    """``train.amp`` resolved for ``device``: ``auto`` means bf16 where :func:`bf16_supported`."""
    return bf16_supported(device) if setting == "auto" else bool(setting)


def memory_format(setting: str, device: torch.device, amp: bool) -> torch.memory_format:
    """``train.memory_format`` resolved: ``auto`` is channels_last on a CPU under bf16 autocast, where oneDNN's
    3D convolutions run 1.4x faster in that layout (benchmarks/results/cpu_speed: bf16_cl against bf16), and
    contiguous elsewhere (cuDNN's 3D convolutions gain nothing dependable from it)."""
    if setting == "auto":
        setting = "channels_last" if device.type == "cpu" and amp else "contiguous"
    return torch.channels_last_3d if setting == "channels_last" else torch.contiguous_format
