"""One SVL-DRL episode on a batch of patches: states, actions, rewards, returns, one loss.

Tensors only: the trainer hands in the network, the patches, the ``rl`` config section, the
stage (2 or 3; stage 1 is plain segmentation, done by the trainer), a seeded
``torch.Generator``, the segmentation loss and the optional reward normaliser / reward conv.
It gets back one scalar loss to call ``backward()`` on once, and float logs.

Intensity actions (the paper, ``rl.action_space = intensity``), :func:`intensity_episode`:

    s^(0) = x0;  for t = 0 .. T-1:  a^(t) ~ pi(. | s^(t)),  s^(t+1) = step(s^(t), a^(t), eps^(t))
    r^(t) = reward(f^(t), f^(t+1), y) (f: foreground probability of each state's segmentation, detached;
            the reward ``rl.reward`` names in ``rl/reward.py: REWARDS``)

One network pass per state (T + 1 in all, ``T = rl.t_max``, default 3): pass t gives V(s^(t)),
pi(. | s^(t)) and f^(t); the last pass gives the bootstrap V(s^(T)) and the segmentation of the
refined state. Stage 2 samples actions from the (untrained) policy but gives it no gradient
(**decision**, method.md 6). The stage-weighted loss (method.md 6):

    stage 2: L = (1 - lam) L_seg + lam L_value
    stage 3: L = (1 - alpha - beta) L_seg + alpha L_value + beta L_policy

with L_seg = seg_loss_fn(seg(s^(0)), y), averaged with seg_loss_fn(seg(s^(T)), y) when
``rl.seg_on_refined`` (default on).

Label actions (**extension**, method.md 9, ``rl.action_space = label``), :func:`label_episode`:
the agents act on the soft target q; the image's encoder + decoder pass runs once, and each
step runs only the network's q-dependent value / policy tail (see ``SegRLNet.tail``).

Which of the two a trainer runs, and what it must provide for it, is the action space's
(``rl/action_spaces.py: ACTION_SPACES``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from svldrl.rl.a3c import RewardConv, a3c_losses, n_step_returns, sample_actions
from svldrl.rl.env import ACTION_NAMES, intensity_step, label_step, sample_eps
from svldrl.rl.reward import REWARDS, Reward, RunningStd, foreground_prob, label_reward, region_energy_slope
from svldrl.rl.stages import stage_weights
from svldrl.settings import RL

ALL_HEADS = ("seg", "value", "policy")
SegLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EpisodeResult:
    """What an episode returns.

    Attributes:
        loss: the stage-weighted scalar loss (call ``backward()`` once).
        logs: float scalars named CleanRL style (``losses/value``, ``charts/reward`` ...).
        final: the last state, detached: x^(T) (intensity) or q^(T) (label).
        actions_last: a^(T-1), (B, 1, D, H, W) long.
    """

    loss: torch.Tensor
    logs: dict[str, float]
    final: torch.Tensor
    actions_last: torch.Tensor


def _check_stage(stage: int) -> None:
    if stage not in (2, 3):
        raise ValueError(f"an RL episode runs in stage 2 or 3 (stage 1 is plain segmentation), got {stage}")


def _logs(scalars: dict[str, torch.Tensor]) -> dict[str, float]:
    """All log scalars to floats with one device sync."""
    names = list(scalars)
    values = torch.stack([scalars[n].detach().float().reshape(()) for n in names]).tolist()
    return dict(zip(names, values, strict=True))


def _episode_logs(
    L_seg: torch.Tensor,
    losses: dict[str, torch.Tensor],
    raw_rewards: torch.Tensor,
    terms: list[dict[str, torch.Tensor]],
    actions: list[torch.Tensor],
    reward_norm: RunningStd | None,
) -> dict[str, float]:
    a = torch.stack(actions)
    scalars = {
        "losses/value": losses["L_value"],
        "losses/policy": losses["L_policy"],
        "losses/dice": L_seg,
        "charts/reward": raw_rewards.mean(),
        "charts/reward_std": reward_norm.std if reward_norm is not None else torch.ones(()),
        "charts/advantage": losses["advantage"],
        "charts/entropy": losses["entropy"],
    }
    device = raw_rewards.device
    for k, name in enumerate(ACTION_NAMES):
        scalars[f"charts/action_frac/{name}"] = (a == k).float().mean()
    for name in terms[0]:
        scalars[f"charts/reward_terms/{name}"] = torch.stack([step[name] for step in terms]).mean()
    return _logs({k: v.to(device) for k, v in scalars.items()})


def intensity_episode(
    net: nn.Module,
    x0: torch.Tensor,
    y: torch.Tensor,
    rl: RL,
    stage: int,
    generator: torch.Generator | None,
    seg_loss_fn: SegLoss,
    reward_norm: RunningStd | None = None,
    reward_conv: RewardConv | None = None,
    reward_target: torch.Tensor | None = None,
    reward: Reward | None = None,
) -> EpisodeResult:
    """intensity_episode: one episode of intensity actions (method.md sections 3 to 6).

    Args:
        net: a :class:`~svldrl.nets.SegRLNet` (``aux_channels = 0``), in train mode.
        x0: patches (B, C, D, H, W), intensities in [0, 1].
        y: training target (B, 1, D, H, W) in [0, 1] (the given mask, or the updated one).
        rl: the ``rl`` config section (``t_max``, ``action_scale``, ``gamma``, ``entropy_coef``,
            ``w_dice``, ``w_vox``, ``w_cont``, ``w_cc``, ``lam``, ``alpha``, ``beta``, ``seg_on_refined``).
        stage: 2 (transition: policy sampled, not trained) or 3 (full RL).
        generator: seeded generator for eps and the action samples (ideally on x0's device).
        seg_loss_fn: ``(logits, y) -> scalar``, e.g. Dice + CE with one-hot y.
        reward_norm: divides rewards by their running std (``rl.reward_norm``), or None.
        reward_conv: K of the returns (``rl.reward_conv``), or None.
        reward_target: the mask the rewards measure agreement with (``rl.reward_target = teacher``: the EMA
            teacher's confident labels); None: ``y``, the training target (the paper).
        reward: r^(t) of a step, a :class:`~svldrl.rl.reward.Reward`; None: the one ``rl.reward`` names in
            :data:`~svldrl.rl.reward.REWARDS` (``voxel``: ours, ``paper``: the paper's).

    Cost: T + 1 network passes (no redundant encoder pass), rewards under no_grad, one sync.
    """
    _check_stage(stage)
    T = int(rl.t_max)
    w_seg, w_value, w_policy = stage_weights(stage, rl.lam, rl.alpha, rl.beta)
    train_policy = stage == 3

    y_r = y if reward_target is None else reward_target  # what the rewards measure agreement with
    reward = reward if reward is not None else REWARDS[rl.reward](rl)
    values, logits, actions, rewards, terms = [], [], [], [], []
    x = x0
    out = net(x, heads=ALL_HEADS)  # s^(0)
    seg_first = out["seg"]
    for t in range(T):
        last = t == T - 1
        logits_t = out["policy"] if train_policy else out["policy"].detach()
        a = sample_actions(logits_t, generator)  # a^(t) ~ pi(. | s^(t))
        eps = sample_eps(a.shape, generator, x.device)
        x_next = intensity_step(x, a, eps, rl.action_scale)  # s^(t+1)

        # The pass on s^(t+1): its f gives r^(t); the last one (no policy needed) also gives the
        # bootstrap V(s^(T)) and seg(s^(T)), which needs a graph only for rl.seg_on_refined.
        need_graph = torch.is_grad_enabled() and (not last or rl.seg_on_refined)
        with torch.set_grad_enabled(need_graph):
            out_next = net(x_next, heads=("seg", "value") if last else ALL_HEADS)

        f_t, f_next = foreground_prob(out["seg"].detach()), foreground_prob(out_next["seg"].detach())
        r, r_terms = reward(f_t, f_next, y_r)  # r^(t)
        values.append(out["value"])
        logits.append(logits_t)
        actions.append(a)
        rewards.append(r)
        terms.append(r_terms)
        x, out = x_next, out_next

    raw_rewards = torch.stack(rewards)  # (T, B, 1, D, H, W)
    scaled = reward_norm(raw_rewards) if reward_norm is not None else raw_rewards
    returns = n_step_returns(list(scaled), out["value"], rl.gamma, reward_conv)  # R^(T) = V(s^(T))
    losses = a3c_losses(returns, values, logits, actions, rl.entropy_coef)

    L_seg = seg_loss_fn(seg_first, y)
    if rl.seg_on_refined:
        L_seg = 0.5 * (L_seg + seg_loss_fn(out["seg"], y))
    loss = w_seg * L_seg + w_value * losses["L_value"] + w_policy * losses["L_policy"]

    logs = _episode_logs(L_seg, losses, raw_rewards, terms, actions, reward_norm)
    return EpisodeResult(loss=loss, logs=logs, final=x.detach(), actions_last=actions[-1])


def label_episode(
    net: nn.Module,
    x: torch.Tensor,
    q0: torch.Tensor,
    given: torch.Tensor,
    teacher_p: torch.Tensor,
    rl: RL,
    stage: int,
    generator: torch.Generator | None,
    seg_loss_fn: SegLoss,
    reward_norm: RunningStd | None = None,
    reward_conv: RewardConv | None = None,
) -> EpisodeResult:
    """label_episode: one episode of label actions on the soft target q (method.md section 9).

    State = image + current soft target q^(t) (q^(0) = ``q0``: the given mask, or the case's
    target refined in earlier epochs). Actions keep / raise / lower q by ``rl.label_step``
    (default 0.25); reward :func:`~svldrl.rl.reward.label_reward` (teacher agreement, continuity,
    prior towards ``given``, and with ``rl.w_region`` > 0 the image's region fit); returns and losses as in
    :func:`intensity_episode`.

    Cost: the image's encoder and all decoders run ONCE (``net.trunk``); each step runs only the
    value / policy tails with aux = q^(t) (a residual conv block + 1x1x1 conv each), and the
    bootstrap V(s^(T)) one more tail under no_grad.
    **decision**: the segmentation loss trains seg(x) on q^(T) in stage 3 and on q^(0) in stage 2
    (where the policy is still untrained), detached (a soft target; ``seg_loss_fn`` must accept a
    (B, 1, ...) foreground probability).
    ``rl.seg_on_refined`` does not apply: the image is not changed.

    Args:
        net: a :class:`~svldrl.nets.SegRLNet` built with ``aux_channels = 1``.
        x: patches (B, C, D, H, W).
        q0: initial soft target (B, 1, D, H, W) in [0, 1].
        given: the given (noisy) mask (B, 1, D, H, W), the prior's anchor.
        teacher_p: the EMA teacher's foreground probability (B, 1, D, H, W).
        rl: the ``rl`` config section (``t_max``, ``label_step``, ``gamma``, ``entropy_coef``,
            ``w_teacher``, ``w_cont``, ``w_prior``, ``lam``, ``alpha``, ``beta``).
        stage, generator, seg_loss_fn, reward_norm, reward_conv: as in :func:`intensity_episode`.
    """
    _check_stage(stage)
    if getattr(net, "aux_channels", 0) != 1:
        raise ValueError("label actions need a network built with aux_channels=1 (the soft target q)")
    T = int(rl.t_max)
    w_seg, w_value, w_policy = stage_weights(stage, rl.lam, rl.alpha, rl.beta)
    train_policy = stage == 3

    feats = net.trunk(x, heads=ALL_HEADS)  # the image's one encoder + decoder pass
    seg_logits = net.tail(feats, ("seg",))["seg"]

    values, logits, actions, rewards, terms = [], [], [], [], []
    q = q0.to(x.dtype)
    # once per episode: it depends on the image and the given mask only. Class means from the given mask, not
    # from q: with q the agents could define their own foreground (a few raised background voxels) and feed on it
    w_region = float(rl.w_region)
    region_slope = region_energy_slope(x, given) if w_region > 0 else None
    for _ in range(T):
        out = net.tail(feats, ("value", "policy"), aux=q)  # V(s^(t)), pi(. | s^(t)) with s = (x, q^(t))
        logits_t = out["policy"] if train_policy else out["policy"].detach()
        a = sample_actions(logits_t, generator)
        q_next = label_step(q, a, rl.label_step)
        r, r_terms = label_reward(
            q,
            q_next,
            teacher_p,
            given,
            rl.w_teacher,
            rl.w_cont,
            rl.w_prior,
            region_slope=region_slope,
            w_region=w_region,
        )
        values.append(out["value"])
        logits.append(logits_t)
        actions.append(a)
        rewards.append(r)
        terms.append(r_terms)
        q = q_next

    with torch.no_grad():
        bootstrap = net.tail(feats, ("value",), aux=q)["value"]  # V(s^(T))
    raw_rewards = torch.stack(rewards)
    scaled = reward_norm(raw_rewards) if reward_norm is not None else raw_rewards
    returns = n_step_returns(list(scaled), bootstrap, rl.gamma, reward_conv)
    losses = a3c_losses(returns, values, logits, actions, rl.entropy_coef)

    # Stage 3: the segmentation learns from the refined target. Stage 2: the policy is untrained, so
    # q^(T) is a random walk; the segmentation keeps learning from q^(0).
    L_seg = seg_loss_fn(seg_logits, (q if train_policy else q0).detach())
    loss = w_seg * L_seg + w_value * losses["L_value"] + w_policy * losses["L_policy"]

    logs = _episode_logs(L_seg, losses, raw_rewards, terms, actions, reward_norm)
    return EpisodeResult(loss=loss, logs=logs, final=q.detach(), actions_last=actions[-1])


@torch.no_grad()
def greedy_refine(
    net: nn.Module,
    x: torch.Tensor,
    steps: int,
    action_scale: float = 0.3,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """greedy_refine: ``infer.refine_steps`` (default 0) greedy intensity steps for inference.

    a = argmax pi(. | x) per voxel, ``steps`` times, no grad; then the caller segments the refined
    volume (per sliding window: ``lambda w: net.segment(greedy_refine(net, w, k)[0])``).
    **decision**: without a generator, eps is its mean 0.5, so predictions are deterministic.

    Returns:
        the refined x and the last actions (all KEEP when ``steps = 0``).
    """
    actions = torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=torch.long, device=x.device)
    for _ in range(steps):
        actions = net(x, heads=("policy",))["policy"].argmax(dim=1, keepdim=True)
        if generator is None:
            eps = torch.full(actions.shape, 0.5, device=x.device, dtype=x.dtype)
        else:
            eps = sample_eps(actions.shape, generator, x.device)
        x = intensity_step(x, actions, eps, action_scale)
    return x, actions
