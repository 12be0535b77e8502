"""vA3C, the voxel-level advantage actor-critic core (method.md section 5), read top to bottom.

Every voxel i is an agent with value V(s_i^(t)) and policy pi(. | s_i^(t)) from the network's
value and policy heads. For an episode s^(0) .. s^(T) with per-voxel rewards r^(0) .. r^(T-1):

    R^(T) = V(s^(T))                                  bootstrap, detached
    R^(t) = r^(t) + gamma * K * R^(t+1)               K: reward-map conv (PixelRL), optional
    A^(t) = R^(t) - V(s^(t))                          advantage, detached (PixelRL)
    L_value  =  mean_{t,i} (R_i^(t) - V(s_i^(t)))^2
    L_policy = -mean_{t,i} log pi(a_i^(t) | s^(t)) * A_i^(t) - beta_H * mean_{t,i} H(pi(. | s_i^(t)))

Decisions (config key, default): gamma (``rl.gamma``, 0.95); K a learnable 3D kernel
(``rl.reward_conv``, on; ``rl.reward_conv_size``, 3) initialised to identity; beta_H
(``rl.entropy_coef``, 0.001: with PixelRL's 0.01 a pilot's entropy term was ten times the
advantage term and the policy never left uniform). Both losses average over the episode's steps
as well as over voxels, so their scale does not grow with ``rl.t_max``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RewardConv(nn.Module):
    """RewardConv: the reward-map convolution K of R^(t) = r^(t) + gamma * K * R^(t+1).

    One 1-channel 3D kernel of side ``kernel_size`` (``rl.reward_conv_size``, default 3), no bias,
    initialised to the identity (centre 1, rest 0) so that training starts from plain returns.
    It lets an agent count its neighbours' future rewards. As in PixelRL, its weights get their
    gradient through L_value only (the returns inside the advantage are detached): remember to
    give its parameters to the optimiser.
    """

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"rl.reward_conv_size must be odd, got {kernel_size}")
        weight = torch.zeros(1, 1, kernel_size, kernel_size, kernel_size)
        weight[0, 0, kernel_size // 2, kernel_size // 2, kernel_size // 2] = 1.0
        self.weight = nn.Parameter(weight)

    def forward(self, returns: torch.Tensor) -> torch.Tensor:
        """K * R for R of shape (B, 1, D, H, W), zero padding, same size out."""
        return F.conv3d(returns, self.weight.to(returns.dtype), padding=self.weight.shape[-1] // 2)


def n_step_returns(
    rewards: list[torch.Tensor],
    bootstrap: torch.Tensor,
    gamma: float = 0.95,
    reward_conv: RewardConv | None = None,
) -> list[torch.Tensor]:
    """n_step_returns: R^(t) = r^(t) + gamma * K * R^(t+1), from R^(T) = V(s^(T)) (detached), backwards.

    Args:
        rewards: r^(0) .. r^(T-1), each (B, 1, D, H, W) (no grad).
        bootstrap: V(s^(T)) (B, 1, D, H, W); detached here.
        gamma: discount ``rl.gamma``, default 0.95.
        reward_conv: K, or None for K = identity.
    Returns:
        R^(0) .. R^(T-1); they carry a graph to K's weights only.
    """
    R = bootstrap.detach()
    returns: list[torch.Tensor] = [torch.empty(0)] * len(rewards)
    for t in reversed(range(len(rewards))):
        K_R = reward_conv(R) if reward_conv is not None else R
        R = rewards[t] + gamma * K_R
        returns[t] = R
    return returns


def sample_actions(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """a_i ~ pi(. | s_i) for every voxel: inverse-CDF sampling with ``generator`` (seeded runs).

    Args:
        logits: (B, A, D, H, W) policy logits.
    Returns:
        (B, 1, D, H, W) long actions.
    """
    probs = torch.softmax(logits.detach().float(), dim=1)
    shape = (probs.shape[0], 1, *probs.shape[2:])
    if generator is None:
        u = torch.rand(shape, device=probs.device)
    else:
        u = torch.rand(shape, generator=generator, device=generator.device).to(probs.device)
    # Action = number of cumulative probabilities below u; the clamp guards round-off (cdf[-1] < u).
    actions = (u > probs.cumsum(dim=1)).sum(dim=1, keepdim=True)
    return actions.clamp_max(probs.shape[1] - 1)


def a3c_losses(
    returns: list[torch.Tensor],
    values: list[torch.Tensor],
    logits: list[torch.Tensor],
    actions: list[torch.Tensor],
    entropy_coef: float = 0.001,
) -> dict[str, torch.Tensor]:
    """a3c_losses: L_value and L_policy of one episode (equations in the module docstring).

    Args:
        returns: R^(t), t = 0 .. T-1, each (B, 1, D, H, W).
        values: V(s^(t)), each (B, 1, D, H, W), with graph.
        logits: policy logits, each (B, 3, D, H, W); pass them detached for no policy gradient.
        actions: a^(t), each (B, 1, D, H, W) long.
        entropy_coef: beta_H, ``rl.entropy_coef``, default 0.001.
    Returns:
        {"L_value", "L_policy"} with graph; {"entropy", "advantage"} detached means, for logs.
    """
    R = torch.stack(returns)  # (T, B, 1, D, H, W)
    V = torch.stack(values)
    log_pi_all = torch.log_softmax(torch.stack(logits).float(), dim=2)  # (T, B, 3, D, H, W)
    log_pi = log_pi_all.gather(2, torch.stack(actions))  # log pi(a | s), (T, B, 1, D, H, W)
    H = -(log_pi_all.exp() * log_pi_all).sum(dim=2)  # entropy per voxel

    A = (R - V).detach()  # the advantage sends no gradient into the value head
    L_value = ((R - V) ** 2).mean()
    L_policy = -(log_pi * A).mean() - entropy_coef * H.mean()
    return {"L_value": L_value, "L_policy": L_policy, "entropy": H.mean().detach(), "advantage": A.mean()}
