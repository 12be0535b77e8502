"""The voxel agents' environment: actions on the image (method.md 3) or on the target (method.md 9).

Every voxel is an agent; its action map ``actions`` is a long tensor ``(B, 1, D, H, W)`` with
values ``KEEP = 0``, ``ENHANCE = 1``, ``WEAKEN = 2``. Everything is batched tensor arithmetic.

Intensity actions (**known**, method.md section 3), on an image normalised to [0, 1]:

- keep:    x_i^(t+1) = x_i^(t)
- enhance: x_i^(t+1) = clip(x_i^(t) * (1 + s * eps_i), 0, 1)
- weaken:  x_i^(t+1) = clip(x_i^(t) * (1 - s * eps_i), 0, 1)

with eps_i ~ U(0, 1) drawn per voxel per step from the run's seeded generator (**decision**) and
the step size s = ``rl.action_scale`` (default 0.3).

Label actions (**extension**, method.md section 9, ``rl.action_space = label``) on the soft
target q in [0, 1]: keep / raise / lower q_i by ``rl.label_step`` (default 0.25), clipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

KEEP, ENHANCE, WEAKEN = 0, 1, 2
RAISE, LOWER = ENHANCE, WEAKEN  # the label actions' names for the same indices
ACTION_NAMES = ("keep", "enhance", "weaken")


def sample_eps(
    shape: Sequence[int], generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """sample_eps: eps ~ U(0, 1) per voxel, from ``generator`` (the run's seeded generator).

    The numbers are drawn on the generator's device and moved to ``device``; give a generator on
    the training device to avoid a host-to-device copy per step.
    """
    if generator is None:
        return torch.rand(tuple(shape), device=device)
    return torch.rand(tuple(shape), generator=generator, device=generator.device).to(device)


def intensity_step(
    x: torch.Tensor, actions: torch.Tensor, eps: torch.Tensor, action_scale: float = 0.3
) -> torch.Tensor:
    """intensity_step: apply keep / enhance / weaken to every voxel (method.md section 3).

    Args:
        x: image (B, C, D, H, W) in [0, 1]; one agent per voxel acts on all its channels.
        actions: (B, 1, D, H, W) long, values KEEP / ENHANCE / WEAKEN.
        eps: (B, 1, D, H, W) U(0, 1) step fractions (:func:`sample_eps`).
        action_scale: ``rl.action_scale``, default 0.3.
    """
    enhanced = (x * (1 + action_scale * eps)).clamp(0, 1)
    weakened = (x * (1 - action_scale * eps)).clamp(0, 1)
    return torch.where(actions == ENHANCE, enhanced, torch.where(actions == WEAKEN, weakened, x))


def label_step(q: torch.Tensor, actions: torch.Tensor, step: float = 0.25) -> torch.Tensor:
    """label_step: keep / raise / lower the soft target q by ``rl.label_step`` (default 0.25), clip [0, 1]."""
    delta = step * ((actions == RAISE).to(q.dtype) - (actions == LOWER).to(q.dtype))
    return (q + delta).clamp(0, 1)
