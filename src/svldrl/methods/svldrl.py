"""``svldrl``: staged voxel-level deep reinforcement learning (Fu, Guo, Shi, arXiv 2601.03875).

Every voxel is an actor-critic agent. Training runs in three stages over the budget
(method.md section 6): 1 warmup (segmentation only), 2 transition (+ value decoder),
3 full RL (+ policy decoder); the episode, reward and vA3C losses live in :mod:`svldrl.rl`.

Config keys (defaults from method.md): ``rl.action_space`` (intensity | label), ``rl.t_max`` (3),
``rl.action_scale`` (0.3), ``rl.gamma`` (0.95), ``rl.reward_conv`` (true), ``rl.entropy_coef``
(0.001), ``rl.w_dice/w_vox/w_cont/w_cc`` (1, 1, 0.1, 0), ``rl.reward_norm`` (true),
``rl.warmup``/``rl.transition`` (0.3, 0.2), ``rl.lam``/``rl.alpha``/``rl.beta`` (0.3, 0.2, 0.1),
``rl.seg_on_refined`` (true), ``rl.target_update`` (none | confident, ``rl.tau`` 0.9),
``rl.async_workers`` (0), ``rl.label_step`` (0.25), ``rl.w_prior`` (0.5), ``rl.ema`` (0.99),
``infer.refine_steps`` (0), ``nets.heads`` (decoders | light).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from svldrl.engine.trainer import Batch, Trainer, seg_target
from svldrl.rl.a3c import RewardConv
from svldrl.rl.episode import greedy_refine, intensity_episode, label_episode
from svldrl.rl.reward import RunningStd
from svldrl.rl.stages import stage_at


class SVLDRLTrainer(Trainer):
    """Three-decoder network trained in stages with voxel-level A3C."""

    name = "svldrl"

    @classmethod
    def network_kwargs(cls, cfg: dict) -> dict[str, Any]:
        # label-space agents see the current soft target q beside the image (method.md section 9)
        return {"in_channels": 1, "aux_channels": int(cfg["rl"]["action_space"] == "label"), "rl_heads": True}

    def build_optimizer(self, params: Any) -> torch.optim.Optimizer:
        rl = self.cfg["rl"]
        self.reward_conv = RewardConv(int(rl["reward_conv_size"])).to(self.device) if rl["reward_conv"] else None
        self.reward_norm = RunningStd() if rl["reward_norm"] else None
        self.teacher = None
        if rl["action_space"] == "label":
            self.teacher = copy.deepcopy(self.network).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        params = list(params) + (list(self.reward_conv.parameters()) if self.reward_conv is not None else [])
        return super().build_optimizer(params)

    def stage(self) -> int:
        rl = self.cfg["rl"]
        return stage_at(self.iteration, self.iterations, rl["warmup"], rl["transition"])

    def _seg_loss(self, logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return self.seg_loss(logits, seg_target(q))

    def train_step(self, batch: Batch) -> dict[str, Any]:
        rl, stage = self.cfg["rl"], self.stage()
        if stage == 1:
            logs = super().train_step(batch)
        elif rl["action_space"] == "intensity":
            res = intensity_episode(
                self.network, batch["image"], batch["target"], rl, stage, self.generator,
                self._seg_loss, self.reward_norm, self.reward_conv,
            )
            self.optimise(res.loss)
            logs = {"train_loss": res.loss.detach(), **res.logs}
        else:
            with torch.no_grad():
                teacher_p = torch.softmax(self.teacher(batch["image"], heads=("seg",))["seg"], 1)[:, 1:2]
            res = label_episode(
                self.network, batch["image"], batch["target"], batch["given"], teacher_p, rl, stage,
                self.generator, self._seg_loss, self.reward_norm, self.reward_conv,
            )
            self.optimise(res.loss)
            # the refined targets persist per case across epochs: the dynamic iterative update
            self.write_targets(batch, res.q_final)
            logs = {"train_loss": res.loss.detach(), **res.logs}
        if self.teacher is not None:
            self._update_teacher(float(rl["ema"]))
        logs["charts/stage"] = stage
        return logs

    @torch.no_grad()
    def _update_teacher(self, ema: float) -> None:
        for t, s in zip(self.teacher.parameters(), self.network.parameters()):
            t.mul_(ema).add_(s.detach(), alpha=1 - ema)

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        logs: dict[str, Any] = {"stage": self.stage()}
        rl = self.cfg["rl"]
        if rl["target_update"] == "confident" and self.stage() > 1:
            logs.update(self.confident_target_update(float(rl["tau"])))
        if rl["action_space"] == "label":
            changed = [float(np.mean((t >= 0.5) != (g > 0))) for t, g in zip(self.targets, self.given)]
            logs["charts/target_changed"] = float(np.mean(changed))
        return logs

    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"stage": self.stage()}
        if self.reward_conv is not None:
            state["reward_conv"] = self.reward_conv.state_dict()
        if self.reward_norm is not None:
            state["reward_norm"] = self.reward_norm.state_dict()
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        if self.cfg["rl"]["action_space"] == "label" or self.cfg["rl"]["target_update"] != "none":
            state["targets"] = [torch.from_numpy(t.copy()) for t in self.targets]
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "reward_conv" in state and self.reward_conv is not None:
            self.reward_conv.load_state_dict(state["reward_conv"])
        if "reward_norm" in state and self.reward_norm is not None:
            self.reward_norm.load_state_dict(state["reward_norm"])
        if "teacher" in state and self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        if "targets" in state:
            self.targets = [t.numpy().astype(np.float32) for t in state["targets"]]

    @classmethod
    def make_predictor(cls, network: torch.nn.Module, cfg: dict) -> Callable[[torch.Tensor], torch.Tensor]:
        steps = int(cfg["infer"]["refine_steps"])
        if steps == 0 or cfg["rl"]["action_space"] != "intensity":
            return super().make_predictor(network, cfg)

        def refine_then_segment(x: torch.Tensor) -> torch.Tensor:
            refined, _ = greedy_refine(network, x, steps, float(cfg["rl"]["action_scale"]))
            return network(refined, heads=("seg",))["seg"]

        return refine_then_segment

    @classmethod
    @torch.no_grad()
    def inspect_volume(cls, network: torch.nn.Module, cfg: dict, image: np.ndarray, batch: int | None = None
                       ) -> dict[str, np.ndarray]:
        """The refined volume and the action map of the last greedy step (``predict --save-refined``)."""
        if cfg["rl"]["action_space"] != "intensity":
            return {}
        steps = max(int(cfg["infer"]["refine_steps"]), 1)
        device = next(network.parameters()).device

        def both(x: torch.Tensor) -> torch.Tensor:
            refined, actions = greedy_refine(network, x, steps, float(cfg["rl"]["action_scale"]))
            return torch.cat([refined, actions.float()], 1)

        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        out = sliding_window_inference(
            x, (int(cfg["train"]["patch"]),) * 3, batch or int(cfg["infer"]["sw_batch"]), both,
            overlap=0.0, mode="constant", sw_device=device, device=torch.device("cpu"),
        )[0]
        return {"refined": out[0].numpy().astype(np.float32), "actions": out[1].round().numpy().astype(np.uint8)}
