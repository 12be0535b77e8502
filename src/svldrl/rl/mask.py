"""Mask agents with a trusted reference (ours, after PixelDRL-MG; docs/method.md section 14), read top to bottom.

Every published pixel- or voxel-level RL method for segmentation acts on the output and rewards each agent for
moving its own output towards a reference (PixelDRL-MG, IteR-MRL, BS-IRIS); with noisy masks the reference must
be one the noise did not shape: the masks of the trusted cases. Here every voxel i is an agent acting on the mask
being corrected, seeing the image beside it:

    s^(0) = (x, q^(0)),  q^(0) the given mask
    a_i^(t) in {keep, foreground, background}:   q_i^(t+1) = q_i^(t), 1, 0
    r_i^(t) = (q_i^(t) - G_i)^2 - (q_i^(t+1) - G_i)^2             per voxel, G the trusted mask (PixelDRL-MG)
    R^(T) = 0,  R^(t) = r^(t) + gamma R^(t+1)                      no bootstrap from an untrained value head
    A^(t) = R^(t) - V(s^(t))                                       detached
    L = sum_t [ -mean_i log pi(a_i^(t) | s^(t)) A_i^(t) + c_V mean_i (R_i^(t) - V(s_i^(t)))^2
                - beta_H mean_i H(pi(. | s_i^(t))) ]

The lessons of PixelRL's reference code (rfuruta/pixelRL), taken as they are: per-voxel rewards (one global
reward does not train it), returns from a terminal 0 over ``t_max`` 5 steps with gamma 0.95, losses summed over
the steps, entropy weight 0.01, value weight 0.5, and the RL loss alone trains the policy and value heads.
Tensors only: the caller hands in the network (a :class:`~svldrl.nets.SegRLNet` with ``aux_channels = 1``), the
patches, their masks and a seeded generator.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.data.utils import compute_importance_map
from torch import nn

from svldrl.rl.a3c import a3c_losses, n_step_returns, sample_actions

#: What each action does to a voxel of the mask.
MASK_ACTIONS = ("keep", "foreground", "background")
KEEP, FOREGROUND, BACKGROUND = 0, 1, 2


@dataclass(frozen=True)
class MaskAgentSettings:
    """PixelRL's recipe (module docstring); ``t_max`` steps per episode."""

    t_max: int = 5
    gamma: float = 0.95
    entropy_coef: float = 0.01
    value_coef: float = 0.5


def mask_step(q: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """q^(t+1): each voxel kept, set to foreground or set to background by its action."""
    return torch.where(actions == FOREGROUND, 1.0, torch.where(actions == BACKGROUND, 0.0, q)).to(q.dtype)


def mask_reward(q: torch.Tensor, q_next: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """r^(t) = (q^(t) - G)^2 - (q^(t+1) - G)^2 per voxel: the move of the voxel's own mask value towards G."""
    return (q - reference) ** 2 - (q_next - reference) ** 2


def mask_episode(
    net: nn.Module,
    x: torch.Tensor,
    q0: torch.Tensor,
    reference: torch.Tensor,
    settings: MaskAgentSettings = MaskAgentSettings(),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One episode of the mask agents on a batch of trusted patches; returns the loss and float logs.

    Args:
        net: network with value and policy heads that reads the mask as its late-fused ``aux`` input.
        x: patches (B, 1, D, H, W).
        q0: their given masks (B, 1, D, H, W) in [0, 1].
        reference: their trusted masks G, same shape.
    """
    feats = net.trunk(x, heads=("value", "policy"))  # the image's one pass; each step runs the q tails only
    q = q0.to(x.dtype)
    values, logits, actions, rewards = [], [], [], []
    for _ in range(settings.t_max):
        out = net.tail(feats, ("value", "policy"), aux=q)
        a = sample_actions(out["policy"], generator)
        q_next = mask_step(q, a)
        rewards.append(mask_reward(q, q_next, reference))
        values.append(out["value"])
        logits.append(out["policy"])
        actions.append(a)
        q = q_next
    returns = n_step_returns(rewards, torch.zeros_like(rewards[-1]), settings.gamma)  # R^(T) = 0
    losses = a3c_losses(returns, values, logits, actions, settings.entropy_coef)
    # a3c_losses averages over the steps; PixelRL sums them
    loss = settings.t_max * (losses["L_policy"] + settings.value_coef * losses["L_value"])
    moved = torch.stack([(a != KEEP).float().mean() for a in actions]).mean()
    logs = {
        "losses/policy": float(losses["L_policy"].detach()),
        "losses/value": float(losses["L_value"].detach()),
        "charts/reward": float(torch.stack(rewards).sum(0).mean()),
        "charts/entropy": float(losses["entropy"]),
        "charts/moved": float(moved),
    }
    return loss, logs


@torch.no_grad()
def greedy_mask(
    net: nn.Module, x: torch.Tensor, q0: torch.Tensor, steps: int, roi: Sequence[int] | None = None
) -> torch.Tensor:
    """The mask after ``steps`` greedy steps (argmax action per voxel) from ``q0``: how trained agents correct
    a given mask. ``roi``: by windows of that size (the size the agents trained on; volumes at least that large),
    else in one pass over ``x`` as it is (a size the network divides).

    Hand-written rather than MONAI's ``sliding_window_inference``: that runs the whole network on every window at
    every step, where the image's features (the trunk) are the same at each step and only the mask's tail
    changes, so here each window's trunk runs once. Windows overlap by half and their logits are blended with
    MONAI's Gaussian importance map, as at test time.
    """
    q = q0.to(x.dtype)
    if roi is None:
        feats = net.trunk(x, heads=("policy",))
        for _ in range(steps):
            q = mask_step(q, net.tail(feats, ("policy",), aux=q)["policy"].argmax(dim=1, keepdim=True))
        return q
    shape = x.shape[2:]
    starts = [sorted({*range(0, s - r + 1, max(r // 2, 1)), s - r}) for s, r in zip(shape, roi, strict=True)]
    windows = [
        (slice(None), slice(None), *(slice(a, a + r) for a, r in zip(corner, roi, strict=True)))
        for corner in itertools.product(*starts)
    ]
    feats = [net.trunk(x[w], heads=("policy",)) for w in windows]
    importance = compute_importance_map(tuple(roi), mode="gaussian", device=x.device).to(x.dtype)
    norm = torch.zeros_like(x)
    for w in windows:
        norm[w] += importance
    for _ in range(steps):
        logits = torch.zeros((x.shape[0], len(MASK_ACTIONS), *shape), dtype=x.dtype, device=x.device)
        for w, f in zip(windows, feats, strict=True):
            logits[w] += net.tail(f, ("policy",), aux=q[w])["policy"].to(x.dtype) * importance
        q = mask_step(q, (logits / norm).argmax(dim=1, keepdim=True))
    return q
