"""The mask agents' target update (ours, docs/method.md section 15): voxel agents trained on the trusted cases with
a reward against their masks, then applied to correct the given masks of the others.

The agents (:mod:`svldrl.rl.mask`) act on a mask beside its image. They learn where a mask like the given ones
errs from the one kind of mask the trusted cases can show erring that way: the trainer's own segmentation of them,
which has learned the given masks' systematic error with the organ (start state ``q0``; reference ``G``, the
trusted mask). Applied to each training case's given mask, they move it towards the truth.

They abstain (the given masks stay) unless, on the trusted cases,
- they leave the trusted masks themselves as they are (label Dice >= ``rl.agent_keep`` against themselves): a
  correction that moves right masks would move right given masks too;
- and they move the model's masks towards the trusted ones (mean label Dice up).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from svldrl.engine import distributed as D
from svldrl.engine.trainer import Trainer
from svldrl.rl.mask import KEEP, MaskAgentSettings, greedy_mask, mask_episode
from svldrl.rules import overlap, relabel


def _crop(volumes: list[np.ndarray], centre: np.ndarray, patch: int) -> list[np.ndarray]:
    """The ``patch``^3 window of each volume around ``centre``, inside the volume (volumes at least ``patch``)."""
    lo = [int(np.clip(c - patch // 2, 0, s - patch)) for c, s in zip(centre, volumes[0].shape, strict=True)]
    window = tuple(slice(a, a + patch) for a in lo)
    return [v[window] for v in volumes]


def _pad(volume: np.ndarray, patch: int) -> np.ndarray:
    """Zero-pad each axis up to ``patch`` (the windows need at least that)."""
    return np.pad(volume, [(0, max(patch - s, 0)) for s in volume.shape])


def trusted_cases(trainer: Trainer) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, the model's mask, trusted mask) of each trusted validation case, padded to the patch."""
    trusted = set(trainer.trusted_ids)
    out = []
    for j, cid in enumerate(trainer.val_ids):
        if cid in trusted:
            image = trainer.val_images[j]
            model = trainer.predict_probs(image) >= 0.5
            out.append(tuple(_pad(v, trainer.patch) for v in (image, model, trainer.val_labels[j] >= 0.5)))
    return out


def warm_start(agents: torch.nn.Module, seg: torch.nn.Module) -> None:
    """The agents' encoder and shared decoder from the segmentation network's (their policy then reads features
    that already tell organ from surroundings), and their policy set to ``keep`` (last layer zero, bias +2 for
    ``keep``: 0.79 of the first sampled moves keep, every greedy one), so that untrained agents leave a mask as it
    is rather than scramble it."""
    own = seg.state_dict()
    state = {k: v for k, v in own.items() if k.startswith("encoder.")}
    state.update(
        {
            "decoders.shared." + k[len("decoders.seg.") :]: v
            for k, v in own.items()
            if k.startswith("decoders.seg.")
        }
    )
    agents.load_state_dict(state, strict=False)
    with torch.no_grad():  # a zero last layer: the policy is its bias until the first update moves it
        conv = agents.out["policy"].conv.conv
        conv.weight.zero_()
        conv.bias.zero_()
        conv.bias[KEEP] = 2.0


def _centres(model: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a patch may be centred: voxels where the model's mask and the trusted one differ, and voxels of the
    trusted mask's boundary (each falling back to the other, then to the whole volume, when empty)."""
    boundary = truth & ~ndimage.binary_erosion(truth)
    wrong, edge = np.argwhere(model != truth), np.argwhere(boundary)
    every = np.argwhere(np.ones_like(truth))
    return (wrong if len(wrong) else edge if len(edge) else every), (edge if len(edge) else every)


def train_agents(trainer: Trainer, cases: list, episodes: int) -> dict[str, float]:
    """``episodes`` episodes of the agents on patches of the trusted cases, each towards the trusted mask, from
    the model's mask (a patch centred where the two differ) or, with probability ``rl.agent_right_share``, from the
    trusted mask itself (centred on its boundary: a right mask must be kept, so the agents must read the image to
    know which boundary is wrong, not erode every boundary alike); flipped at random on each axis (8 cases are
    few)."""
    settings = MaskAgentSettings()
    agents, rng, patch = trainer.agents, trainer.rng, trainer.patch
    right_share = float(trainer.cfg.rl.agent_right_share)
    centres = [_centres(model, truth) for _, model, truth in cases]
    agents.train()
    logs: dict[str, list[float]] = {}
    for _ in range(episodes):
        xs, qs, gs = [], [], []
        for k in rng.integers(len(cases), size=int(trainer.cfg.train.batch)):
            image, model, truth = cases[k]
            right = rng.random() < right_share
            where = centres[k][1 if right else 0]
            start = truth if right else model
            crops = _crop([image, start, truth], where[rng.integers(len(where))], patch)
            flip = tuple(a for a in range(3) if rng.random() < 0.5)
            x, q, g = (np.flip(c, flip) if flip else c for c in crops)
            xs.append(x)
            qs.append(q)
            gs.append(g)
        x, q0, g = (
            torch.from_numpy(np.stack(v).astype(np.float32))[:, None].to(trainer.device) for v in (xs, qs, gs)
        )
        loss, ep_logs = mask_episode(agents, x, q0, g, settings, generator=trainer.generator)
        trainer.optimise(loss, optimizer=trainer.agents_optimizer, network=agents)
        for key, value in ep_logs.items():
            logs.setdefault(key, []).append(value)
    return {f"agents/{k.split('/')[-1]}": float(np.mean(v)) for k, v in logs.items()}


def correct(trainer: Trainer, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask`` (boolean) after the agents' greedy ``t_max`` steps over the whole volume, by windows of the patch
    they trained on. Not in one pass over the volume: on the development draw that took the dilated masks to label
    Dice 0.45 where windows took them to 0.91 (the network's instance norms see other statistics on another size)."""
    shape = mask.shape
    x, q = (torch.from_numpy(_pad(v, trainer.patch).astype(np.float32))[None, None] for v in (image, mask))
    trainer.agents.eval()
    steps, roi = MaskAgentSettings().t_max, (trainer.patch,) * 3
    q = greedy_mask(trainer.agents, x.to(trainer.device), q.to(trainer.device), steps, roi)
    return q[0, 0].cpu().numpy()[tuple(slice(0, s) for s in shape)] >= 0.5


def trusted_agents_update(trainer: Trainer) -> dict[str, Any]:
    """Train the agents on the trusted cases, check them there, and set every training target to its given mask
    as they correct it, or leave the given masks where the check fails (module docstring).

    Returns:
        The agents' training logs, ``charts/agents_keep`` (mean label Dice of the trusted masks after the agents
        against themselves), ``charts/agents_model_before`` / ``_after`` (mean label Dice of the model's masks of the
        trusted cases against the trusted masks, before and after the agents; on the cases they trained on),
        ``charts/agents_applied`` (1 or 0), ``charts/agents_label_change`` (mean label Dice of the new targets
        against the given masks) and ``charts/target_changed``.
    """
    rl = trainer.cfg.rl
    cases = trusted_cases(trainer)
    if not cases:
        return {}
    # the first update (the agents' optimiser has never stepped): start from the trained network (PixelRL's phase 2)
    if not trainer.agents_optimizer.state:
        warm_start(trainer.agents, D.unwrap(trainer.network))
    logs = train_agents(trainer, cases, int(rl.agent_episodes))
    keep = float(np.mean([overlap(correct(trainer, x, g), g)[0] for x, _, g in cases]))
    before = float(np.mean([overlap(m, g)[0] for _, m, g in cases]))
    after = float(np.mean([overlap(correct(trainer, x, m), g)[0] for x, m, g in cases]))
    applied = keep >= float(rl.agent_keep) and after > before
    changed = total = 0
    similarity = []
    for i, (image, given) in enumerate(zip(trainer.images, trainer.given, strict=True)):
        is_fg = np.asarray(given) >= 0.5
        new_fg = correct(trainer, image, is_fg) if applied else is_fg
        new = relabel(given, new_fg & ~is_fg, is_fg & ~new_fg)
        changed += int(np.count_nonzero(new != trainer.targets[i]))
        total += new.size
        similarity.append(overlap(new_fg, is_fg)[0])
        trainer.targets[i][...] = new  # in place: the targets may live in shared memory (rl.async_workers)
        trainer.target_notes.setdefault(trainer.train_ids[i], {})["agents"] = (
            "corrected" if applied else "kept"
        )
    _report(trainer, keep, before, after, applied)
    return {
        **logs,
        "charts/agents_keep": keep,
        "charts/agents_model_before": before,
        "charts/agents_model_after": after,
        "charts/agents_applied": float(applied),
        "charts/agents_label_change": float(np.mean(similarity)),
        "charts/target_changed": changed / max(total, 1),
    }


def _report(trainer: Trainer, keep: float, before: float, after: float, applied: bool) -> None:
    """One line to the run's log each time the decision changes (and the first time)."""
    if getattr(trainer, "agents_decision", None) == applied:
        return
    trainer.agents_decision = applied
    what = "applied to the given masks" if applied else "not applied (the given masks stay)"
    trainer.reporter.info(
        f"mask agents: on the trusted cases they keep the trusted masks at label Dice {keep:.3f} (needed "
        f"{float(trainer.cfg.rl.agent_keep):.3f}) and move the model's masks from {before:.3f} to {after:.3f}; {what}"
    )
