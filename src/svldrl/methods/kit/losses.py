"""Segmentation losses that methods share, one home each (the kit of :mod:`svldrl.methods`).

- Dice + CE: MONAI's ``DiceCELoss``, built by the base trainer (``loss.*``).
- The Robust T-Loss (Gonzalez-Jimenez et al., MICCAI 2023; public code github.com/Digital-Dermatology/t-loss,
  ``tloss.py``): :func:`t_loss` with its learned tolerance :func:`learned_tolerance`; the ``tloss`` baseline,
  ``tloss_band`` and SVL-DRL's ``rl.seg_loss=tloss`` use it.

The T-Loss replaces Dice + CE by the negative log-likelihood of a multivariate Student-t distribution of the
residual between the foreground probability and the target mask. Its heavy tails bound the pull of voxels with
large residuals (likely label errors), and the tolerance ``nu`` (degrees of freedom) is learned with the network:
small ``nu`` tolerates outliers, large ``nu`` approaches the squared error. With ``D`` voxels per patch,
residuals ``delta_d = p_d - y_d``, the diagonal log-precisions ``lambda_d`` fixed at 1 as in the public code,
``e`` = 1e-8 and the learnable parameter ``nu`` entering as ``nu~ = exp(nu) + e`` (positive whatever ``nu`` is;
the paper's plots report ``nu`` on this log scale)::

    L = -lgamma((nu~ + D) / 2) + lgamma(nu~ / 2) - 1/2 sum_d (lambda_d + e) + D/2 log(pi) + D/2 (nu + e)
        + (nu~ + D) / 2 * log(1 + sum_d exp(lambda_d + e) delta_d^2 / nu~)

(``D/2 (nu + e)`` is the public code's ``D/2 log nu~``). The loss is averaged over the batch and, unlike the
public code, divided by ``D``: a constant factor that leaves the minimiser unchanged and keeps gradients on the
scale of the other methods' losses (gradient clipping, learning rate) for 3D patches of any size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

EPS = 1e-8
LAMBDA = 1.0  # the fixed diagonal log-precision of the public code


def t_loss(pred: torch.Tensor, target: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
    """The T-Loss per voxel (see the module docstring for the formula).

    Args:
        pred: (B, ...) foreground probability.
        target: (B, ...) target mask or soft target, same shape.
        nu: scalar tensor, the learnable (log-scale) tolerance; the degrees of freedom are ``exp(nu) + 1e-8``.

    Returns:
        Scalar: the per-patch negative log-likelihood averaged over the batch, divided by ``D`` (voxels per
        patch).
    """
    # The per-patch terms are O(D) and nearly cancel, so they are summed in float64 (a few scalars only).
    diff = (pred - target).flatten(1)
    delta2 = diff.to(torch.promote_types(diff.dtype, torch.float32)).pow(2)  # bf16 under autocast -> fp32
    d = float(delta2.shape[1])
    nu = nu.double()
    nu_t = torch.exp(nu) + EPS
    lam = LAMBDA + EPS
    log_norm = (
        -torch.lgamma((nu_t + d) / 2)
        + torch.lgamma(nu_t / 2)
        - 0.5 * d * lam
        + d / 2 * math.log(math.pi)
        + d / 2 * (nu + EPS)
    )
    data = (nu_t + d) / 2 * torch.log1p(math.exp(lam) * delta2.sum(1, dtype=torch.float64) / nu_t)
    return ((log_norm + data).mean() / d).to(pred.dtype)


def learned_tolerance(
    network: nn.Module, init: float, device: torch.device
) -> tuple[nn.Parameter, nn.Module]:
    """T-Loss's learnable tolerance ``nu`` (from ``init``), and one module holding it with ``network``: what the
    base ``optimise()`` averages across ranks and clips (used by ``tloss``, ``tloss_band`` and SVL-DRL's
    ``rl.seg_loss=tloss``)."""
    nu = nn.Parameter(torch.tensor(init, device=device))
    holder = nn.ModuleDict({"net": network})
    holder.register_parameter("nu", nu)
    return nu, holder
