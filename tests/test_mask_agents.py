"""Mask agents with a trusted reference (svldrl.rl.mask): they learn from a few trusted cases to correct the
given masks of the others."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from scipy import ndimage

from svldrl import config as C
from svldrl.data.dataset import load_case, load_dataset
from svldrl.data.synth import synthesize
from svldrl.nets import build_network
from svldrl.rl.mask import BACKGROUND, FOREGROUND, KEEP, greedy_mask, mask_episode, mask_reward, mask_step
from svldrl.rules import overlap
from svldrl.settings import Nets


def test_mask_step_and_reward_follow_the_equations() -> None:
    q = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    a = torch.tensor([[KEEP, BACKGROUND, FOREGROUND, FOREGROUND]])
    q_next = mask_step(q, a)
    assert q_next.tolist() == [[0.0, 0.0, 1.0, 1.0]]
    ref = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    # (q - G)^2 - (q' - G)^2: +1 for the voxel set right, -1 for the one set wrong, 0 where nothing moved
    assert mask_reward(q, q_next, ref).tolist() == [[0.0, 1.0, 0.0, -1.0]]


def _cases(root: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, given mask drawn 2 voxels too large, clean mask) of 12 easy phantoms."""
    synthesize(root, cases=12, size=24, seed=5, test_cases=1, difficulty="easy")
    dcfg = C.load_config().data
    ball = ndimage.generate_binary_structure(3, 1)
    out = []
    for case in load_dataset(root).train:
        image, label, _ = load_case(case, dcfg)
        clean = label > 0
        out.append((image, ndimage.binary_dilation(clean, ball, iterations=2), clean))
    return out


def _train(
    cases: list, seed: int, reward_sign: float, warmup: int = 100, steps: int = 200
) -> torch.nn.Module:
    """A warm-up of the segmentation on every case (the 8 trusted ones on their masks, the others on their
    given ones), then the agents' episodes on the trusted cases alone, rewarded against their masks."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    nets = Nets(features=[4, 8, 16, 32], heads="light")
    net = build_network(nets, in_channels=1, aux_channels=1, rl_heads=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    dice_ce = DiceCELoss(softmax=True)

    def batch(items: list) -> torch.Tensor:
        return torch.from_numpy(np.stack(items).astype(np.float32))[:, None]

    for it in range(warmup + steps):
        if it < warmup:
            pick = rng.choice(len(cases), 2, replace=False)
            x = batch([cases[i][0] for i in pick])
            y = batch([cases[i][2] if i < 8 else cases[i][1] for i in pick])
            loss = dice_ce(net(x, heads=("seg",))["seg"], torch.cat([1 - y, y], 1))
        else:
            pick = rng.choice(8, 2, replace=False)
            x, q0, truth = (batch([cases[i][k] for i in pick]) for k in range(3))
            reference = truth if reward_sign > 0 else 1 - truth
            loss, _ = mask_episode(net, x, q0, reference, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


def _label_dice_gain(net: torch.nn.Module, cases: list) -> float:
    """Mean label Dice of the 4 untrusted cases' masks after 5 greedy steps, minus before."""
    gains = []
    for image, given, clean in cases[8:]:
        q = greedy_mask(
            net,
            torch.from_numpy(image)[None, None],
            torch.from_numpy(given.astype(np.float32))[None, None],
            5,
        )
        gains.append(overlap(q[0, 0].numpy() > 0.5, clean)[0] - overlap(given, clean)[0])
    return float(np.mean(gains))


@pytest.mark.slow
def test_agents_trained_on_trusted_cases_move_the_other_cases_masks_towards_the_truth(tmp_path: Path) -> None:
    """8 trusted cases of 12: the policy learned on them raises the label Dice of the other 4 cases' dilated masks
    by more than the spread over seeds; rewarded towards the wrong reference, it lowers it (so the test fails if
    the reward or the returns are wrong)."""
    torch.set_num_threads(1)
    cases = _cases(tmp_path / "phantoms")
    gains = [_label_dice_gain(_train(cases, seed, +1.0), cases) for seed in (0, 1)]
    assert min(gains) > 0.03 and np.mean(gains) > 3 * np.std(gains), gains
    assert _label_dice_gain(_train(cases, 0, -1.0, steps=100), cases) < 0
