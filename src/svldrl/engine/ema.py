"""The exponential-moving-average (mean) teacher, on ``torch.optim.swa_utils.AveragedModel``.

One home for the EMA teacher of MTCL and of SVL-DRL's label actions. ``AveragedModel`` keeps its own copy of
the network and the count of averaged updates (``n_averaged``, a buffer, so a checkpoint restores it); the
decay is a function of that count:

    teacher <- decay * teacher + (1 - decay) * student

- ``ramp=True`` (MTCL, as mean-teacher code does): decay = min(1 - 1 / (n + 1), decay), so the teacher starts
  as a copy of the student (n = 0) and is not dragged by its random initialisation;
- ``ramp=False`` (SVL-DRL label actions): the constant decay from the first update on, starting from a copy
  of the student at construction.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def ema_teacher(network: torch.nn.Module, decay: float, ramp: bool) -> AveragedModel:
    """A frozen EMA teacher of ``network``; call ``teacher.update_parameters(network)`` after each step."""

    def average(teacher: torch.Tensor, student: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(1.0 - 1.0 / (float(n) + 1.0), decay) if ramp else decay
        return teacher.mul(d).add_(student, alpha=1.0 - d)

    teacher = AveragedModel(network, avg_fn=average, use_buffers=False)
    if not ramp:
        # AveragedModel copies the student on its first update (n_averaged = 0); a constant decay averages from
        # the copy made here instead, so it starts counting at one.
        teacher.n_averaged.fill_(1)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()
