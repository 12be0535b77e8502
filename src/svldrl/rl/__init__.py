"""The RL core of SVL-DRL on tensors: environment, action spaces, rewards, vA3C losses, stages, episodes."""

from __future__ import annotations

from svldrl.rl.a3c import RewardConv, a3c_losses, n_step_returns, sample_actions
from svldrl.rl.action_spaces import ACTION_SPACES, ActionSpace, IntensityActions, LabelActions
from svldrl.rl.env import ENHANCE, KEEP, LOWER, RAISE, WEAKEN, intensity_step, label_step, sample_eps
from svldrl.rl.episode import EpisodeResult, greedy_refine, intensity_episode, label_episode
from svldrl.rl.reward import (
    REWARD_TARGETS,
    REWARDS,
    GivenReference,
    PaperReward,
    Reward,
    RewardReference,
    RunningStd,
    TeacherReference,
    VoxelReward,
    count_components,
    foreground_prob,
    intensity_reward,
    label_reward,
    local_tv,
    paper_continuity,
    paper_reward,
    region_energy_slope,
    soft_dice,
)
from svldrl.rl.stages import stage_at, stage_weights

__all__ = [
    "ACTION_SPACES",
    "ENHANCE",
    "KEEP",
    "LOWER",
    "RAISE",
    "WEAKEN",
    "REWARDS",
    "REWARD_TARGETS",
    "ActionSpace",
    "EpisodeResult",
    "GivenReference",
    "IntensityActions",
    "LabelActions",
    "PaperReward",
    "Reward",
    "RewardConv",
    "RewardReference",
    "RunningStd",
    "TeacherReference",
    "VoxelReward",
    "a3c_losses",
    "count_components",
    "foreground_prob",
    "greedy_refine",
    "intensity_episode",
    "intensity_reward",
    "intensity_step",
    "label_episode",
    "label_reward",
    "label_step",
    "local_tv",
    "paper_continuity",
    "paper_reward",
    "region_energy_slope",
    "n_step_returns",
    "sample_actions",
    "sample_eps",
    "soft_dice",
    "stage_at",
    "stage_weights",
]
