"""Action spaces: what the voxel agents act on, one small class each (method.md sections 3 and 9).

An action space holds what differs between the paper's agents and ours, and nothing of the vA3C core
(:mod:`svldrl.rl.a3c`) they share:

- how a step changes the state, i.e. the episode it runs (:mod:`svldrl.rl.episode`, each read top to bottom);
- what the network sees beside the image (``aux_channels``), whether the episode needs the EMA teacher
  (``needs_teacher``), whether stage 3's last state becomes the case's training target (``keeps_targets``),
  whether the greedy policy can refine a test volume (``refines_images``, ``infer.refine_steps``);
- what an episode costs, in plain training steps (:meth:`ActionSpace.episode_cost`).

Registered in :data:`ACTION_SPACES` by the value of ``rl.action_space``:

- :class:`IntensityActions` (the paper's, ``intensity``): keep / enhance / weaken the image;
- :class:`LabelActions` (experimental, ``label``): keep / raise / lower the soft training target q.

A new action space is one class here and one line in :data:`ACTION_SPACES` (and its name among the choices of
``rl.action_space`` in ``settings.py``). Tensors only, as the rest of :mod:`svldrl.rl`: the trainer hands in its
networks, the batch's tensors, its generator and losses.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from svldrl.rl.a3c import RewardConv
from svldrl.rl.episode import EpisodeResult, SegLoss, intensity_episode, label_episode
from svldrl.rl.reward import Reward, RewardReference, RunningStd
from svldrl.settings import RL


class ActionSpace:
    """What the agents act on; see the module docstring.

    Built from the ``rl`` config section and the reward of an image step with its reference (``rl.reward``,
    ``rl.reward_target``: :data:`~svldrl.rl.reward.REWARDS`, :data:`~svldrl.rl.reward.REWARD_TARGETS`); an
    action space with a reward of its own does not use them.
    """

    name: ClassVar[str] = ""
    #: channels the value and policy paths see beside the image (late-fused ``aux`` input of the network)
    aux_channels: ClassVar[int] = 0
    #: stage 3's last state is the case's new training target, kept across epochs and in checkpoints
    keeps_targets: ClassVar[bool] = False
    #: the greedy policy refines a test volume before it is segmented (``infer.refine_steps``, ``--save-refined``)
    refines_images: ClassVar[bool] = False

    def __init__(self, rl: RL, reward: Reward, reference: RewardReference) -> None:
        self.rl = rl
        self.reward = reward
        self.reference = reference

    @property
    def needs_teacher(self) -> bool:
        """Whether :meth:`episode` needs the trainer's EMA teacher of the segmentation."""
        return self.reference.needs_teacher

    def episode(
        self,
        net: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        given: torch.Tensor,
        teacher: nn.Module | None,
        stage: int,
        generator: torch.Generator | None,
        seg_loss_fn: SegLoss,
        reward_norm: RunningStd | None = None,
        reward_conv: RewardConv | None = None,
    ) -> EpisodeResult:
        """One episode on a batch of patches (stage 2 or 3).

        Args:
            net: the three-head network (built with :attr:`aux_channels`), in train mode.
            x: patches (B, C, D, H, W); y: their training targets (B, 1, D, H, W); given: their given masks.
            teacher: the EMA teacher of the segmentation, or None where nothing needs it.
            stage, generator, seg_loss_fn, reward_norm, reward_conv: as in
                :func:`~svldrl.rl.episode.intensity_episode`.
        """
        raise NotImplementedError

    @classmethod
    def episode_cost(cls, t_max: int, heads: str) -> float:
        """An episode's cost in plain training steps, for time estimates (``nets.heads``: decoders | light)."""
        raise NotImplementedError


class IntensityActions(ActionSpace):
    """keep / enhance / weaken the image, x_i <- clip(x_i (1 +- s eps_i), 0, 1) (**paper**, ``intensity``; method.md
    section 3): :func:`~svldrl.rl.episode.intensity_episode`, rewarded by the reward ``rl.reward`` names against
    the reference ``rl.reward_target`` names. The greedy policy can refine a test volume."""

    name = "intensity"
    refines_images = True

    def episode(
        self,
        net: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        given: torch.Tensor,
        teacher: nn.Module | None,
        stage: int,
        generator: torch.Generator | None,
        seg_loss_fn: SegLoss,
        reward_norm: RunningStd | None = None,
        reward_conv: RewardConv | None = None,
    ) -> EpisodeResult:
        y_r = self.reference(y, x, teacher)  # what r^(t) measures agreement with
        return intensity_episode(
            net, x, y, self.rl, stage, generator, seg_loss_fn, reward_norm, reward_conv, y_r, self.reward
        )

    @classmethod
    def episode_cost(cls, t_max: int, heads: str) -> float:
        """t_max + 1 network passes; with three decoders each costs ~1.5 plain passes (phantom_cpu sizing: ~6x a
        plain step at t_max 3), with light heads ~1.1."""
        return (t_max + 1) * (1.5 if heads == "decoders" else 1.1)


class LabelActions(ActionSpace):
    """keep / raise / lower the soft training target q by ``rl.label_step`` (**experimental**, ours, ``label``;
    method.md section 9): :func:`~svldrl.rl.episode.label_episode`. The state is the image plus q (one aux
    channel); the refined targets persist per case (stage 3).

    Its reward is its own, :func:`~svldrl.rl.reward.label_reward` (agreement with the EMA teacher, continuity and
    prior of q, optionally the image's region fit): it scores a step of q, not of the image's segmentation, so
    the reward and reference of image steps (``rl.reward``, ``rl.reward_target``) do not apply to it. It always
    needs the teacher.
    """

    name = "label"
    aux_channels = 1
    keeps_targets = True

    @property
    def needs_teacher(self) -> bool:
        return True

    def episode(
        self,
        net: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        given: torch.Tensor,
        teacher: nn.Module | None,
        stage: int,
        generator: torch.Generator | None,
        seg_loss_fn: SegLoss,
        reward_norm: RunningStd | None = None,
        reward_conv: RewardConv | None = None,
    ) -> EpisodeResult:
        if teacher is None:
            raise ValueError("label actions need the EMA teacher")
        with torch.no_grad():
            teacher_p = torch.softmax(teacher(x, heads=("seg",))["seg"], 1)[
                :, 1:2
            ]  # its foreground probability
        return label_episode(
            net, x, y, given, teacher_p, self.rl, stage, generator, seg_loss_fn, reward_norm, reward_conv
        )

    @classmethod
    def episode_cost(cls, t_max: int, heads: str) -> float:
        """The encoder and decoders run once, then only the heads' tails per step."""
        return 1.5 + 0.2 * t_max


#: ``rl.action_space`` value -> its action space (its choices in settings.py list the same names).
ACTION_SPACES: dict[str, type[ActionSpace]] = {c.name: c for c in (IntensityActions, LabelActions)}
