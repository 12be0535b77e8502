"""The vA3C core can learn: problems whose best action is known, solved by the real network heads, sampler,
returns and losses (svldrl.rl) within a few hundred updates on the CPU.

These separate "the problem gives the agents no signal" from "the code cannot learn": if SVL-DRL's policy
stays near uniform on a segmentation task, it is not because the actor-critic core is broken.
"""

from __future__ import annotations

import torch

from svldrl.nets.factory import build_network
from svldrl.rl.a3c import RewardConv, a3c_losses, n_step_returns, sample_actions
from svldrl.rl.env import ENHANCE, KEEP, WEAKEN, intensity_step, sample_eps
from svldrl.settings import Nets

P = 12  # patch side


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network(Nets(features=[4, 8], heads="light"), rl_heads=True)


def _sphere_images(batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with a bright sphere at a random place (the region the agents must tell apart), and its mask."""
    grid = torch.stack(torch.meshgrid(*(torch.arange(P, dtype=torch.float32),) * 3, indexing="ij"))
    centres = 4 + 4 * torch.rand(batch, 3, generator=gen)
    inside = (((grid[None] - centres[:, :, None, None, None]) ** 2).sum(1, keepdim=True) <= 16).float()
    x = 0.3 + 0.4 * inside + 0.05 * torch.rand(batch, 1, P, P, P, generator=gen)
    return x, inside


def _train(reward_fn, steps: int, t_max: int, gamma: float, gen: torch.Generator):
    """vA3C updates on fresh patches: sample a^(t) ~ pi, step the image, reward, returns, losses."""
    net = _net()
    conv = RewardConv(3)
    opt = torch.optim.Adam(list(net.parameters()) + list(conv.parameters()), lr=3e-3)
    for _ in range(steps):
        x, inside = _sphere_images(2, gen)
        values, logits, actions, rewards = [], [], [], []
        for _t in range(t_max):
            out = net(x, heads=("value", "policy"))
            a = sample_actions(out["policy"], gen)
            x_next = intensity_step(x, a, sample_eps(a.shape, gen), 0.3)
            rewards.append(reward_fn(a, x, x_next, inside))
            values.append(out["value"])
            logits.append(out["policy"])
            actions.append(a)
            x = x_next
        with torch.no_grad():
            bootstrap = net(x, heads=("value",))["value"]
        returns = n_step_returns(rewards, bootstrap, gamma, conv)
        losses = a3c_losses(returns, values, logits, actions, entropy_coef=0.001)
        opt.zero_grad()
        (0.5 * losses["L_value"] + losses["L_policy"]).backward()
        opt.step()
    return net


def test_the_policy_learns_an_action_that_always_pays() -> None:
    """Enhancing pays 1, keeping 0, weakening -1, everywhere: the policy must come to enhance nearly
    everywhere, and the value must predict the return (gamma 0: the expected reward under the policy)."""
    gen = torch.Generator().manual_seed(1)
    pay = {KEEP: 0.0, ENHANCE: 1.0, WEAKEN: -1.0}

    def reward(a, x, x_next, inside):
        r = torch.zeros_like(x)
        for action, value in pay.items():
            r[a == action] = value
        return r

    net = _train(reward, steps=200, t_max=1, gamma=0.0, gen=gen)
    x, _ = _sphere_images(2, gen)
    with torch.no_grad():
        out = net(x, heads=("value", "policy"))
    pi = torch.softmax(out["policy"], 1)
    assert (pi.argmax(1) == ENHANCE).float().mean() > 0.95
    expected = (pi[:, ENHANCE] - pi[:, WEAKEN]).unsqueeze(1)  # E[r] under the current policy
    assert (out["value"] - expected).abs().mean() < 0.1


def test_the_policy_learns_a_map_that_differs_by_region() -> None:
    """Over a two-step episode the reward is the intensity change towards a target: up inside the sphere,
    down outside (r_i = +-(x_i' - x_i) / 0.1). The policy must learn to enhance inside and weaken outside,
    which it can only do by reading the image."""
    gen = torch.Generator().manual_seed(2)

    def reward(a, x, x_next, inside):
        sign = 2 * inside - 1
        return sign * (x_next - x) / 0.1

    net = _train(reward, steps=250, t_max=2, gamma=0.9, gen=gen)
    x, inside = _sphere_images(4, gen)
    with torch.no_grad():
        best = net(x, heads=("policy",))["policy"].argmax(1, keepdim=True)
    want = torch.where(inside > 0, ENHANCE, WEAKEN)
    assert (best == want).float().mean() > 0.9
    # both regions are learned, not only the larger background
    assert (best[inside > 0] == ENHANCE).float().mean() > 0.8
