"""``svldrl``: staged voxel-level deep reinforcement learning (Fu, Guo, Shi, arXiv 2601.03875).

Every voxel is an actor-critic agent. Training runs in three stages over the budget
(method.md section 6): 1 warmup (segmentation only), 2 transition (+ value decoder),
3 full RL (+ policy decoder); the episode, reward and vA3C losses live in :mod:`svldrl.rl`.

The variants are small classes picked by name and composed here, not branches: the action space
(``rl.action_space``: :data:`~svldrl.rl.action_spaces.ACTION_SPACES`), the reward of an image step
(``rl.reward``: :data:`~svldrl.rl.reward.REWARDS`) and what it measures agreement with (``rl.reward_target``:
:data:`~svldrl.rl.reward.REWARD_TARGETS`), the target update (``rl.target_update``:
:data:`~svldrl.methods.kit.targets.TARGET_UPDATES`).

Config keys (defaults from method.md): ``rl.action_space`` (intensity | label), ``rl.t_max`` (3),
``rl.action_scale`` (0.3), ``rl.gamma`` (0.95), ``rl.reward_conv`` (true), ``rl.entropy_coef``
(0.001), ``rl.w_dice/w_vox/w_cont/w_cc`` (1, 1, 0.1, 0), ``rl.reward_norm`` (true),
``rl.warmup``/``rl.transition`` (0.3, 0.2), ``rl.lam``/``rl.alpha``/``rl.beta`` (0.3, 0.2, 0.1),
``rl.seg_on_refined`` (true), ``rl.seg_loss`` (dicece | tloss), ``rl.target_update`` (none | confident,
``rl.tau`` 0.9 | cl: MTCL's confident-learning correction with the EMA teacher | band: the given masks
corrected by the image's intensity near their boundary, ``rl.band_width`` 2, ``rl.band_margin`` 0,
``rl.band_passes`` 1),
``rl.async_workers`` (0), ``rl.label_step`` (0.25), ``rl.w_prior`` (0.5), ``rl.ema`` (0.99),
``infer.refine_steps`` (0), ``nets.heads`` (decoders | light).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from svldrl.engine.ema import ema_teacher
from svldrl.engine.hogwild import run_hogwild
from svldrl.engine.trainer import Batch, Trainer, seg_target
from svldrl.errors import UserError
from svldrl.methods.kit.losses import learned_tolerance, t_loss
from svldrl.methods.kit.targets import target_update
from svldrl.rl.a3c import RewardConv
from svldrl.rl.action_spaces import ACTION_SPACES, ActionSpace
from svldrl.rl.episode import greedy_refine
from svldrl.rl.reward import REWARD_TARGETS, REWARDS, RunningStd
from svldrl.rl.stages import stage_at
from svldrl.settings import Config


def action_space(cfg: Config) -> type[ActionSpace]:
    """The action space class ``rl.action_space`` names (what the agents act on)."""
    return ACTION_SPACES[cfg.rl.action_space]


class SVLDRLTrainer(Trainer):
    """Three-decoder network trained in stages with voxel-level A3C."""

    name = "svldrl"
    sections = ("rl", "tloss")  # tloss.init under rl.seg_loss=tloss

    @classmethod
    def network_kwargs(cls, cfg: Config) -> dict[str, Any]:
        # label-space agents see the current soft target q beside the image (method.md section 9)
        return {"in_channels": 1, "aux_channels": action_space(cfg).aux_channels, "rl_heads": True}

    @property
    def checkpointed(self) -> tuple[str, ...]:  # type: ignore[override]
        rl = self.cfg.rl
        keeps_targets = action_space(self.cfg).keeps_targets or rl.target_update != "none"
        return (
            ("reward_conv", "reward_norm", "teacher")
            + (("targets",) if keeps_targets else ())
            + (("nu",) if rl.seg_loss == "tloss" else ())
        )

    def build_method_state(self) -> None:
        rl = self.cfg.rl
        if self.world > 1 and int(rl.async_workers) > 0:
            # Hogwild workers are forked processes sharing one model; they cannot join the ranks' collectives.
            raise UserError("rl.async_workers > 0 runs in one process; set it to 0 to train with torchrun")
        if rl.seg_loss == "tloss" and int(rl.async_workers) > 0:
            raise UserError(
                "rl.seg_loss=tloss learns its tolerance in this process only; set rl.async_workers=0"
            )
        self.reward_conv = RewardConv(int(rl.reward_conv_size)).to(self.device) if rl.reward_conv else None
        self.reward_norm = RunningStd() if rl.reward_norm else None
        # what the agents act on, with the reward of an image step and what it measures agreement with
        self.actions = ACTION_SPACES[rl.action_space](
            rl, reward=REWARDS[rl.reward](rl), reference=REWARD_TARGETS[rl.reward_target](rl)
        )
        # label actions, teacher-referenced rewards and the CL target update: an EMA teacher of the segmentation
        self.target_update = target_update(self.cfg.rl)
        needs_teacher = self.actions.needs_teacher or (
            self.target_update is not None and self.target_update.needs_teacher
        )
        self.teacher = ema_teacher(self.network, float(rl.ema), ramp=False) if needs_teacher else None
        # an update that needs no model (the band) corrects the targets once, before the first step
        starts = self.target_update is not None and self.target_update.when == "start"
        self.start_logs = self.target_update.apply(self) if starts else {}
        # rl.seg_loss=tloss: T-Loss's learned tolerance, stepped, clipped and averaged across ranks with the network
        self.nu: nn.Parameter | None = None
        self._trainable: nn.Module | None = None
        if rl.seg_loss == "tloss":
            self.nu, self._trainable = learned_tolerance(
                self.network, float(self.cfg.tloss.init), self.device
            )
        if self.reward_conv is not None:
            # K is learned with the network: averaged across ranks and clipped with it (left out, each rank
            # under torchrun trained a kernel of its own and the checkpoint kept rank 0's)
            holder = self._trainable if self._trainable is not None else nn.ModuleDict({"net": self.network})
            holder.add_module("reward_conv", self.reward_conv)
            self._trainable = holder

    def trainable_parameters(self) -> Any:
        extra = list(self.reward_conv.parameters()) if self.reward_conv is not None else []
        params = list(self.network.parameters()) + extra
        if self.nu is None:
            return params
        return [{"params": params}, {"params": [self.nu], "weight_decay": 0.0}]

    def build_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """L_seg of every stage: Dice + CE (the paper), or with ``rl.seg_loss=tloss`` the T-Loss of the
        foreground probability against the (soft) target's foreground channel."""
        if self.nu is None:
            return super().build_loss()
        nu = self.nu
        return lambda logits, target: t_loss(torch.softmax(logits, 1)[:, 1], target[:, 1], nu)

    def optimised_module(self) -> nn.Module:
        return self.network if self._trainable is None else self._trainable

    def stage(self, iteration: int | None = None) -> int:
        """Stage of ``iteration`` (default: the next step)."""
        rl = self.cfg.rl
        it = self.iteration if iteration is None else iteration
        return stage_at(min(it, self.iterations - 1), self.iterations, rl.warmup, rl.transition)

    def stage_of(self, iteration: int) -> int:
        return self.stage(iteration)

    @classmethod
    def stage_cost(cls, cfg: Config, stage: int) -> float:
        """A step of stage 2 or 3 runs an episode (its cost: the action space's ``episode_cost``) with
        probability ``rl.episode_share``, else a plain step."""
        if stage == 1:
            return 1.0
        t_max, share = int(cfg.rl.t_max), float(cfg.rl.episode_share)
        episode = action_space(cfg).episode_cost(t_max, cfg.nets.heads)
        return share * episode + (1.0 - share)

    @classmethod
    def run_cost(cls, cfg: Config) -> float:
        warmup = float(cfg.rl.warmup)
        return warmup + (1.0 - warmup) * cls.stage_cost(cfg, 3)

    def _seg_loss(self, logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return self.seg_loss(logits, seg_target(q))

    def episode_due(self, iteration: int) -> bool:
        """Whether step ``iteration`` of stage 2 or 3 runs an episode (``rl.episode_share`` of them, evenly
        spread: step i does when floor((i + 1) * share) > floor(i * share))."""
        share = float(self.cfg.rl.episode_share)
        return int((iteration + 1) * share) > int(iteration * share)

    def train_step(self, batch: Batch) -> dict[str, Any]:
        stage = self.stage()
        if stage == 1 or not self.episode_due(self.iteration):
            logs = super().train_step(batch)
        else:
            res = self.actions.episode(
                self.network,
                batch["image"],
                batch["target"],
                batch["given"],
                self.teacher,
                stage,
                self.generator,
                self._seg_loss,
                self.reward_norm,
                self.reward_conv,
            )
            self.optimise(res.loss)
            if stage == 3 and self.actions.keeps_targets:
                # the refined targets persist per case across epochs: the dynamic iterative update
                self.write_targets(batch, res.final)
            logs = {"train_loss": res.loss.detach(), **res.logs}
        if self.teacher is not None:
            self.teacher.update_parameters(self.network)
        logs["charts/stage"] = stage
        if self.nu is not None:
            logs["charts/nu"] = self.nu.detach()
        return logs

    def write_targets(self, batch: Batch, q: torch.Tensor) -> None:
        """Write patch targets ``q`` (B,1,p,p,p, in the batch's flipped frame) back into ``self.targets``."""
        q_np = q.detach().float().cpu().numpy()
        for b, (case, box, flips) in enumerate(zip(batch["case"], batch["box"], batch["flip"], strict=True)):
            if case in self.trusted_positions:  # a trusted mask is the truth: the agents leave it
                continue
            patch = q_np[b, 0]
            if flips:
                patch = np.flip(patch, axis=flips)
            self.targets[case][box] = patch

    def run_steps(self, steps: int) -> dict[str, float]:
        """Synchronous and batched by default; with ``rl.async_workers = N > 0`` the epoch's steps are
        shared among N Hogwild workers (A3C, :mod:`svldrl.engine.hogwild`)."""
        n = int(self.cfg.rl.async_workers)
        if n <= 0 or steps == 0:
            return super().run_steps(steps)
        return run_hogwild(self, steps, n)

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        stage = self.stage(self.iteration - 1)  # the stage of the epoch's last step
        logs: dict[str, Any] = {"stage": stage, **self.start_logs}
        if self.target_update is not None and self.target_update.when == "epoch" and stage > 1:
            # the reward is measured against the targets: with cl, the given masks with confident learning's
            # flags corrected, redone each epoch, a reference the noise shaped less than the given masks
            logs.update(self.target_update.apply(self, self.teacher))
        if self.actions.keeps_targets:
            changed = [float(np.mean((t >= 0.5) != (g > 0))) for t, g in zip(self.targets, self.given)]
            logs["charts/target_changed"] = float(np.mean(changed))
        return logs

    @classmethod
    def make_predictor(cls, network: torch.nn.Module, cfg: Config) -> Callable[[torch.Tensor], torch.Tensor]:
        steps = int(cfg.infer.refine_steps)
        if steps == 0 or not action_space(cfg).refines_images:
            return super().make_predictor(network, cfg)

        def refine_then_segment(x: torch.Tensor) -> torch.Tensor:
            refined, _ = greedy_refine(network, x, steps, float(cfg.rl.action_scale))
            return network(refined, heads=("seg",))["seg"]

        return refine_then_segment

    @classmethod
    @torch.no_grad()
    def inspect_volume(
        cls, network: torch.nn.Module, cfg: Config, image: np.ndarray, batch: int | None = None
    ) -> dict[str, np.ndarray]:
        """The refined volume and the action map of the last greedy step (``predict --save-refined``)."""
        if not action_space(cfg).refines_images:
            return {}
        steps = max(int(cfg.infer.refine_steps), 1)
        device = next(network.parameters()).device

        def both(x: torch.Tensor) -> torch.Tensor:
            refined, actions = greedy_refine(network, x, steps, float(cfg.rl.action_scale))
            return torch.cat([refined, actions.float()], 1)

        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        out = sliding_window_inference(
            x,
            (int(cfg.train.patch),) * 3,
            batch or int(cfg.infer.sw_batch),
            both,
            overlap=0.0,
            mode="constant",
            sw_device=device,
            device=torch.device("cpu"),
        )[0]
        return {
            "refined": out[0].numpy().astype(np.float32),
            "actions": out[1].round().numpy().astype(np.uint8),
        }
