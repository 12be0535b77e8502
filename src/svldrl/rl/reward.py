"""Rewards (method.md sections 4 and 9): the per-voxel reward (default), the paper's global reward, the
label-space reward, and the running reward scale.

Rewards need no gradient: every reward function runs under ``torch.no_grad``. Each returns the
reward map ``r`` (B, 1, D, H, W) and ``terms``: the mean of each term's signed, weighted
contribution as a 0-dim tensor (so ``sum(terms.values()) == r.mean()``). The terms stay tensors
so that an episode can log them without a device sync per step; call ``float()`` to read one.

The rewards of an image step (intensity actions) are small classes picked by name, one line each in
:data:`REWARDS` (``rl.reward``): :class:`VoxelReward` (ours, the default) and :class:`PaperReward` (the
paper's, as its summary writes it). What they measure agreement with is picked the same way in
:data:`REWARD_TARGETS` (``rl.reward_target``): :class:`GivenReference` (the paper's) and
:class:`TeacherReference` (ours). The label actions' reward, :func:`label_reward`, is the label action space's
own (:class:`~svldrl.rl.action_spaces.LabelActions`): it scores a step of the soft target q against the EMA
teacher and the given mask, not a step of the image's segmentation, so it cannot stand in for these two.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from svldrl.settings import RL

try:  # connected-components-3d is the fast labeller; scipy is the fallback (method.md section 4)
    import cc3d
except ImportError:  # pragma: no cover - cc3d is a dependency
    cc3d = None


def foreground_prob(seg_logits: torch.Tensor) -> torch.Tensor:
    """Foreground probability f (B, 1, ...) = 1 - softmax(logits)[background]."""
    return 1 - torch.softmax(seg_logits.float(), dim=1)[:, :1]


def soft_dice(f: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Soft Dice per sample, (B,): 2 sum(f y) / (sum f + sum y)."""
    dims = tuple(range(1, f.ndim))
    return (2 * (f * y).sum(dims) + eps) / (f.sum(dims) + y.sum(dims) + eps)


def local_tv(f: torch.Tensor) -> torch.Tensor:
    """local_tv: c_i(f) = sum over the 3 axes of |f_{i+e} - f_i| (forward differences; 0 past the edge)."""
    c = torch.zeros_like(f)
    pads = {2: (0, 0, 0, 0, 0, 1), 3: (0, 0, 0, 1), 4: (0, 1)}  # F.pad order: last axis first
    for dim, pad in pads.items():
        c = c + F.pad(torch.diff(f, dim=dim).abs(), pad)
    return c


def count_components(mask: torch.Tensor) -> torch.Tensor:
    """count_components: number of 26-connected foreground components of each 3D mask.

    Args:
        mask: (..., D, H, W), foreground where > 0.5 (probabilities are thresholded).
    Returns:
        long tensor of the leading shape, on ``mask``'s device (this copies to the host).
    """
    lead = mask.shape[:-3]
    arrays = (mask.detach() > 0.5).reshape(-1, *mask.shape[-3:]).to("cpu", torch.uint8).numpy()
    counts = []
    for a in arrays:
        if cc3d is not None:
            counts.append(cc3d.connected_components(a, connectivity=26, return_N=True)[1])
        else:
            from scipy import ndimage

            counts.append(ndimage.label(a, structure=np.ones((3, 3, 3)))[1])
    return torch.tensor(counts, dtype=torch.long, device=mask.device).reshape(lead)


class Reward:
    """r^(t) of one image step, from what the intensity episode hands it (:func:`~svldrl.rl.episode.intensity_episode`).

    A reward is a small class: its ``name`` (the value of ``rl.reward`` that picks it) and ``__call__(f_t, f_next,
    y)``, which returns the reward map r^(t) (B, 1, D, H, W) and its ``terms`` (module docstring) from the
    foreground probabilities f^(t), f^(t+1) of the segmentations of s^(t) and s^(t+1) (detached) and the
    reference y (:data:`REWARD_TARGETS`). It reads its weights from the ``rl`` config section it is built with.
    A new reward is one class and one line in :data:`REWARDS`.
    """

    name: ClassVar[str] = ""

    def __init__(self, rl: RL) -> None:
        self.rl = rl

    def __call__(
        self, f_t: torch.Tensor, f_next: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


@torch.no_grad()
def intensity_reward(
    f_t: torch.Tensor,
    f_next: torch.Tensor,
    y: torch.Tensor,
    w_dice: float = 1.0,
    w_vox: float = 1.0,
    w_cont: float = 0.1,
    w_cc: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """intensity_reward: per-voxel reward of one intensity step (method.md section 4, **decision**).

    r_i = w_dice * [Dice(f^(t+1), y) - Dice(f^(t), y)]                 (global, broadcast)
        - w_cc   * [C(f^(t+1)) - C(f^(t))] / N,  C = max(N_cc - 1, 0)   (global, off by default)
        + w_vox  * [|f_i^(t) - y_i| - |f_i^(t+1) - y_i|]               (local improvement)
        - w_cont * [c_i(f^(t+1)) - c_i(f^(t))]                         (local continuity)

    The paper's continuity term C(f) would reward fragmentation as written; here both continuity
    terms enter with a negative sign, as changes. Defaults w_dice = 1, w_vox = 1, w_cont = 0.1,
    w_cc = 0 (``rl.w_*``); N is the number of voxels of the patch.

    Args:
        f_t, f_next: foreground probabilities (B, 1, D, H, W) of the states s^(t), s^(t+1).
        y: training target (B, 1, D, H, W) in [0, 1] (the given mask by default).
    Returns:
        r (B, 1, D, H, W) and terms {"dice", "voxel", "continuity", "components"} (0-dim means).
    """
    y = y.to(f_t.dtype)
    dice_gain = soft_dice(f_next, y) - soft_dice(f_t, y)
    dice = w_dice * dice_gain.view(-1, 1, 1, 1, 1)
    components = torch.zeros_like(dice)
    if w_cc:  # counting needs a host copy: only when the term is on
        n_voxels = f_t[0].numel()
        cc_t = (count_components(f_t[:, 0]) - 1).clamp_min(0)
        cc_next = (count_components(f_next[:, 0]) - 1).clamp_min(0)
        components = -w_cc * ((cc_next - cc_t).to(f_t.dtype) / n_voxels).view(-1, 1, 1, 1, 1)
    voxel = w_vox * ((f_t - y).abs() - (f_next - y).abs())
    continuity = -w_cont * (local_tv(f_next) - local_tv(f_t))
    r = dice + components + voxel + continuity
    terms = {
        "dice": dice.mean(),
        "voxel": voxel.mean(),
        "continuity": continuity.mean(),
        "components": components.mean(),
    }
    return r, terms


class VoxelReward(Reward):
    """Our per-voxel reward (**ours**, the default ``rl.reward = voxel``; method.md section 4): a global Dice
    change plus each voxel's own improvement and continuity change, :func:`intensity_reward` with ``rl.w_dice``,
    ``rl.w_vox``, ``rl.w_cont`` and ``rl.w_cc``."""

    name = "voxel"

    def __call__(
        self, f_t: torch.Tensor, f_next: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rl = self.rl
        return intensity_reward(f_t, f_next, y, rl.w_dice, rl.w_vox, rl.w_cont, rl.w_cc)


def paper_continuity(f: torch.Tensor, w_cc: float = 0.01, w_tv: float = 0.1) -> torch.Tensor:
    """paper_continuity: C(f) = w_cc * max(N_cc(f) - 1, 0) + w_tv * mean_i c_i(f), per sample (B,).

    The paper's spatial-continuity term (method.md section 4): the number of connected components beyond
    one plus the total variation sum |grad f|. **decision**: the total variation enters as its mean over
    the patch's voxels (so it does not grow with the patch size), both terms weighted so that each is of the
    order of a step's Dice change on the phantoms: one extra component costs ``w_cc`` (0.01, a Dice point),
    and a sharp mask's mean local TV (~0.05-0.1 on a 32^3 patch) times ``w_tv`` (0.1) is ~0.005-0.01.
    """
    tv = local_tv(f).mean(dim=tuple(range(1, f.ndim)))
    if not w_cc:
        return w_tv * tv
    extra = (count_components(f[:, 0]) - 1).clamp_min(0).to(f.dtype)
    return w_cc * extra + w_tv * tv


@torch.no_grad()
def paper_reward(
    f_t: torch.Tensor,
    f_next: torch.Tensor,
    y: torch.Tensor,
    w_dice: float = 1.0,
    w_cc: float = 0.01,
    w_tv: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """paper_reward: the paper's reward as its summary writes it (``rl.reward = paper``, method.md section 4).

    One global number per step and patch, given to every voxel:

        r^(t) = w_dice * [Dice(f^(t+1), y) - Dice(f^(t), y)]  -  C(f^(t+1))

    with C of :func:`paper_continuity` evaluated at the new state (component count on). The summary writes
    ``+ C``, which would reward fragmentation: C enters as a penalty. There is no per-voxel term, so a
    voxel's credit comes only through the value and the advantage.

    Returns:
        r (B, 1, D, H, W) (the patch's reward broadcast to its voxels) and terms {"dice", "continuity"}.
    """
    y = y.to(f_t.dtype)
    dice = w_dice * (soft_dice(f_next, y) - soft_dice(f_t, y))
    continuity = -paper_continuity(f_next, w_cc, w_tv)
    r = (dice + continuity).view(-1, 1, 1, 1, 1).expand_as(f_t).contiguous()
    return r, {"dice": dice.mean(), "continuity": continuity.mean()}


class PaperReward(Reward):
    """The paper's reward as its summary writes it (**paper**, ``rl.reward = paper``; method.md section 4): one
    global r^(t) = dDice - C(f^(t+1)) per step and patch, :func:`paper_reward` with ``rl.w_dice``; C's minus sign
    and its weights ``rl.paper_w_cc``, ``rl.paper_w_tv`` are our **decisions** (the summary's ``+ C`` would reward
    fragmentation)."""

    name = "paper"

    def __call__(
        self, f_t: torch.Tensor, f_next: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rl = self.rl
        return paper_reward(f_t, f_next, y, rl.w_dice, rl.paper_w_cc, rl.paper_w_tv)


#: ``rl.reward`` value -> the reward of an image step (its choices in settings.py list the same names).
REWARDS: dict[str, type[Reward]] = {c.name: c for c in (VoxelReward, PaperReward)}


class RewardReference:
    """What r^(t) of an image step measures agreement with: ``reference(y, x, teacher)`` -> y_r (B, 1, D, H, W).

    A small class: its ``name`` (the value of ``rl.reward_target`` that picks it), whether it ``needs_teacher``
    (the trainer's EMA teacher of the segmentation), and ``__call__`` from the training target y, the patches x
    and the teacher (None when not needed). One line each in :data:`REWARD_TARGETS`.
    """

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False

    def __init__(self, rl: RL) -> None:
        self.rl = rl

    def __call__(self, y: torch.Tensor, x: torch.Tensor, teacher: nn.Module | None) -> torch.Tensor:
        raise NotImplementedError


class GivenReference(RewardReference):
    """The training target y itself: the given mask, or the one a target update made (the **paper**'s,
    ``rl.reward_target = given``)."""

    name = "given"

    def __call__(self, y: torch.Tensor, x: torch.Tensor, teacher: nn.Module | None) -> torch.Tensor:
        return y


class TeacherReference(RewardReference):
    """The EMA teacher's confident labels (**ours**, ``rl.reward_target = teacher``; method.md section 9):

        y_r,i = 1 where p_i > tau,  0 where p_i < 1 - tau,  y_i elsewhere

    with p the teacher's foreground probability and tau = ``rl.tau``. The teacher averages the student over many
    steps and cases, so where the given masks disagree at random (MT-Noise) its confident voxels are closer to the
    truth than a case's own mask.
    """

    name = "teacher"
    needs_teacher = True

    @torch.no_grad()
    def __call__(self, y: torch.Tensor, x: torch.Tensor, teacher: nn.Module | None) -> torch.Tensor:
        if teacher is None:
            raise ValueError("rl.reward_target=teacher needs the EMA teacher")
        p = torch.softmax(teacher(x, heads=("seg",))["seg"].float(), 1)[:, 1:2]
        tau = float(self.rl.tau)
        return torch.where(p > tau, torch.ones_like(y), torch.where(p < 1 - tau, torch.zeros_like(y), y))


#: ``rl.reward_target`` value -> what the rewards of image steps measure agreement with.
REWARD_TARGETS: dict[str, type[RewardReference]] = {c.name: c for c in (GivenReference, TeacherReference)}


@torch.no_grad()
def label_reward(
    q_t: torch.Tensor,
    q_next: torch.Tensor,
    teacher_p: torch.Tensor,
    given: torch.Tensor,
    w_teacher: float = 1.0,
    w_cont: float = 0.1,
    w_prior: float = 0.5,
    region_slope: torch.Tensor | None = None,
    w_region: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """label_reward: per-voxel reward of one label step (method.md section 9, **extension**).

    r_i = w_teacher * |2 p_i - 1| * [|q_i^(t) - h_i| - |q_i^(t+1) - h_i|]   (teacher agreement gain)
        - w_cont    * [c_i(q^(t+1)) - c_i(q^(t))]                           (continuity of q)
        - w_prior   * [|q_i^(t+1) - g_i| - |q_i^(t) - g_i|]                 (prior: stay near g)
        - w_region  * [q_i^(t+1) - q_i^(t)] * de_i/dq_i                     (image region fit, optional)

    with p the EMA teacher's foreground probability, h = 1[p > 0.5] its hard label, g the given mask and
    de/dq the image's :func:`region_energy_slope` under g (``region_slope``; ``rl.w_region``, default 0: off).
    The prior is a cost on moving away from the given mask, written as a per-step change so that over an
    episode it sums to -w_prior * |q^(T) - g| (for q^(0) = g): moving a voxel by one label step pays
    w_prior * step, and is worth it only where the teacher's confidence-weighted agreement gain is larger.
    Defaults ``rl.w_teacher`` = 1, ``rl.w_cont`` = 0.1, ``rl.w_prior`` = 0.5.

    Returns:
        r (B, 1, D, H, W) and terms {"teacher", "continuity", "prior"} (0-dim means).
    """
    hard = (teacher_p > 0.5).to(q_t.dtype)
    confidence = (2 * teacher_p - 1).abs()
    teacher = w_teacher * confidence * ((q_t - hard).abs() - (q_next - hard).abs())
    continuity = -w_cont * (local_tv(q_next) - local_tv(q_t))
    prior = -w_prior * ((q_next - given).abs() - (q_t - given).abs())
    r = teacher + continuity + prior
    terms = {"teacher": teacher.mean(), "continuity": continuity.mean(), "prior": prior.mean()}
    if w_region > 0 and region_slope is not None:
        region = -w_region * (q_next - q_t) * region_slope
        r = r + region
        terms["region"] = region.mean()
    return r, terms


@torch.no_grad()
def region_energy_slope(image: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """d e_i / d q_i of the two-phase piecewise-constant (Chan-Vese) energy of a labelling of the image.

    e_i = q_i |x_i - c_1|^2 + (1 - q_i) |x_i - c_0|^2, with c_1 and c_0 the mean intensities of foreground
    and background in each patch under the reference labelling ``q`` (weighted by it), scaled by
    |c_1 - c_0|^2 so that the slope is 1 for a voxel at c_0 (raising its label costs as much as one unit of
    evidence) and -1 at c_1, whatever the contrast. A reference the label noise did not shape: the image.
    Patches without both classes (or without contrast) give 0.

    Args:
        image: (B, C, D, H, W) intensities; q: (B, 1, D, H, W) reference labels in [0, 1] (the reward
            passes the given mask).

    Returns:
        (B, 1, D, H, W) slope, negative where the voxel's intensity is closer to the foreground's mean.
    """
    dims = tuple(range(2, image.dim()))
    q = q.to(image.dtype)
    n1, n0 = q.sum(dims, keepdim=True), (1 - q).sum(dims, keepdim=True)
    c1 = (q * image).sum(dims, keepdim=True) / n1.clamp_min(eps)
    c0 = ((1 - q) * image).sum(dims, keepdim=True) / n0.clamp_min(eps)
    contrast = ((c1 - c0) ** 2).sum(1, keepdim=True)
    slope = (((image - c1) ** 2) - ((image - c0) ** 2)).sum(1, keepdim=True) / contrast.clamp_min(eps)
    valid = (n1 >= 1) & (n0 >= 1) & (contrast > eps)
    return torch.where(valid, slope, torch.zeros_like(slope))


class RunningStd:
    """Running standard deviation of rewards, for ``rl.reward_norm`` (default on, method.md 4).

    Raw per-voxel rewards are of order 1e-3 to 1e-2 and would drown in the entropy bonus, so
    rewards are divided (not centred) by the running std of all rewards seen. The statistics are
    merged batch by batch (Welford / Chan's parallel update) as 0-dim float64 tensors on the
    rewards' device, so updating needs no device sync. Each DDP rank keeps its own.
    ``state_dict`` / ``load_state_dict`` let a checkpoint keep it.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps
        self.count = 0
        self.mean = torch.zeros((), dtype=torch.float64)
        self.m2 = torch.zeros((), dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        """Merge the batch ``x`` (any shape) into the running mean and sum of squared deviations."""
        x = x.detach().to(torch.float64)
        self.mean, self.m2 = self.mean.to(x.device), self.m2.to(x.device)
        n_b = x.numel()
        mean_b = x.mean()
        m2_b = ((x - mean_b) ** 2).sum()
        total = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / total
        self.m2 = self.m2 + m2_b + delta**2 * self.count * n_b / total
        self.count = total

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation so far (0-dim float64 tensor; 1 before any update)."""
        if self.count == 0:
            return torch.ones((), dtype=torch.float64)
        return (self.m2 / self.count).sqrt()

    def __call__(self, x: torch.Tensor, update: bool = True) -> torch.Tensor:
        """Update with ``x`` (unless ``update=False``), then return x / std."""
        if update:
            self.update(x)
        return x / self.std.clamp_min(self.eps).to(device=x.device, dtype=x.dtype)

    def state_dict(self) -> dict[str, float]:
        """Plain numbers, for a ``weights_only`` checkpoint."""
        return {"count": float(self.count), "mean": float(self.mean), "m2": float(self.m2)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.count = int(state["count"])
        self.mean = torch.tensor(float(state["mean"]), dtype=torch.float64)
        self.m2 = torch.tensor(float(state["m2"]), dtype=torch.float64)
