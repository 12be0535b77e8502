"""The base trainer: the loop, validation, checkpoints, logs and resume.

It knows no method. A method is a small subclass (nnU-Net's trainer-variant pattern) that changes
one or two hooks. The lifecycle, as nnU-Net's:

1. construct: settings (a copy with what the data decide resolved), data (``training_case(position, case)``
   picks the mask a case trains with),
2. ``build_network()``, then ``build_method_state()``: what the method keeps beside the network (a peer
   network and its optimiser, an EMA teacher, extra learnable parameters ...),
3. ``build_optimizer(trainable_parameters())``, ``build_scheduler(optimizer)``, ``build_loss()``,
4. ``restore()``: the caller's step when it continues a run (the trainer made with ``resume=True``, which
   expects a checkpoint in the run folder where a fresh run refuses one): the checkpoint's model, optimiser,
   scheduler, random streams, the metric log and the attributes the method names in ``checkpointed`` (saved and
   restored by the base, none hand-written),
5. ``fit()``: ``train_step(batch)`` per step, ``on_epoch_end(epoch)`` per epoch, validation with
   ``make_predictor(network, cfg)`` (also what ``svldrl predict`` uses).

The constructor does 1-3, so ``Trainer(cfg, ds, out)`` then ``fit()`` trains a new run, and
``Trainer(cfg, ds, out, resume=True)``, ``restore()``, ``fit()`` continues one (:func:`svldrl.runs.train`).

The training target of every case lives in ``self.targets`` (float32 foreground probability,
initially the given mask), so label-correcting methods change it in one place; a method that changes it
lists ``"targets"`` in ``checkpointed`` and resume keeps it.

What the loop stands on lives beside it, one module each: the data (the split, the cases as arrays, the patch
stream that is the same on every rank, batches) in :mod:`~svldrl.engine.training_data`; device and number format
in :mod:`~svldrl.engine.device`; random streams in :mod:`~svldrl.engine.streams`; checkpoints and the run folder
in :mod:`~svldrl.engine.checkpoint`; sliding-window probabilities and validation Dice in
:mod:`~svldrl.engine.predict`; logs in :mod:`~svldrl.engine.logs`; the ETA in :mod:`~svldrl.engine.eta`.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.transforms import RandGaussianNoise, RandScaleIntensity, RandShiftIntensity
from scipy import ndimage
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from svldrl import config as C
from svldrl.data.dataset import Case, Dataset
from svldrl.data.io import write_text
from svldrl.engine import distributed as D
from svldrl.engine.allocator import keep_freed_memory
from svldrl.engine.checkpoint import (
    LATEST,
    attribute_state,
    check_run_folder,
    load_attribute,
    load_checkpoint,
    save_checkpoint,
)
from svldrl.engine.device import memory_format, resolve_device, use_amp
from svldrl.engine.eta import StageTimer
from svldrl.engine.logs import TensorBoard, epoch_line, write_epoch_logs, write_history_csv
from svldrl.engine.patches import Joined, StepCrops, pad_to_patch
from svldrl.engine.predict import predict_probability, validation_dice, window_probability
from svldrl.engine.streams import restore_own_streams, rng_state, seed_streams
from svldrl.engine.training_data import (
    Batch,
    Spec,
    collate,
    describe,
    next_specs,
    read_cases,
    resolve_data_settings,
    split_cases,
    worker_crops,
)
from svldrl.errors import UserError
from svldrl.nets.factory import build_network
from svldrl.reporter import QUIET, SILENT, Reporter, fmt_seconds
from svldrl.rules import choose_threshold, dice_at_thresholds
from svldrl.settings import Config

#: Seconds between progress lines inside a long epoch.
PROGRESS_EVERY = 30.0


#: The target of a voxel whose class is not known (data.trusted_bound): no loss there.
UNKNOWN = -1.0
#: data.trusted_bound: voxels between the drawn boundary and the known side (chosen on the development sets' masks:
#: under their Markov noise no true foreground lay more than one voxel outside a mask, 3-4% lay in that voxel).
BOUND_MARGIN = 1


def known_beyond_band(bounded: np.ndarray, target: np.ndarray, band: int) -> np.ndarray:
    """data.trusted_bound_band: ``bounded`` (a bound's target: 0, 1 or UNKNOWN) with its unknown voxels more than
    ``band`` voxels inside the corrected ``target`` made foreground, more than ``band`` outside it background."""
    t = np.asarray(target) >= 0.5
    out = np.array(bounded, dtype=np.float32, copy=True)
    unknown = out == UNKNOWN
    out[unknown & ndimage.binary_erosion(t, iterations=band)] = 1.0
    out[unknown & ~ndimage.binary_dilation(t, iterations=band)] = 0.0
    return out


def seg_target(q: torch.Tensor) -> torch.Tensor:
    """Foreground probability (B,1,...) -> two-class soft one-hot (B,2,...) for Dice+CE."""
    return torch.cat([1.0 - q, q], dim=1)


class Trainer:
    """Plain supervised training (Dice + CE on the given masks); the base of every method."""

    name: ClassVar[str] = "supervised"
    #: How gradients are averaged across ranks: ``auto`` (DistributedDataParallel for networks without the RL
    #: heads, else an explicit all-reduce), ``ddp`` or ``allreduce``; see :mod:`svldrl.engine.distributed`.
    distributed_mode: ClassVar[str] = "auto"

    #: Attributes the method keeps in checkpoints beside the network, optimiser and scheduler (each an object
    #: with ``state_dict`` / ``load_state_dict``, a tensor, plain data, or ``"targets"``); built in
    #: :meth:`build_method_state`, saved and restored by the base trainer. A property where it depends on the
    #: config.
    checkpointed: ClassVar[tuple[str, ...]] = ()
    #: Whether the trusted cases also train (on their trusted masks) under ``data.train_on=auto``: a method with a
    #: clean subset (MTCL) says True; otherwise they are held out for validation and checkpoint selection.
    trains_on_trusted: ClassVar[bool] = False
    #: The config sections of its own the method reads (``("mtcl",)``), beside every method's ``data``, ``nets``,
    #: ``train``, ``loss`` and ``infer``; a run of a method that does not read a section may not set its keys
    #: (:func:`svldrl.methods.section_owners`).
    sections: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        cfg: Config,
        dataset: Dataset,
        out_dir: str | Path,
        reporter: Reporter = QUIET,
        resume: bool = False,
    ) -> None:
        # 1. construct
        self.dataset = dataset
        self.out = Path(out_dir)
        self.resume = resume
        self.rank, self.world = D.rank(), D.world_size()
        self.is_main = self.rank == 0
        self.reporter = reporter if self.is_main else SILENT
        tc = cfg.train
        if tc.threads:
            torch.set_num_threads(int(tc.threads))
        self.device = resolve_device(tc.device)
        self.amp = use_amp(tc.amp, self.device)
        if tc.keep_freed_memory and self.device.type == "cpu":
            keep_freed_memory()
        # the data stream (self.rng, every rank alike) and this rank's own (self.generator for a method's sampling)
        self.rng, self.generator = seed_streams(int(cfg.seed), self.rank)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.patch = int(tc.patch)
        self.iterations = int(tc.iterations)
        self.steps_per_epoch = int(tc.steps_per_epoch)
        self.num_epochs = math.ceil(self.iterations / self.steps_per_epoch)
        check_run_folder(self.out, resume)
        #: The run's settings, with what the data decide resolved (a copy: the caller's config stays as given).
        self.cfg = resolve_data_settings(cfg, dataset, self.reporter)
        self._load_data()
        self.finish_from = self._finish_epoch()
        finish_keys = (
            "trusted_join",
            "trusted_bound",
            "trusted_bound_band",
            "trusted_average",
            "trusted_finish_lr",
        )
        idle = [k for k in finish_keys if getattr(self.cfg.data, k)]
        if idle and self.trusted_ids and float(self.cfg.data.trusted_finish) <= 0:
            keys, verb = " and ".join(f"data.{k}" for k in idle), "acts" if len(idle) == 1 else "act"
            self.reporter.warn(
                f"{keys} {verb} only in the trusted finish: without data.trusted_finish nothing changes"
            )
        if self.cfg.data.trusted_bound_band and not self.cfg.data.trusted_bound and self.trusted_ids:
            self.reporter.warn("data.trusted_bound_band acts only with data.trusted_bound: nothing changes")
        self.finishing = False  # in the trusted finish (data.trusted_finish): see fit()
        #: In the finish's share, the trusted cases joined the training cases instead (data.trusted_join)
        self.joined = False
        # 2. network and method state, 3. optimiser, schedule and loss
        self.network = self.build_network().to(self.device)
        D.broadcast_parameters(self.network)
        self.build_method_state()
        self.keep_trusted_targets()
        self.optimizer = self.build_optimizer(self.trainable_parameters())
        self.scheduler = self.build_scheduler(self.optimizer)
        self.seg_loss = self.build_loss()
        self._plain_loss = Trainer.build_loss(self)
        self.aug = [
            RandScaleIntensity(factors=0.1, prob=0.3),
            RandShiftIntensity(offsets=0.1, prob=0.3),
            RandGaussianNoise(prob=0.15, std=0.02),
        ]
        self.epoch = 0
        self.iteration = 0
        self.history: list[dict[str, Any]] = []
        self.best_val = -1.0
        self._case_queue: list[int] = []  # the rest of the current shuffled pass over the training cases
        #: In the finish, the training cases stayed beside the trusted ones, each on its reliable side
        #: (data.trusted_bound): the side its masks were found wrong on (1 too large, -1 too small) and those masks
        self.bound: tuple[int, Sequence[np.ndarray]] | None = None
        #: Between the trusted shift's first decision and its next update (data.trusted_measure): the training cases
        #: train on their reliable side only, as in the bound, on the side and masks of ``measure_bound``
        self.measuring = False
        self.measure_bound: tuple[int, Sequence[np.ndarray]] | None = None
        self._measure_pool: tuple[Any, list[np.ndarray], list[np.ndarray], list[np.ndarray]] | None = None
        #: The moving average of the network's weights over the finish's steps (data.trusted_average)
        self.average: AveragedModel | None = None
        #: The final model's foreground threshold, chosen on the trusted cases (data.trusted_threshold): see fit()
        self.threshold: float | None = None
        self._finish_pool: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] | None = None
        self._joined_pool: tuple[Any, list[np.ndarray], list[np.ndarray], list[np.ndarray]] | None = None
        self._bounded_pool: tuple[Any, list[np.ndarray], list[np.ndarray], list[np.ndarray]] | None = None
        self.timing = StageTimer(
            self.stage_of, lambda s: type(self).stage_cost(self.cfg, s), self.iterations, self.num_epochs
        )
        self._rank_rngs: list[dict[str, Any]] | None = None
        self._ddp_params: frozenset[int] = frozenset()
        self.restored = False  # 4. restore is the caller's step: restore() (resume) before fit()

    # ------------------------------------------------------------------ hooks
    @classmethod
    def network_kwargs(cls, cfg: Config) -> dict[str, Any]:
        """Arguments of :func:`build_network` beyond ``nets.*``; the same at training and prediction."""
        return {"in_channels": 1, "aux_channels": 0, "rl_heads": False}

    @classmethod
    def resolve_train_on(cls, cfg: Config) -> str:
        """What trains beside trusted cases (``data.train_on``, ``auto`` resolved for this method): ``others`` (the
        trusted cases only validate), ``all`` (they train too: :attr:`trains_on_trusted`) or ``trusted``; see
        :func:`~svldrl.data.splits.trusted_split`. Also how the audit knows which cases a run trained on."""
        train_on = cfg.data.train_on
        if train_on == "auto":
            return "all" if cls.trains_on_trusted else "others"
        return train_on

    def build_network(self) -> torch.nn.Module:
        """The network of ``nets.*`` (segmentation only unless the method needs the RL heads), its weights in
        ``train.memory_format`` (activations follow the weights' layout; copies such as an EMA teacher keep it)."""
        net = build_network(self.cfg.nets, **self.network_kwargs(self.cfg))
        return net.to(memory_format=memory_format(self.cfg.train.memory_format, self.device, self.amp))

    def build_optimizer(self, params: Any) -> torch.optim.Optimizer:
        tc = self.cfg.train
        if tc.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=tc.lr, momentum=0.99, nesterov=True, weight_decay=tc.weight_decay
            )
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The learning-rate schedule: :meth:`lr_factor` of the step times the initial rate."""
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)

    def lr_factor(self, iteration: int) -> float:
        """``train.scheduler`` in closed form (also what Hogwild workers set the rate from): poly, nnU-Net's
        ``(1 - it / total) ** 0.9``; cosine ``(1 + cos(pi it / total)) / 2``; constant 1."""
        kind, total = self.cfg.train.scheduler, self.iterations
        if self._own_finish and self.cfg.data.trusted_finish_lr:
            return float(self.cfg.data.trusted_finish_lr)
        if kind == "poly":  # nnU-Net's PolyLR
            return (1 - min(iteration, total - 1) / total) ** 0.9
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(iteration, total) / total))
        return 1.0

    def build_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The segmentation loss: MONAI's Dice + CE on softmax logits and a two-class (soft) one-hot target."""
        lc = self.cfg.loss
        return DiceCELoss(softmax=True, lambda_dice=lc.dice_weight, lambda_ce=lc.ce_weight)

    def build_method_state(self) -> None:
        """Build what the method keeps beside the network, after the network and before the optimiser (and
        before a resume restores it); default nothing."""

    def trainable_parameters(self) -> Any:
        """What the main optimiser trains (parameters or param groups): the network's; methods add their own
        learnable parameters here (SVL-DRL's reward kernel, T-Loss's tolerance)."""
        return self.network.parameters()

    def training_case(self, position: int, case: Case) -> Case:
        """The case (its mask) training case number ``position`` (sorted ids) trains with; default as given."""
        return case

    def train_step(self, batch: Batch) -> dict[str, Any]:
        """One optimiser step of Dice + CE on the current targets."""
        logits = self.network(batch["image"], heads=("seg",))["seg"]
        loss = self.seg_loss(logits, seg_target(batch["target"]))
        self.optimise(loss)
        return {"train_loss": loss.detach()}

    #: The log key of an epoch whose end updated the method's targets (data.trusted_measure ends there).
    update_mark: ClassVar[str] = "charts/target_changed"
    #: What the log says when :meth:`finish_wanted` declines the trusted finish.
    finish_declined: ClassVar[str] = ""

    def finish_wanted(self, before: list[dict[str, Any]]) -> bool:
        """Whether the trusted finish (``data.trusted_finish``) runs, from the logged epochs ``before`` it: yes;
        a method whose correction tests the given masks against the trusted ones declines where they showed no
        error (:attr:`finish_declined` says why in the log)."""
        return True

    def finish_side(self, before: list[dict[str, Any]]) -> tuple[int, Sequence[np.ndarray]]:
        """For ``data.trusted_bound``: the side on which the method found, in the logged epochs ``before`` the
        finish, the training masks wrong (1 drawn too large, -1 too small, 0 not known: no bound) and the masks it
        measured that on; default (0, the given masks)."""
        return 0, self.given

    def finish_step(self, batch: Batch) -> dict[str, Any]:
        """A step of the trusted finish: Dice + CE (MONAI's, whatever loss the method trains with: these masks
        are clean) of the segmentation network on trusted masks; under ``data.trusted_bound``, crops with voxels
        of unknown class (target < 0) add the cross-entropy of their known voxels instead."""
        logits = self.network(batch["image"], heads=("seg",))["seg"]
        target = batch["target"]
        known = target >= 0
        if bool(known.all()):
            loss = self._plain_loss(logits, seg_target(target))
        else:
            # the trusted cases' crops (and bounded ones wholly on the known side)
            whole = known.flatten(1).all(1)
            loss = (
                self._plain_loss(logits[whole], seg_target(target[whole]))
                if whole.any()
                else 0 * logits.sum()
            )
            part, seen = ~whole, known[~whole][:, 0]
            if seen.any():
                # a hand-written masked CE: MONAI's DiceCELoss has no per-voxel weights
                ce = F.cross_entropy(
                    logits[part], target[part][:, 0].clamp(min=0).round().long(), reduction="none"
                )
                loss = loss + ce[seen].mean()
        self.optimise(loss)
        return {"train_loss": loss.detach()}

    def on_epoch_end(self, epoch: int) -> dict[str, Any]:
        """Called after each epoch's steps, before validation; returns extra logs."""
        return {}

    def keep_trusted_targets(self) -> None:
        """Give the trusted cases that train their trusted masks back as targets, whatever a method's correction
        wrote (called after the method's state is built and after each epoch's update): one rule for every
        method, so no correction has to know which cases are trusted."""
        for i in self.trusted_positions:
            self.targets[i][...] = self.given[i]  # in place: the targets may live in shared memory

    def targets_state(self) -> list[torch.Tensor]:
        """The per-case training targets as tensors (a method lists ``"targets"`` in ``checkpointed``)."""
        return [torch.from_numpy(t.copy()) for t in self.targets]

    def load_targets_state(self, saved: list[torch.Tensor]) -> None:
        """Restore what :meth:`targets_state` returned."""
        self.targets = [t.numpy().astype(np.float32) for t in saved]

    def method_state(self) -> dict[str, Any]:
        """The ``checkpointed`` attributes as plain data (``state_dict`` where they have one), plus the stage."""
        state: dict[str, Any] = {"stage": self.stage_of(min(self.iteration, self.iterations - 1))}
        for name in self.checkpointed:
            value = self.targets_state() if name == "targets" else attribute_state(getattr(self, name, None))
            if value is not None:
                state[name] = value
        return state

    def load_method_state(self, state: dict[str, Any]) -> None:
        """Restore the ``checkpointed`` attributes from :meth:`method_state`'s output (the stage derives from
        the iteration and is not restored)."""
        for name in self.checkpointed:
            if name == "targets" and name in state:
                self.load_targets_state(state[name])
            elif name in state:
                load_attribute(self, name, state[name])

    @classmethod
    def make_predictor(cls, network: torch.nn.Module, cfg: Config) -> Callable[[torch.Tensor], torch.Tensor]:
        """Window -> segmentation logits, used by sliding-window validation and ``svldrl predict``."""
        return lambda x: network(x, heads=("seg",))["seg"]

    def use_ddp(self) -> bool:
        """Whether the network is wrapped in DistributedDataParallel when several ranks train.

        ``auto``: yes for networks without the RL heads (every parameter used in every step), no for
        SVL-DRL's three-head network (heads change with the stage; gradients are all-reduced explicitly).
        """
        if self.distributed_mode == "auto":
            return not self.network_kwargs(self.cfg).get("rl_heads", False)
        return self.distributed_mode == "ddp"

    # ------------------------------------------------------------------ helpers for methods
    def optimised_module(self) -> torch.nn.Module:
        """What :meth:`optimise` averages across ranks and clips by default: the network; a method with
        learnable parameters of its own (T-Loss's tolerance) returns a module holding both."""
        return self.network

    def optimise(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer | None = None,
        network: torch.nn.Module | None = None,
    ) -> None:
        """zero_grad, backward, gradient averaging across ranks, clip, step (``network``: what is averaged and
        clipped, default :meth:`optimised_module`)."""
        optimizer = optimizer or self.optimizer
        network = network or self.optimised_module()
        optimizer.zero_grad(set_to_none=True)
        # Backward outside autocast (``train.amp``): its ops follow the forward's dtypes anyway.
        with torch.autocast(self.device.type, enabled=False):
            loss.backward()
        # DDP has averaged its network's gradients during backward; the rest (a peer network, extra
        # parameters, or everything when the network is not wrapped) is averaged here.
        D.average_gradients(network, skip=self._ddp_params)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()

    @torch.no_grad()
    def predict_probs(self, image: np.ndarray, network: torch.nn.Module | None = None) -> np.ndarray:
        """Foreground probability of a whole (padded) training volume.

        ``infer.train_pass``: by sliding windows of the patch size (as at test time), or in one window of the
        whole volume rounded up to the network's divisor. The methods that call this segment every training
        case each epoch; on 40^3 phantoms with 32^3 patches the sliding pass runs 8 overlapping windows per
        case (ADELE ~2.2x and MTCL ~1.9x plain training's time there, benchmarks/results/sizing_converged;
        ``whole`` saved ADELE 14 % when this pass ran in float32). ``whole`` runs
        the fully convolutional network once on the whole volume: real context instead of padding at the
        window borders, but no blending of overlapping windows and instance-norm statistics of the whole
        volume rather than of a patch, so its probabilities differ from the test-time pass. On
        phantom_converged that made ADELE's corrections collapse faster (docs/method.md section 12): it is an
        option, not the default. Memory grows with the volume, so ``whole`` is for volumes a few patches large.
        """
        network = D.unwrap(network or self.network)  # no DDP collectives for a forward on one rank
        was_training = network.training
        network.eval()
        ic = self.cfg.infer

        # Part of training: bf16 under ``train.amp`` like the steps (on CPUs with bf16 kernels this pass is much of
        # ADELE's and MTCL's time: benchmarks/results/sizing_converged); float32 logits into the softmax.
        def seg(w: torch.Tensor) -> torch.Tensor:  # plain head, no refinement
            with self._autocast():
                return network(w, heads=("seg",))["seg"].float()

        if ic.train_pass == "whole":
            div = int(getattr(network, "divisor", 1))
            roi = tuple(max(self.patch, -(-s // div) * div) for s in image.shape)
            # MONAI pads the volume to the window and crops the output back: one forward per case
            window = (roi, 1, 0.0, "constant")
        else:
            window = ((self.patch,) * 3, int(ic.sw_batch), ic.overlap, ic.mode)
        # stitched on the trainer's device, where the steps run anyway
        probs = window_probability(seg, image, *window, self.device, self.device)
        network.train(was_training)
        return probs

    # ------------------------------------------------------------------ data
    def _load_data(self) -> None:
        """The data attributes methods use: the split's ids, the cases as arrays, the targets."""
        split = split_cases(self.dataset, self.cfg, self.resolve_train_on(self.cfg), self.reporter)
        # Set before the cases are read: training_case (MTCL's) looks at them.
        self.train_ids, self.val_ids, self.trusted_ids = split.train_ids, split.val_ids, split.trusted_ids
        data = read_cases(self.dataset, split, self.cfg.data, self.patch, self.training_case, self.reporter)
        self.images, self.given, self.fg_idx = data.images, data.given, data.fg_idx
        self.val_images, self.val_labels = data.val_images, data.val_labels
        self.targets = [g.astype(np.float32) for g in self.given]
        #: Positions (in ``train_ids``) of the trusted cases that train (``data.train_on=all``): their masks are the
        #: truth, so no method's correction changes their targets (:meth:`keep_trusted_targets`).
        trusted = set(self.trusted_ids)
        self.trusted_positions = frozenset(i for i, c in enumerate(self.train_ids) if c in trusted)
        #: What a method's corrections before training did to each case (case id -> notes), for
        #: ``svldrl targets``' report; empty for methods that correct nothing then.
        self.target_notes: dict[str, dict[str, Any]] = {}
        describe(self.dataset, split, self.name, self.world, self.cfg.train.batch, self.reporter)

    def _pool(self) -> tuple[Any, list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """(images, targets, given masks, foreground indices) patches are drawn from: the training cases, or in
        the trusted finish the trusted cases with their trusted masks (as targets and as given masks)."""
        if self.measuring:
            if self._measure_pool is None:
                self._measure_pool = self._bound_pool(*self._trusted_pool(), bound=self.measure_bound)
            return self._measure_pool
        if not self.finishing:
            return self.images, self.targets, self.given, self.fg_idx
        if self._finish_pool is None:
            self._finish_pool = self._trusted_pool()
        images, masks, fg_idx = self._finish_pool
        if self.bound is not None:
            if self._bounded_pool is None:
                self._bounded_pool = self._bound_pool(images, masks, fg_idx)
            return self._bounded_pool
        if not self.joined:
            return images, masks, masks, fg_idx
        if self._joined_pool is None:  # data.trusted_join: beside the training cases, as they are
            self._joined_pool = self._beside_training(self.targets, images, masks, fg_idx, repeat=1)
        return self._joined_pool

    def _bound_pool(
        self,
        images: list[np.ndarray],
        masks: list[np.ndarray],
        fg_idx: list[np.ndarray],
        bound: tuple[int, Sequence[np.ndarray]] | None = None,
    ) -> tuple[Any, list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """data.trusted_bound: the training cases with targets known only on their masks' reliable side (elsewhere
        UNKNOWN), then the trusted cases (those not training already), repeated so that they are drawn about as
        often as all the others together: their masks are the only ones known everywhere."""
        side, measured = bound or self.bound or (0, [])
        # too large (side 1): inside the mask unknown, outside background; too small: inside foreground. The known
        # side starts a voxel from the drawn boundary: where it lies is uncertain by that much even in expert masks
        # (partial volume), and noise that errs both ways near it (Markov: up to a voxel) stays unknown
        move = ndimage.binary_dilation if side > 0 else ndimage.binary_erosion
        bounded = [
            np.where(
                move(np.asarray(m) >= 0.5, iterations=BOUND_MARGIN) == (side > 0), UNKNOWN, float(side < 0)
            ).astype(np.float32)
            for m in measured
        ]
        band = int(self.cfg.data.trusted_bound_band) if bound is None else 0
        if band:
            bounded = [known_beyond_band(b, t, band) for b, t in zip(bounded, self.targets, strict=True)]
        n_new = len(self._trusted_not_training())
        repeat = max(1, round(len(self.train_ids) / max(n_new, 1)))
        return self._beside_training(bounded, images, masks, fg_idx, repeat=repeat)

    def _trusted_not_training(self) -> list[int]:
        """Positions in ``trusted_ids`` of the trusted cases not among the training cases already."""
        training = set(self.train_ids)
        return [k for k, cid in enumerate(self.trusted_ids) if cid not in training]

    def _beside_training(
        self,
        targets: list[np.ndarray],
        images: list[np.ndarray],
        masks: list[np.ndarray],
        fg_idx: list[np.ndarray],
        repeat: int,
    ) -> tuple[Any, list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """The pool of the training cases with ``targets``, then the trusted cases not training already, each
        ``repeat`` times, their trusted masks as target and as given mask (trusted_join, trusted_bound)."""
        kept = [k for k in self._trusted_not_training() for _ in range(repeat)]
        return (
            Joined(self.images, [images[k] for k in kept]),
            [*targets, *(masks[k] for k in kept)],
            [*self.given, *(masks[k] for k in kept)],
            [*self.fg_idx, *(fg_idx[k] for k in kept)],
        )

    def _trusted_pool(self) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """The trusted cases' images and trusted masks, padded to the patch, wherever the split put them (held
        out to validate, or training under ``data.train_on=all``), and their foreground indices."""
        images, masks = [], []
        for cid in self.trusted_ids:
            if cid in self.val_ids:
                j = self.val_ids.index(cid)
                image, mask = self.val_images[j], self.val_labels[j]
            else:
                j = self.train_ids.index(cid)
                image, mask = self.images[j], self.given[j]
            images.append(pad_to_patch(np.asarray(image), self.patch))
            masks.append(pad_to_patch(np.asarray(mask, dtype=np.float32), self.patch))
        return images, masks, [np.flatnonzero(m >= 0.5) for m in masks]

    def _finish_epoch(self) -> int:
        """The first epoch of the trusted finish: the last ``data.trusted_finish`` share of the budget, rounded
        to whole epochs; ``num_epochs`` (never) without it or without trusted cases."""
        share = float(self.cfg.data.trusted_finish)
        if share <= 0 or not self.trusted_ids:
            return self.num_epochs
        return min(self.num_epochs - 1, math.ceil(self.iterations * (1.0 - share) / self.steps_per_epoch))

    def _next_specs(self) -> list[Spec]:
        """(case, seed) of this rank's patches in the next global batch (:func:`next_specs`)."""
        batch, n = int(self.cfg.train.batch), len(self._pool()[0])
        return next_specs(self.rng, self._case_queue, n, batch, self.rank, self.world)

    def _crops(self, specs: list[list[Spec]]) -> StepCrops:
        """The crops of each step's specs, made on access."""
        pos_fraction = float(self.cfg.data.pos_fraction)
        images, _, _, fg_idx = self._pool()
        return StepCrops(images, fg_idx, specs, self.patch, pos_fraction, self.aug)

    def sample_batch(self) -> Batch:
        """This rank's ``train.batch`` patches of the next global batch: foreground-aware random crops
        (RandCropByPosNegLabel's rule), flips and intensity jitter."""
        _, targets, given, _ = self._pool()
        return collate(self._crops([self._next_specs()])[0], targets, given, self.device)

    def _batches(self, steps: int) -> Iterator[Batch]:
        """The batches of ``steps`` steps: made here one by one, or by ``data.workers`` DataLoader workers."""
        workers = int(self.cfg.data.workers)
        if workers <= 0 or steps <= 1 or type(self).sample_batch is not Trainer.sample_batch:
            for _ in range(steps):
                yield self.sample_batch()
            return
        # The epoch's (case, seed) specs are drawn up front from self.rng, so the stream (and the checkpointed
        # RNG state) is the same with and without workers, and the workers' own seeds do not matter.
        steps_crops = self._crops([self._next_specs() for _ in range(steps)])
        _, targets, given, _ = self._pool()
        for crops in worker_crops(steps_crops, workers):
            yield collate(crops, targets, given, self.device)

    # ------------------------------------------------------------------ loop
    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the training forward when ``train.amp`` is on."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _wrap_network(self) -> None:
        """DistributedDataParallel (several ranks, :meth:`use_ddp`) and ``torch.compile`` (``train.compile``).

        Done after the optimiser and any method state (teachers, peers) are built from the plain network, so
        that copies and checkpoints see plain parameter names; :func:`D.unwrap` gets back to it.
        """
        if self.network is D.unwrap(self.network):  # not wrapped yet (fit may run again)
            ddp = self.world > 1 and self.use_ddp()
            compiled = bool(self.cfg.train.compile)
            self.network, self._ddp_params = D.wrap(self.network, self.device, ddp, compiled)

    def run_steps(self, steps: int) -> dict[str, float]:
        """``steps`` optimiser steps; returns the mean of each log over the steps that logged it.

        An epoch that runs longer than :data:`PROGRESS_EVERY` seconds prints a progress line at that
        interval (SVL-DRL's RL epochs can take minutes on a CPU)."""
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        last = time.monotonic()
        step = self.finish_step if self.finishing or self.measuring else self.train_step
        for k, batch in enumerate(self._batches(steps), 1):
            with self._autocast():
                logs = step(batch)
            self.scheduler.step()
            if self.average is not None:
                self.average.update_parameters(D.unwrap(self.network))
            self.iteration += 1
            for key, v in logs.items():
                sums[key] += float(v)
                counts[key] += 1
            if time.monotonic() - last >= PROGRESS_EVERY and k < steps:
                last = time.monotonic()
                elapsed = last - self.timing.epoch_started
                eta = self.timing.eta(self.iteration, self.epoch, extra_done=k, extra_seconds=elapsed)
                self.reporter.info(
                    f"  epoch {self.epoch + 1}/{self.num_epochs}: step {k}/{steps}, it {self.iteration}/"
                    f"{self.iterations}, loss {sums.get('train_loss', 0.0) / max(counts.get('train_loss', 1), 1):.4f}"
                    f"  ETA {fmt_seconds(eta)}"
                )
        return {key: v / counts[key] for key, v in sums.items()}

    # ------------------------------------------------------------------ time estimates
    def stage_of(self, iteration: int) -> int:
        """The training stage of ``iteration`` (1 for methods without stages; SVL-DRL has three)."""
        return 1

    @classmethod
    def stage_cost(cls, cfg: Config, stage: int) -> float:
        """Expected cost of a step of ``stage`` relative to a plain segmentation step, for the ETA until that
        stage has run (then its measured time is used); 1 for a plain method."""
        return 1.0

    @classmethod
    def run_cost(cls, cfg: Config) -> float:
        """Expected cost of a whole run relative to plain training for the same iterations (for ETAs of several
        runs, e.g. the demo's); from :meth:`stage_cost` weighted by the stages' shares of the budget."""
        return 1.0

    @torch.no_grad()
    def validate(self) -> float:
        """Mean Dice of sliding-window predictions against the validation cases' given masks (with trusted cases:
        the trusted cases and their trusted masks, :func:`~svldrl.data.splits.trusted_split`).

        Each rank segments its share of the cases (every ``world``-th); the sums are reduced, so every rank
        returns the mean over all cases.
        """
        if not self.val_labels:
            return math.nan
        net = D.unwrap(self.network)
        predictor, roi = self.make_predictor(net, self.cfg), (self.patch,) * 3
        return validation_dice(
            net,
            predictor,
            self.val_images,
            self.val_labels,
            roi,
            self.cfg.infer,
            self.device,
            self.rank,
            self.world,
        )

    def fit(self) -> Path:
        """Train to ``train.iterations`` steps (lifecycle step 5); returns the run folder.

        Raises:
            RuntimeError: a trainer made with ``resume`` that was not restored (it would train from scratch
                over the run it was asked to continue).
        """
        if self.resume and not self.restored:
            raise RuntimeError("a trainer made with resume=True continues a run: call restore() before fit()")
        self._wrap_network()
        if self.is_main:
            write_text(self.out / "config.yaml", C.dump_config(self.cfg))  # creates the run folder
            # resumed: a kill between the checkpoint and the log leaves the log one epoch short
            if self.history:
                write_history_csv(self.out / "metrics.csv", self.history)
        tb = TensorBoard(self.out / "tensorboard", purge_step=self.iteration or None, enabled=self.is_main)
        self.network.train()
        while self.epoch < self.num_epochs:
            epoch = self.epoch
            self._enter_finish(epoch)
            self._enter_measure(epoch)
            steps = min(self.steps_per_epoch, self.iterations - self.iteration)
            t0 = self.timing.epoch_started = time.monotonic()
            row: dict[str, Any] = {"epoch": epoch}
            # the trusted finish trains the segmentation network alone: no method's own steps or updates
            plain = self.finishing or self.measuring
            row.update(Trainer.run_steps(self, steps) if plain else self.run_steps(steps))
            t_steps = time.monotonic() - t0
            self.timing.note_steps(t_steps, self.iteration, steps)
            row["iteration"] = self.iteration
            row.update({self._finish_mark: 1.0} if self.finishing else self.on_epoch_end(epoch))
            if self.measuring:
                row["trusted_measure"] = 1.0
            self.keep_trusted_targets()
            due = (epoch + 1) % int(self.cfg.train.val_every) == 0 or epoch + 1 == self.num_epochs
            # in the finish the trusted cases train: a score on them would select the checkpoints that fit them
            row["val_dice"] = self.validate() if due and not plain else math.nan
            if self.trusted_ids and self.val_ids:
                row["val_masks"] = "trusted"  # metrics.csv says what val_dice was measured against
            row["lr"] = self.optimizer.param_groups[0]["lr"]
            row["epoch_time"] = time.monotonic() - t0
            row = D.mean_over_ranks(row)
            self.history.append(row)
            self.epoch = epoch + 1
            improved = due and not math.isnan(row["val_dice"]) and row["val_dice"] > self.best_val
            if improved:
                self.best_val = row["val_dice"]
            own_rng = rng_state(self.generator, self.device)
            self._rank_rngs = D.all_gather_object(own_rng) if self.world > 1 else None
            if self.is_main:
                # best before latest: a kill between the two redoes this epoch from the previous latest, which
                # rewrites best; the other order could leave best_val pointing at a model never saved.
                if improved:
                    self._save("checkpoint_best.pt")
                self._save(LATEST)
                title, val_masks = (
                    f"{self.name} ({self.out.name})",
                    "trusted masks" if self.trusted_ids else "given masks",
                )
                write_epoch_logs(self.out, self.history, self.iteration, tb, title, val_masks)
            self.timing.note_overhead(time.monotonic() - t0 - t_steps)
            eta = self.timing.eta(self.iteration, self.epoch)
            self.reporter.info(epoch_line(row, epoch, self.num_epochs, self.iteration, self.iterations, eta))
        if (
            self.cfg.data.trusted_measure
            and self.trusted_ids
            and not any(r.get("trusted_measure") for r in self.history)
        ):
            self.reporter.info(
                "trusted measure (data.trusted_measure) never started: the method's target updates never found the "
                "masks wrong (a method without the trusted shift never does)"
            )
        if self.average is not None:
            D.unwrap(self.network).load_state_dict(self.average.module.state_dict())
            self.reporter.info(
                f"the final model: the moving average of the weights over the trusted finish's "
                f"{int(self.average.n_averaged)} steps (data.trusted_average={self.cfg.data.trusted_average:g})"
            )
        self.choose_threshold()
        if self.is_main:
            self._save("checkpoint_final.pt")
            # the best is the final model when the last epoch validated best: it then carries the final's threshold
            last_best = (
                self.threshold is not None and self.history and self.history[-1]["val_dice"] == self.best_val
            )
            if last_best or not (self.out / "checkpoint_best.pt").exists():
                self._save("checkpoint_best.pt")
        tb.close()
        D.barrier()
        return self.out

    def choose_threshold(self) -> None:
        """``data.trusted_threshold``: the final model's foreground threshold, chosen on the trusted cases held out
        to validate (:func:`~svldrl.rules.choose_threshold`: 0.5 unless another clearly beats it there); logged,
        written to ``trusted_threshold.json`` and carried by ``checkpoint_final.pt`` (docs/method.md section 17).
        Skipped where the trusted cases trained: a threshold chosen on them would fit them."""
        if not self.cfg.data.trusted_threshold:
            return
        trusted = set(self.trusted_ids)
        held = [k for k, cid in enumerate(self.val_ids) if cid in trusted]
        reasons = (
            (not held, "no trusted case was held out to validate"),
            (bool(self.trusted_positions), "the trusted cases trained (data.train_on)"),
            (self.finishing and self.joined, "the trusted cases joined training (data.trusted_join)"),
            (self.finishing, "the trusted finish trained on the trusted cases"),
        )
        why = next((reason for applies, reason in reasons if applies), "")
        if why:
            self.reporter.info(f"trusted threshold (data.trusted_threshold) skipped: {why}")
            return
        net = D.unwrap(self.network).eval()
        with torch.no_grad():
            table = [
                dice_at_thresholds(
                    predict_probability(type(self), net, self.cfg, self.val_images[k]), self.val_labels[k]
                )
                for k in held
            ]
        net.train()
        c = choose_threshold(np.asarray(table))
        self.threshold = c.threshold if c.adopted else None  # kept: infer.threshold stays the run's
        said = (
            f"on the {c.n} trusted cases the Dice-best foreground threshold is p {c.best:.3f}: Dice {c.dice_best:.4f} "
            f"against {c.dice_half:.4f} at 0.5 (gain {100 * (c.dice_best - c.dice_half):.2f} ± "
            f"{100 * c.gain_se:.2f} points)"
        )
        self.reporter.info(
            f"trusted threshold: {said}; checkpoint_final predicts with it"
            if c.adopted
            else f"trusted threshold: {said}, less than 1 point or 2 standard errors: predictions keep "
            f"infer.threshold {self.cfg.infer.threshold:g}"
        )
        if self.is_main:
            write_text(self.out / "trusted_threshold.json", json.dumps(c.__dict__, indent=2) + "\n")

    @property
    def _own_finish(self) -> bool:
        """In the trusted finish proper: the method wanted it (not the trusted cases joining where it declined)."""
        return self.finishing and not self.joined

    def _new_average(self) -> AveragedModel:
        """data.trusted_average: PyTorch's exponential moving average of the network's weights (and buffers)."""
        decay = float(self.cfg.data.trusted_average)
        return AveragedModel(
            D.unwrap(self.network), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True
        )

    def _enter_measure(self, epoch: int) -> None:
        """data.trusted_measure: whether this epoch trains as the bound does, from the logged epochs alone (a resumed
        run decides alike): after the method's first decision that the masks are wrong (:meth:`finish_side`), until
        an epoch of it ends with the method's next target update (:meth:`measured`)."""
        was = self.measuring
        self.measuring = False
        if not self.cfg.data.trusted_measure or self.finishing or self.measured(self.history):
            return
        side, masks = self.finish_side(self.history)
        if not side:
            return
        self.measuring = True
        if self.measure_bound is None:
            self.measure_bound = (side, masks)
        if not was:
            self._case_queue.clear()
            where = "outside" if side > 0 else "inside"
            self.reporter.info(
                f"trusted measure (data.trusted_measure): until the next target update the {len(self.train_ids)} "
                f"training cases train {where} their masks only, with cross-entropy, beside the "
                f"{len(self.trusted_ids)} trusted cases, so that it measures each case with a model that never "
                "learned its mask's wrong extent; no validation meanwhile"
            )

    def measured(self, history: Sequence[dict[str, Any]]) -> bool:
        """Whether an epoch of the trusted measure (data.trusted_measure) ended with the method's target update
        (its log :attr:`update_mark`): its correction then stays (the methods' updates stop)."""
        return any(
            r.get("trusted_measure") == 1.0 and math.isfinite(float(r.get(self.update_mark, math.nan)))
            for r in history
        )

    def _bound_band_said(self) -> str:
        """What data.trusted_bound_band adds to the bound, for its log line."""
        band = int(self.cfg.data.trusted_bound_band)
        if not band:
            return ""
        return (
            f" and (data.trusted_bound_band) more than {band} voxels from their corrected targets' boundaries"
        )

    def _finish_extras(self) -> str:
        """What data.trusted_finish_lr and data.trusted_average add to the finish, for its log line."""
        dc = self.cfg.data
        said = (
            [f"at a constant learning rate of {dc.trusted_finish_lr:g} x train.lr"]
            if dc.trusted_finish_lr
            else []
        )
        if dc.trusted_average:
            said.append(
                f"the final model the weights' moving average over its steps (decay {dc.trusted_average:g})"
            )
        return "".join(f"; {x}" for x in said)

    @property
    def _finish_mark(self) -> str:
        """The ``metrics.csv`` column that marks the finish's epochs: the trusted cases alone, or joined."""
        return "trusted_join" if self.joined else "trusted_bound" if self.bound else "trusted_finish"

    def _enter_finish(self, epoch: int) -> None:
        """Switch to the trusted finish at its first epoch, if the method wants it (:meth:`finish_wanted`, asked
        of the epochs before it, so a resumed run decides alike); the case queue, which holds the rest of a pass
        over the training cases, starts again over the trusted ones."""
        wanted = epoch >= self.finish_from and self.finish_wanted(self.history[: self.finish_from])
        self.joined = epoch >= self.finish_from and not wanted and bool(self.cfg.data.trusted_join)
        self.finishing = wanted or self.joined
        if wanted and self.cfg.data.trusted_average and self.average is None:
            self.average = self._new_average()  # a resumed run restored its own (restore())
        if wanted and epoch == self.finish_from and self.cfg.data.trusted_finish_lr:
            # the schedule's rate was set for this step at the last one: the finish's starts with its first step
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * float(self.cfg.data.trusted_finish_lr)
        if not (wanted and self.cfg.data.trusted_bound):
            self.bound = None
        elif self.bound is None:  # asked once (a resumed run asks at its first epoch, of the same history)
            side, measured = self.finish_side(self.history[: self.finish_from])
            self.bound = (side, measured) if side else None
        if epoch != self.finish_from:
            return
        share = f"data.trusted_finish={self.cfg.data.trusted_finish:g}"
        if not self.finishing:
            self.reporter.info(f"trusted finish ({share}) skipped: {self.finish_declined}")
            return
        self._case_queue.clear()
        if self.joined:
            n = len(self._pool()[0])
            self.reporter.info(
                f"trusted finish ({share}) declined: {self.finish_declined}; instead (data.trusted_join) the last "
                f"{self.iterations - self.iteration} iterations train on all {n} cases, the trusted ones on their "
                "trusted masks, with Dice + CE; no validation from here (checkpoint_best.pt stays the best before it)"
            )
            return
        if self.bound:
            where, how = ("outside", "large") if self.bound[0] > 0 else ("inside", "small")
            self.reporter.info(
                f"trusted finish ({share}): the last {self.iterations - self.iteration} iterations train on the "
                f"{len(self.trusted_ids)} trusted cases' masks with Dice + CE and (data.trusted_bound) on the "
                f"{len(self.train_ids)} others {where} their masks only{self._bound_band_said()}, "
                f"with cross-entropy: the trusted shift found them drawn too {how}{self._finish_extras()}"
                "; no validation from here (checkpoint_best.pt stays the best before it)"
            )
            return
        self.reporter.info(
            f"trusted finish ({share}): the last {self.iterations - self.iteration} iterations train on the "
            f"{len(self.trusted_ids)} trusted cases' masks alone, with Dice + CE{self._finish_extras()}; no "
            "validation from here "
            "(checkpoint_best.pt stays the best before it)"
        )

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        net = D.unwrap(self.network)
        return {
            "method": self.name,
            "backbone": self.cfg.nets.backbone,
            "heads": self.cfg.nets.heads,
            "config": self.cfg.as_dict(),  # plain data: checkpoints load with weights_only
            "model": net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "history": self.history,
            "best_val": self.best_val,
            "rng": {
                **rng_state(self.generator, self.device),
                "numpy": self.rng.bit_generator.state,
                "case_queue": list(self._case_queue),
                **({"ranks": self._rank_rngs} if self._rank_rngs else {}),
            },
            "extra": self.method_state(),
            "cases": self._cases(),
            **({"threshold": self.threshold} if self.threshold is not None else {}),
            **({"finish_average": self.average.state_dict()} if self.average is not None else {}),
        }

    def _cases(self) -> dict[str, list[str]]:
        """Which cases train, validate and are trusted: a resume must find the same (:meth:`restore`)."""
        return {"train": list(self.train_ids), "val": list(self.val_ids), "trusted": list(self.trusted_ids)}

    def _save(self, name: str) -> None:
        save_checkpoint(self.out / name, self._state())

    def restore(self) -> None:
        """Continue from ``checkpoint_latest.pt``: everything :meth:`_state` saved (lifecycle step 4, after
        construction, before :meth:`fit`)."""
        path = self.out / LATEST
        meta = (self.name, self.cfg.nets.backbone, self.cfg.nets.heads)

        def check() -> None:
            load_checkpoint(path, *meta)  # refused on rank 0 -> the same message on every rank
            for tmp in self.out.glob(".*.part*"):  # temporaries of a write that was killed
                tmp.unlink(missing_ok=True)

        D.on_rank0(check)
        ckpt = load_checkpoint(path, *meta)
        # The targets and the sampling queue are per training case: a split that changed since (another
        # --trusted list, an edited trusted.json or dataset) would pair them with other cases, or mix two
        # experiments in one run. Checkpoints from before the record carry none and resume as they did.
        started, now = ckpt.get("cases"), self._cases()
        for role in ("trusted", "train", "val"):
            before = list((started or {}).get(role, now[role]))
            if before != now[role]:
                gone, new = sorted(set(before) - set(now[role])), sorted(set(now[role]) - set(before))
                what = [
                    f"{len(ids)} {word}, e.g. '{ids[0]}'"
                    for ids, word in ((gone, "gone"), (new, "new"))
                    if ids
                ]
                raise UserError(
                    f"cannot resume: the {role} cases changed since the run started ({'; '.join(what) or 'order'}:"
                    " another --trusted list, trusted.json or dataset); resume with the data and --trusted it "
                    "started with, or start a new run",
                    self.out,
                )
        D.unwrap(self.network).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        if self.iteration > self.iterations:  # before fit() writes config.yaml: the run stays as it was
            raise UserError(
                f"cannot resume with train.iterations={self.iterations}: the run has done {self.iteration} "
                "iterations already; a resume keeps or extends the budget",
                self.out,
            )
        self.history, self.best_val = list(ckpt["history"]), float(ckpt["best_val"])
        rng = ckpt["rng"]
        self.rng.bit_generator.state = rng["numpy"]
        self._case_queue = [int(i) for i in rng.get("case_queue", [])]
        fresh = int(self.cfg.seed) + 1000 * self.rank + 7919 * self.iteration
        restore_own_streams(rng, self.rank, self.world, self.generator, self.device, fresh)
        self.load_method_state(ckpt["extra"])
        if "finish_average" in ckpt:
            self.average = self._new_average()
            self.average.load_state_dict(ckpt["finish_average"])
        self.restored = True
        self.reporter.info(f"resumed {self.out} at epoch {self.epoch}, iteration {self.iteration}")
