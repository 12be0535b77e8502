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
import os
import warnings
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
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
        self.reward_conv = (
            RewardConv(int(rl["reward_conv_size"])).to(self.device) if rl["reward_conv"] else None
        )
        self.reward_norm = RunningStd() if rl["reward_norm"] else None
        self.teacher = None
        if rl["action_space"] == "label":
            self.teacher = copy.deepcopy(self.network).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        params = list(params) + (list(self.reward_conv.parameters()) if self.reward_conv is not None else [])
        return super().build_optimizer(params)

    def stage(self, iteration: int | None = None) -> int:
        """Stage of ``iteration`` (default: the next step)."""
        rl = self.cfg["rl"]
        it = self.iteration if iteration is None else iteration
        return stage_at(min(it, self.iterations - 1), self.iterations, rl["warmup"], rl["transition"])

    def stage_of(self, iteration: int) -> int:
        return self.stage(iteration)

    @classmethod
    def stage_cost(cls, cfg: dict, stage: int) -> float:
        """An RL step runs the network on t_max + 1 states; with three decoders each pass costs ~1.5 plain
        passes (phantom_cpu sizing: ~6x a plain step at t_max 3), with light heads ~1.1; label actions run
        the encoder once and only the heads' tails per step."""
        if stage == 1:
            return 1.0
        t_max = int(cfg["rl"]["t_max"])
        if cfg["rl"]["action_space"] == "label":
            return 1.5 + 0.2 * t_max
        return (t_max + 1) * (1.5 if cfg["nets"]["heads"] == "decoders" else 1.1)

    @classmethod
    def run_cost(cls, cfg: dict) -> float:
        warmup = float(cfg["rl"]["warmup"])
        return warmup + (1.0 - warmup) * cls.stage_cost(cfg, 3)

    def _seg_loss(self, logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return self.seg_loss(logits, seg_target(q))

    def train_step(self, batch: Batch) -> dict[str, Any]:
        rl, stage = self.cfg["rl"], self.stage()
        if stage == 1:
            logs = super().train_step(batch)
        elif rl["action_space"] == "intensity":
            res = intensity_episode(
                self.network,
                batch["image"],
                batch["target"],
                rl,
                stage,
                self.generator,
                self._seg_loss,
                self.reward_norm,
                self.reward_conv,
            )
            self.optimise(res.loss)
            logs = {"train_loss": res.loss.detach(), **res.logs}
        else:
            with torch.no_grad():
                teacher_p = torch.softmax(self.teacher(batch["image"], heads=("seg",))["seg"], 1)[:, 1:2]
            res = label_episode(
                self.network,
                batch["image"],
                batch["target"],
                batch["given"],
                teacher_p,
                rl,
                stage,
                self.generator,
                self._seg_loss,
                self.reward_norm,
                self.reward_conv,
            )
            self.optimise(res.loss)
            if stage == 3:  # the refined targets persist per case across epochs: the dynamic iterative update
                self.write_targets(batch, res.q_final)
            logs = {"train_loss": res.loss.detach(), **res.logs}
        if self.teacher is not None:
            self._update_teacher(float(rl["ema"]))
        logs["charts/stage"] = stage
        return logs

    # ------------------------------------------------------------------ asynchronous (Hogwild) mode
    def run_steps(self, steps: int) -> dict[str, float]:
        """Synchronous and batched by default; with ``rl.async_workers = N > 0`` the epoch's steps are
        shared among N Hogwild workers (A3C): forked processes updating one model, one optimiser state,
        the EMA teacher and the per-case targets, all in shared memory, without locks."""
        n = int(self.cfg["rl"]["async_workers"])
        if n <= 0 or steps == 0:
            return super().run_steps(steps)
        self._share_memory()
        ctx = mp.get_context("fork")  # workers inherit the in-memory cases copy-on-write
        queue = ctx.SimpleQueue()
        share = [steps // n + (k < steps % n) for k in range(n)]
        seeds = [int(v) for v in self.rng.integers(2**31, size=n)]
        threads = max(1, torch.get_num_threads() // n)
        procs = [
            ctx.Process(target=self._worker, args=(k, share[k], seeds[k], threads, queue), daemon=True)
            for k in range(n)
            if share[k]
        ]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        errors = [r["error"] for r in results if "error" in r]
        if errors:
            raise RuntimeError(f"async worker failed: {errors[0]}")
        with warnings.catch_warnings():  # the workers stepped the optimiser, not this process
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps):
                self.scheduler.step()
        self.iteration += steps
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for r in results:
            for k, v in r["sums"].items():
                sums[k] += v
                counts[k] += r["counts"][k]
        return {k: v / counts[k] for k, v in sums.items()} | {"charts/async_workers": float(len(procs))}

    def _share_memory(self) -> None:
        if getattr(self, "_shared", False):
            return
        for module in (self.network, self.reward_conv, self.teacher):
            if module is not None:
                module.share_memory()
        # Optimiser statistics are shared as in A3C's shared Adam: created now (zeros) so that every
        # worker updates the same tensors.
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                state = self.optimizer.state[p]
                if not state:
                    state["step"] = torch.zeros(())
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                for v in state.values():
                    if torch.is_tensor(v):
                        v.share_memory_()
        self.targets = [torch.from_numpy(t).share_memory_().numpy() for t in self.targets]
        self._shared = True

    def _worker(self, k: int, steps: int, seed: int, threads: int, queue: Any) -> None:
        try:
            torch.set_num_threads(threads)
            self.rng = np.random.default_rng(seed)
            self.generator = torch.Generator(device="cpu").manual_seed(seed)
            lr_lambda = (
                self.scheduler.lr_lambdas[0] if hasattr(self.scheduler, "lr_lambdas") else (lambda it: 1.0)
            )
            base = self.iteration
            sums: dict[str, float] = defaultdict(float)
            counts: dict[str, int] = defaultdict(int)
            n = int(self.cfg["rl"]["async_workers"])
            for i in range(steps):
                # interleaved global step index of this worker, for the stage and the learning rate
                self.iteration = base + i * n + k
                for g, lr0 in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
                    g["lr"] = lr0 * lr_lambda(self.iteration)
                for key, v in self.train_step(self.sample_batch()).items():
                    sums[key] += float(v)
                    counts[key] += 1
            queue.put({"sums": dict(sums), "counts": dict(counts), "pid": os.getpid()})
        except BaseException as exc:  # reported to the parent, which raises
            queue.put({"error": f"{type(exc).__name__}: {exc}"})

    @torch.no_grad()
    def _update_teacher(self, ema: float) -> None:
        for t, s in zip(self.teacher.parameters(), self.network.parameters()):
            t.mul_(ema).add_(s.detach(), alpha=1 - ema)

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        stage = self.stage(self.iteration - 1)  # the stage of the epoch's last step
        logs: dict[str, Any] = {"stage": stage}
        rl = self.cfg["rl"]
        if rl["target_update"] == "confident" and stage > 1:
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
            state["targets"] = self.targets_state()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "reward_conv" in state and self.reward_conv is not None:
            self.reward_conv.load_state_dict(state["reward_conv"])
        if "reward_norm" in state and self.reward_norm is not None:
            self.reward_norm.load_state_dict(state["reward_norm"])
        if "teacher" in state and self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        if "targets" in state:
            self.load_targets_state(state["targets"])

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
    def inspect_volume(
        cls, network: torch.nn.Module, cfg: dict, image: np.ndarray, batch: int | None = None
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
            x,
            (int(cfg["train"]["patch"]),) * 3,
            batch or int(cfg["infer"]["sw_batch"]),
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
