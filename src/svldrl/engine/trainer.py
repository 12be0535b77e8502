"""The base trainer: patches, the loop, validation, checkpoints, logs and resume.

It knows no method. A method is a small subclass (nnU-Net's trainer-variant pattern) that changes
one or two hooks:

- ``build_network()``: the network (default: the factory's network for ``nets.*``),
- ``train_step(batch)``: one optimiser step on a batch, returns scalar logs,
- ``on_epoch_end(epoch)``: e.g. update training targets,
- ``extra_state()`` / ``load_extra_state(state)``: method state kept in checkpoints,
- ``make_predictor(network, cfg)``: how a window is segmented at validation and prediction.

The training target of every case lives in ``self.targets`` (float32 foreground probability,
initially the given mask), so label-correcting methods change it in one place and resume keeps it.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.transforms import RandGaussianNoise, RandScaleIntensity, RandShiftIntensity

from svldrl import config as C
from svldrl.data.dataset import Dataset, load_case
from svldrl.data.io import write_text
from svldrl.data.splits import load_or_create_splits
from svldrl.engine import distributed as D
from svldrl.engine.checkpoint import load_checkpoint, save_checkpoint
from svldrl.engine.logs import TensorBoard, plot_progress, write_history_csv
from svldrl.errors import UserError
from svldrl.eval.metrics import dice_iou
from svldrl.nets.factory import build_network
from svldrl.reporter import QUIET, Reporter, fmt_seconds

Batch = dict[str, Any]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> the local CUDA device under torchrun, else cuda:0 if present, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", D.local_rank())
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available on this machine")
    return torch.device(name)


def seg_target(q: torch.Tensor) -> torch.Tensor:
    """Foreground probability (B,1,...) -> two-class soft one-hot (B,2,...) for Dice+CE."""
    return torch.cat([1.0 - q, q], dim=1)


class Trainer:
    """Plain supervised training (Dice + CE on the given masks); the base of every method."""

    name: ClassVar[str] = "supervised"

    def __init__(
        self, cfg: dict, dataset: Dataset, out_dir: str | Path, reporter: Reporter = QUIET, resume: bool = False
    ) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.out = Path(out_dir)
        self.reporter = reporter
        self.rank, self.world = D.rank(), D.world_size()
        self.is_main = self.rank == 0
        tc = cfg["train"]
        if tc["threads"]:
            torch.set_num_threads(int(tc["threads"]))
        self.device = resolve_device(tc["device"])
        self._seed(int(cfg["seed"]) + 1000 * self.rank)
        if tc["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if cfg["data"]["modality"] == "auto":
            cfg["data"]["modality"] = dataset.modality
        self.patch = int(tc["patch"])
        self.iterations = int(tc["iterations"])
        self.steps_per_epoch = int(tc["steps_per_epoch"])
        self.num_epochs = math.ceil(self.iterations / self.steps_per_epoch)
        self._load_data()
        self.network = self.build_network().to(self.device)
        D.broadcast_parameters(self.network)
        self.optimizer = self.build_optimizer(self.network.parameters())
        self.scheduler = self.build_scheduler(self.optimizer)
        self.seg_loss = DiceCELoss(
            softmax=True, lambda_dice=cfg["loss"]["dice_weight"], lambda_ce=cfg["loss"]["ce_weight"]
        )
        self.aug = [
            RandScaleIntensity(factors=0.1, prob=0.3),
            RandShiftIntensity(offsets=0.1, prob=0.3),
            RandGaussianNoise(prob=0.15, std=0.02),
        ]
        self.epoch = 0
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.best_val = -1.0
        if resume:
            self._resume()
        elif self.is_main and (self.out / "checkpoint_latest.pt").exists():
            raise UserError("run folder already holds a training; pass --resume to continue it or choose another --out", self.out)

    # ------------------------------------------------------------------ hooks
    @classmethod
    def network_kwargs(cls, cfg: dict) -> dict[str, Any]:
        """Arguments of :func:`build_network` beyond ``nets.*``; the same at training and prediction."""
        return {"in_channels": 1, "aux_channels": 0, "rl_heads": False}

    def build_network(self) -> torch.nn.Module:
        """The network of ``nets.*`` (segmentation only unless the method needs the RL heads)."""
        return build_network(self.cfg["nets"], **self.network_kwargs(self.cfg))

    def build_optimizer(self, params: Any) -> torch.optim.Optimizer:
        tc = self.cfg["train"]
        if tc["optimizer"] == "sgd":
            return torch.optim.SGD(params, lr=tc["lr"], momentum=0.99, nesterov=True, weight_decay=tc["weight_decay"])
        return torch.optim.AdamW(params, lr=tc["lr"], weight_decay=tc["weight_decay"])

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        kind, total = self.cfg["train"]["scheduler"], self.iterations
        if kind == "poly":  # nnU-Net's PolyLR
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: (1 - min(it, total - 1) / total) ** 0.9)
        if kind == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)

    def train_step(self, batch: Batch) -> dict[str, Any]:
        """One optimiser step of Dice + CE on the current targets."""
        logits = self.network(batch["image"], heads=("seg",))["seg"]
        loss = self.seg_loss(logits, seg_target(batch["target"]))
        self.optimise(loss)
        return {"train_loss": loss.detach()}

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        """Called after each epoch's steps, before validation; returns extra logs."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Method state to keep in checkpoints (plain tensors / numbers / containers only)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` saved."""

    @classmethod
    def make_predictor(cls, network: torch.nn.Module, cfg: dict) -> Callable[[torch.Tensor], torch.Tensor]:
        """Window -> segmentation logits, used by sliding-window validation and ``svldrl predict``."""
        return lambda x: network(x, heads=("seg",))["seg"]

    # ------------------------------------------------------------------ helpers for methods
    def optimise(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer | None = None,
                 network: torch.nn.Module | None = None) -> None:
        """zero_grad, backward, gradient averaging across ranks, clip, step."""
        optimizer = optimizer or self.optimizer
        network = network or self.network
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        D.average_gradients(network)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()

    @torch.no_grad()
    def predict_probs(self, image: np.ndarray, network: torch.nn.Module | None = None) -> np.ndarray:
        """Foreground probability of a whole (padded) training volume by sliding window."""
        network = network or self.network
        was_training = network.training
        network.eval()
        ic = self.cfg["infer"]
        x = torch.from_numpy(image)[None, None].to(self.device)
        seg = lambda w: network(w, heads=("seg",))["seg"]  # noqa: E731 - plain head, no refinement
        logits = sliding_window_inference(x, (self.patch,) * 3, int(ic["sw_batch"]), seg, overlap=ic["overlap"],
                                          mode=ic["mode"])
        network.train(was_training)
        return torch.softmax(logits, 1)[0, 1].cpu().numpy()

    def confident_target_update(self, tau: float) -> dict[str, float]:
        """Voxels where the model is confident (p > tau or p < 1 - tau) and disagrees with the target take
        the model's label (method.md section 6, ``rl.target_update = confident``). Returns the changed share."""
        changed = total = 0
        for i, img in enumerate(self.images):
            p = self.predict_probs(img)
            t = self.targets[i]
            flip = ((p > tau) & (t < 0.5)) | ((p < 1 - tau) & (t >= 0.5))
            t[flip] = (p[flip] > 0.5).astype(np.float32)
            changed += int(flip.sum())
            total += t.size
        return {"charts/target_changed": changed / max(total, 1)}

    def write_targets(self, batch: Batch, q: torch.Tensor) -> None:
        """Write patch targets ``q`` (B,1,p,p,p, in the batch's flipped frame) back into ``self.targets``."""
        q_np = q.detach().float().cpu().numpy()
        for b, (case, box, flips) in enumerate(zip(batch["case"], batch["box"], batch["flip"])):
            patch = q_np[b, 0]
            if flips:
                patch = np.flip(patch, axis=flips)
            self.targets[case][box] = patch

    # ------------------------------------------------------------------ data
    def _load_data(self) -> None:
        dcfg = self.cfg["data"]
        cases = {c.case_id: c for c in self.dataset.train}
        splits = load_or_create_splits(self.dataset.root, sorted(cases), int(dcfg["num_folds"]))
        fold = int(dcfg["fold"])
        if fold >= len(splits):
            raise UserError(f"--fold {fold} does not exist: the splits have {len(splits)} folds")
        self.train_ids = sorted(splits[fold]["train"])
        self.val_ids = sorted(splits[fold]["val"])
        self.images: list[np.ndarray] = []
        self.given: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        for cid in self.train_ids:
            img, lab, _ = load_case(cases[cid], dcfg)
            img, lab = self._pad(img), self._pad(lab)
            self.images.append(img)
            self.given.append(lab)
            self.targets.append(lab.astype(np.float32))
        self.fg_idx = [np.flatnonzero(g) for g in self.given]
        self.val_data = []
        for cid in self.val_ids:
            img, lab, _ = load_case(cases[cid], dcfg)
            self.val_data.append((img, lab))
        self.reporter.info(
            f"{self.name}: fold {fold}, {len(self.train_ids)} training / {len(self.val_ids)} validation cases "
            f"({self.dataset.labels_name if hasattr(self.dataset, 'labels_name') else 'given'} masks)"
        )

    def _pad(self, arr: np.ndarray) -> np.ndarray:
        pad = [(0, max(0, self.patch - s)) for s in arr.shape]
        return np.pad(arr, pad) if any(p[1] for p in pad) else arr

    def sample_batch(self) -> Batch:
        """Foreground-aware random crops (RandCropByPosNegLabel's rule), flips and intensity jitter."""
        p, rng = self.patch, self.rng
        imgs, tgts, givens, cases, boxes, flips = [], [], [], [], [], []
        for _ in range(int(self.cfg["train"]["batch"])):
            i = int(rng.integers(len(self.images)))
            shape = np.array(self.images[i].shape)
            if rng.random() < self.cfg["data"]["pos_fraction"] and self.fg_idx[i].size:
                center = np.array(np.unravel_index(self.fg_idx[i][rng.integers(self.fg_idx[i].size)], shape))
            else:
                center = np.array([rng.integers(s) for s in shape])
            start = np.clip(center - p // 2, 0, shape - p)
            box = tuple(slice(int(s), int(s) + p) for s in start)
            axes = tuple(int(a) for a in range(3) if rng.random() < 0.5)
            img, tgt, giv = self.images[i][box], self.targets[i][box], self.given[i][box]
            if axes:
                img, tgt, giv = np.flip(img, axes), np.flip(tgt, axes), np.flip(giv, axes)
            img_t = torch.from_numpy(np.ascontiguousarray(img))[None]
            for t in self.aug:
                img_t = torch.as_tensor(t(img_t))
            imgs.append(img_t.clamp(0, 1))
            tgts.append(torch.from_numpy(np.ascontiguousarray(tgt))[None])
            givens.append(torch.from_numpy(np.ascontiguousarray(giv).astype(np.float32))[None])
            cases.append(i)
            boxes.append(box)
            flips.append(axes)
        dev = self.device
        return {
            "image": torch.stack(imgs).float().to(dev),
            "target": torch.stack(tgts).float().to(dev),
            "given": torch.stack(givens).to(dev),
            "case": cases,
            "box": boxes,
            "flip": flips,
        }

    # ------------------------------------------------------------------ loop
    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def _reseed_augmentation(self) -> None:
        # MONAI transforms keep their own RandomState; re-seeding from self.rng each epoch means the
        # checkpointed self.rng state alone restores augmentation on resume.
        for t in self.aug:
            t.set_random_state(seed=int(self.rng.integers(2**31)))

    def run_steps(self, steps: int) -> dict[str, float]:
        """``steps`` optimiser steps; returns the mean of each log over the steps that logged it."""
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        for _ in range(steps):
            logs = self.train_step(self.sample_batch())
            self.scheduler.step()
            self.iteration += 1
            for k, v in logs.items():
                sums[k] += float(v)
                counts[k] += 1
        return {k: v / counts[k] for k, v in sums.items()}

    @torch.no_grad()
    def validate(self) -> float:
        """Mean Dice of sliding-window predictions against the validation cases' given masks."""
        if not self.val_data:
            return math.nan
        self.network.eval()
        predictor = self.make_predictor(self.network, self.cfg)
        ic = self.cfg["infer"]
        dices = []
        for img, lab in self.val_data:
            x = torch.from_numpy(img)[None, None].to(self.device)
            logits = sliding_window_inference(
                x, (self.patch,) * 3, int(ic["sw_batch"]), predictor, overlap=ic["overlap"], mode=ic["mode"]
            )
            pred = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
            dices.append(dice_iou(pred, lab)[0])
        self.network.train()
        return float(np.nanmean(dices))

    def fit(self) -> Path:
        """Train to ``train.iterations`` steps; returns the run folder."""
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text(self.out / "config.yaml", C.dump_config(self.cfg))
        tb = TensorBoard(self.out / "tensorboard", purge_step=self.iteration or None, enabled=self.is_main)
        started, start_iter = time.monotonic(), self.iteration
        self.network.train()
        while self.epoch < self.num_epochs:
            epoch = self.epoch
            self._reseed_augmentation()
            steps = min(self.steps_per_epoch, self.iterations - self.iteration)
            t0 = time.monotonic()
            row: dict[str, Any] = {"epoch": epoch}
            row.update(self.run_steps(steps))
            row["iteration"] = self.iteration
            row.update(self.on_epoch_end(epoch))
            due = (epoch + 1) % int(self.cfg["train"]["val_every"]) == 0 or epoch + 1 == self.num_epochs
            row["val_dice"] = self.validate() if due else math.nan
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["epoch_time"] = time.monotonic() - t0
            row = D.mean_over_ranks(row)
            self.history.append(row)
            self.epoch = epoch + 1
            improved = due and not math.isnan(row["val_dice"]) and row["val_dice"] > self.best_val
            if improved:
                self.best_val = row["val_dice"]
            if self.is_main:
                self._save("checkpoint_latest.pt")
                if improved:
                    self._save("checkpoint_best.pt")
                write_history_csv(self.out / "metrics.csv", self.history)
                plot_progress(self.out / "progress.png", self.history, f"{self.name} ({self.out.name})")
                tb.scalars({k: v for k, v in row.items() if k not in ("epoch", "iteration")}, self.iteration)
            done = self.iteration - start_iter
            eta = (time.monotonic() - started) / max(done, 1) * (self.iterations - self.iteration)
            vd = row["val_dice"]
            self.reporter.info(
                f"epoch {epoch + 1}/{self.num_epochs}  it {self.iteration}/{self.iterations}  "
                f"loss {row.get('train_loss', math.nan):.4f}  val Dice {'-' if math.isnan(vd) else f'{vd:.4f}'}"
                + (f"  stage {row['stage']}" if "stage" in row else "")
                + f"  ETA {fmt_seconds(eta)}"
            )
        if self.is_main:
            self._save("checkpoint_final.pt")
            if not (self.out / "checkpoint_best.pt").exists():
                self._save("checkpoint_best.pt")
        tb.close()
        D.barrier()
        return self.out

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        net = D.unwrap(self.network)
        return {
            "method": self.name,
            "backbone": self.cfg["nets"]["backbone"],
            "heads": self.cfg["nets"]["heads"],
            "config": self.cfg,
            "model": net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "history": self.history,
            "best_val": self.best_val,
            "rng": {
                "python": random.getstate(),
                "numpy": self.rng.bit_generator.state,
                "torch": torch.get_rng_state(),
                "generator": self.generator.get_state(),
            },
            "extra": self.extra_state(),
        }

    def _save(self, name: str) -> None:
        save_checkpoint(self.out / name, self._state())

    def _resume(self) -> None:
        path = self.out / "checkpoint_latest.pt"
        if not path.exists():
            raise UserError("nothing to resume: no checkpoint_latest.pt in the run folder", self.out)
        ckpt = load_checkpoint(path, self.name, self.cfg["nets"]["backbone"], self.cfg["nets"]["heads"])
        D.unwrap(self.network).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        self.history, self.best_val = list(ckpt["history"]), float(ckpt["best_val"])
        rng = ckpt["rng"]
        random.setstate(_as_tuple(rng["python"]))
        self.rng.bit_generator.state = rng["numpy"]
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        self.load_extra_state(ckpt["extra"])
        self.reporter.info(f"resumed {self.out} at epoch {self.epoch}, iteration {self.iteration}")


def _as_tuple(x: Any) -> Any:
    """random.setstate needs tuples; a checkpoint round trip may give lists."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
