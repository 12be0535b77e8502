"""The RL core: actions, rewards, returns, vA3C losses, stages, whole episodes (method.md 3-6, 9)."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss

from svldrl.nets import build_network
from svldrl.rl import (
    ACTION_SPACES,
    ENHANCE,
    KEEP,
    LOWER,
    RAISE,
    REWARD_TARGETS,
    REWARDS,
    WEAKEN,
    GivenReference,
    IntensityActions,
    LabelActions,
    PaperReward,
    Reward,
    RewardConv,
    RunningStd,
    TeacherReference,
    VoxelReward,
    a3c_losses,
    count_components,
    greedy_refine,
    intensity_episode,
    intensity_reward,
    intensity_step,
    label_episode,
    label_reward,
    label_step,
    local_tv,
    n_step_returns,
    region_energy_slope,
    sample_actions,
    sample_eps,
    stage_at,
    stage_weights,
)
from svldrl.rl import reward as reward_module
from svldrl.settings import RL, Nets

TINY = Nets(backbone="unet", features=[4, 8, 16])


def vol(values: list[float]) -> torch.Tensor:
    """A (1, 1, 1, 1, n) volume: n voxels along the last axis."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, 1, -1)


def cube(size: int = 16, lo: int = 4, hi: int = 12) -> torch.Tensor:
    y = torch.zeros(1, 1, size, size, size)
    y[..., lo:hi, lo:hi, lo:hi] = 1
    return y


# --- environment -------------------------------------------------------------------------------


def test_intensity_actions_keep_enhance_weaken_and_clip() -> None:
    x = vol([0.5, 0.5, 0.9, 0.2, 0.0])
    actions = vol([KEEP, ENHANCE, ENHANCE, WEAKEN, ENHANCE]).long()
    eps = vol([0.7, 0.5, 1.0, 1.0, 1.0])
    x_next = intensity_step(x, actions, eps, action_scale=0.3)
    # keep; 0.5 * 1.15; 0.9 * 1.3 clipped to 1; 0.2 * 0.7; 0 stays 0
    assert torch.allclose(x_next, vol([0.5, 0.575, 1.0, 0.14, 0.0]))
    assert x_next.min() >= 0 and x_next.max() <= 1


def test_label_actions_raise_lower_and_clip() -> None:
    q = vol([0.0, 0.5, 1.0, 0.9])
    actions = vol([LOWER, RAISE, RAISE, KEEP]).long()
    assert torch.allclose(label_step(q, actions, step=0.25), vol([0.0, 0.75, 1.0, 0.9]))


def test_eps_and_actions_are_reproducible_from_the_generator() -> None:
    a = sample_eps((2, 1, 4, 4, 4), torch.Generator().manual_seed(3))
    b = sample_eps((2, 1, 4, 4, 4), torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 1
    logits = torch.zeros(1, 3, 8, 8, 8)
    logits[:, WEAKEN] = 50.0  # a policy sure of "weaken"
    assert (sample_actions(logits, torch.Generator().manual_seed(0)) == WEAKEN).all()
    uniform = sample_actions(torch.zeros(1, 3, 16, 16, 16), torch.Generator().manual_seed(0))
    fractions = torch.stack([(uniform == k).float().mean() for k in range(3)])
    assert torch.allclose(fractions, torch.full((3,), 1 / 3), atol=0.03)


# --- rewards -----------------------------------------------------------------------------------


def test_local_tv_is_the_sum_of_forward_differences() -> None:
    assert torch.equal(local_tv(vol([0.0, 1.0, 0.0, 0.0])), vol([1.0, 1.0, 0.0, 0.0]))
    f = torch.zeros(1, 1, 3, 3, 3)
    f[0, 0, 1, 1, 1] = 1
    c = local_tv(f)[0, 0]
    assert c[1, 1, 1] == 3  # |0 - 1| towards each of its three forward neighbours
    assert c[0, 1, 1] == 1 and c[1, 0, 1] == 1 and c[0, 0, 0] == 0  # voxels before it see one step


def test_step_towards_the_target_earns_dice_and_voxel_reward() -> None:
    y = cube()
    f_t = torch.full_like(y, 0.5)
    f_next = 0.5 + 0.3 * (2 * y - 1)  # closer to y everywhere
    r, terms = intensity_reward(f_t, f_next, y)
    assert terms["dice"] > 0 and terms["voxel"] > 0
    assert (r[y.bool()] > 0).all()
    assert math.isclose(float(sum(terms.values())), float(r.mean()), rel_tol=1e-5)
    r_back, _ = intensity_reward(f_next, f_t, y)  # the step back is punished
    assert float(r_back.mean()) < 0


def test_fragmenting_the_mask_costs_continuity_and_components() -> None:
    y = cube()
    split = y.clone()
    split[..., 8, :, :] = 0  # cut the cube in two
    r, terms = intensity_reward(y, split, y, w_dice=0, w_vox=0, w_cont=0.1, w_cc=1.0)
    assert terms["continuity"] < 0
    assert math.isclose(float(terms["components"]), -1 / 16**3, rel_tol=1e-5)  # one more component
    assert float(r.mean()) < 0
    _, off = intensity_reward(y, split, y)  # w_cc = 0 by default: the term is off
    assert float(off["components"]) == 0


def test_count_components_with_cc3d_and_the_scipy_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    m = torch.zeros(2, 8, 8, 8)
    m[0, 1:3, 1:3, 1:3] = 1
    m[0, 5:7, 5:7, 5:7] = 1
    m[1, 4, 4, 4] = 1
    m[1, 5, 5, 5] = 1  # diagonal neighbour: one component with 26-connectivity
    assert count_components(m).tolist() == [2, 1]
    monkeypatch.setattr(reward_module, "cc3d", None)
    assert count_components(m).tolist() == [2, 1]


def test_label_reward_follows_a_confident_teacher_and_charges_the_prior() -> None:
    zeros = torch.zeros(1, 1, 4, 4, 4)
    q_next = zeros + 0.25
    confident = zeros + 0.95  # teacher says foreground, confidence |2p - 1| = 0.9
    r, terms = label_reward(zeros, q_next, confident, given=zeros, w_teacher=1.0, w_cont=0.1, w_prior=0.5)
    assert torch.allclose(terms["teacher"], torch.tensor(0.9 * 0.25))
    assert torch.allclose(terms["prior"], torch.tensor(-0.5 * 0.25))
    assert (r > 0).all()
    unsure = zeros + 0.5  # no confidence: moving away from the given mask only pays the prior
    r, terms = label_reward(zeros, q_next, unsure, given=zeros, w_prior=0.5)
    assert torch.allclose(r, zeros - 0.125) and float(terms["teacher"]) == 0
    r_back, _ = label_reward(q_next, zeros, unsure, given=zeros, w_prior=0.5)  # moving back is paid back
    assert torch.allclose(r_back, zeros + 0.125)


def test_region_reward_lowers_labels_on_background_intensity_and_raises_them_on_the_organ() -> None:
    """rl.w_region: a mask dilated onto background intensity is rewarded for shrinking back (slope +1 there:
    lowering q by 0.25 earns 0.25 x w_region), organ voxels for rising (slope -1 at the organ's mean); the
    slope is hand-computed from the q-weighted means."""
    image = torch.zeros(1, 1, 4, 4, 4)
    image[..., :2, :, :] = 1.0  # organ: the first two slices
    given = torch.zeros(1, 1, 4, 4, 4)
    given[..., :3, :, :] = 1.0  # dilated by one slice onto the background
    # c1 = (2 x 1 + 1 x 0) / 3 = 2/3, c0 = 0; slope at x = 0: (4/9 - 0) / (4/9) = 1, at x = 1: (1/9 - 1) / (4/9) = -2
    slope = region_energy_slope(image, given)
    assert torch.allclose(slope[..., 2, :, :], torch.tensor(1.0)) and torch.allclose(
        slope[..., 0, :, :], torch.tensor(-2.0)
    )
    lower = given.clone()
    lower[..., 2, :, :] = 0.75
    r, terms = label_reward(
        given, lower, given * 0 + 0.5, given, w_cont=0.0, w_prior=0.5, region_slope=slope, w_region=1.0
    )
    # the dilated slice: region +0.25 against the prior's -0.125; everywhere else nothing moved
    assert torch.allclose(r[..., 2, :, :], torch.tensor(0.125)) and torch.allclose(
        r[..., :2, :, :], torch.tensor(0.0)
    )
    assert "region" in terms
    r_off, terms_off = label_reward(
        given, lower, given * 0 + 0.5, given, w_cont=0.0, w_prior=0.5
    )  # default: off
    assert torch.allclose(r_off[..., 2, :, :], torch.tensor(-0.125)) and "region" not in terms_off
    assert (region_energy_slope(image, torch.zeros_like(given)) == 0).all()  # no foreground: no reference
    # the class means come from the given mask, whatever the current target: lowering a background slice that
    # the target had raised to 0.5 earns 0.25 (region) + 0.125 (back towards the given mask)
    q_t = given.clone()
    q_t[..., 3, :, :] = 0.5
    q_next = q_t.clone()
    q_next[..., 3, :, :] = 0.25
    r, _ = label_reward(
        q_t, q_next, given * 0 + 0.5, given, w_cont=0.0, w_prior=0.5, region_slope=slope, w_region=1.0
    )
    assert torch.allclose(r[..., 3, :, :], torch.tensor(0.375))


def test_running_std_matches_the_std_of_everything_seen_and_survives_a_checkpoint() -> None:
    torch.manual_seed(0)
    batches = [torch.randn(100) * 3 + 1, torch.randn(37) * 0.5, torch.randn(250) + 4]
    norm = RunningStd()
    for b in batches:
        norm.update(b)
    expected = torch.cat(batches).double().std(unbiased=False)
    assert torch.allclose(norm.std, expected)
    restored = RunningStd()
    restored.load_state_dict(norm.state_dict())
    x = torch.ones(5)
    assert torch.allclose(restored(x, update=False), x / expected.float())


# --- returns and losses ------------------------------------------------------------------------


def test_n_step_returns_by_hand_with_and_without_the_reward_conv() -> None:
    rewards = [vol([1.0]), vol([2.0]), vol([3.0])]
    bootstrap = vol([10.0]).requires_grad_()
    # R2 = 3 + 0.5 * 10 = 8; R1 = 2 + 0.5 * 8 = 6; R0 = 1 + 0.5 * 6 = 4
    plain = n_step_returns(rewards, bootstrap, gamma=0.5)
    assert [float(R) for R in plain] == [4.0, 6.0, 8.0]
    assert not any(R.requires_grad for R in plain)  # the bootstrap is detached
    conv = RewardConv(3)
    identity = n_step_returns(rewards, bootstrap, 0.5, conv)
    assert [float(R.detach()) for R in identity] == [4.0, 6.0, 8.0]  # identity init
    with torch.no_grad():
        conv.weight[0, 0, 1, 1, 1] = 2.0  # K doubles the future: R2 = 13, R1 = 15, R0 = 16
    doubled = n_step_returns(rewards, bootstrap, 0.5, conv)
    assert [float(R.detach()) for R in doubled] == [16.0, 15.0, 13.0]
    doubled[0].backward()
    assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0


def test_a3c_losses_by_hand() -> None:
    R, V = vol([1.0]), vol([0.5])
    logits = torch.zeros(1, 3, 1, 1, 1)  # uniform policy
    losses = a3c_losses([R], [V], [logits], [vol([KEEP]).long()], entropy_coef=0.01)
    assert math.isclose(float(losses["L_value"]), 0.25, rel_tol=1e-6)  # (1 - 0.5)^2
    expected_policy = -math.log(1 / 3) * 0.5 - 0.01 * math.log(3)  # -log pi * A - beta_H * H
    assert math.isclose(float(losses["L_policy"]), expected_policy, rel_tol=1e-5)
    assert math.isclose(float(losses["entropy"]), math.log(3), rel_tol=1e-5)
    assert math.isclose(float(losses["advantage"]), 0.5, rel_tol=1e-6)


def test_policy_loss_sends_no_gradient_into_the_value_head() -> None:
    torch.manual_seed(0)
    net = build_network(TINY)
    out = net(torch.rand(1, 1, 16, 16, 16), heads=("seg", "value", "policy"))
    actions = sample_actions(out["policy"], torch.Generator().manual_seed(0))
    returns = [torch.rand(1, 1, 16, 16, 16)]
    losses = a3c_losses(returns, [out["value"]], [out["policy"]], [actions], entropy_coef=0.001)
    losses["L_policy"].backward()
    assert all(p.grad is None for p in net.decoders["value"].parameters())
    assert all(p.grad is None for p in net.out["value"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.decoders["policy"].parameters())


# --- stages ------------------------------------------------------------------------------------


def test_stages_switch_at_the_configured_fractions() -> None:
    assert [stage_at(i, 100) for i in (0, 29, 30, 49, 50, 99)] == [1, 1, 2, 2, 3, 3]
    assert [stage_at(i, 10, warmup=0.7, transition=0.1) for i in (6, 7, 8)] == [1, 2, 3]
    assert stage_at(0, 10, warmup=0.0, transition=0.0) == 3
    assert stage_weights(1) == (1.0, 0.0, 0.0)
    assert stage_weights(2, lam=0.3) == pytest.approx((0.7, 0.3, 0.0))
    assert stage_weights(3, alpha=0.2, beta=0.1) == pytest.approx((0.7, 0.2, 0.1))
    with pytest.raises(ValueError):
        stage_weights(4)


# --- episodes ----------------------------------------------------------------------------------

LOG_KEYS = {
    "losses/value",
    "losses/policy",
    "losses/dice",
    "charts/reward",
    "charts/entropy",
    "charts/action_frac/keep",
    "charts/action_frac/enhance",
    "charts/action_frac/weaken",
}


def _rl_cfg(**changes: object) -> RL:
    return RL(**changes)


def _soft_target_loss(logits: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return DiceLoss(softmax=True)(logits, torch.cat([1 - q, q], dim=1))


@pytest.mark.parametrize("stage", [2, 3])
def test_intensity_episode_trains_value_always_and_policy_only_in_stage_3(stage: int) -> None:
    torch.manual_seed(0)
    net = build_network(TINY)
    reward_conv = RewardConv(3)
    encoder_passes: list[int] = []
    net.encoder.register_forward_hook(lambda *_: encoder_passes.append(1))
    x0, y = torch.rand(2, 1, 16, 16, 16), cube().repeat(2, 1, 1, 1, 1)
    result = intensity_episode(
        net,
        x0,
        y,
        _rl_cfg(t_max=2),
        stage,
        torch.Generator().manual_seed(0),
        DiceCELoss(to_onehot_y=True, softmax=True),
        RunningStd(),
        reward_conv,
    )
    assert torch.isfinite(result.loss)
    assert encoder_passes == [1] * 3  # T + 1 states, one encoder pass each
    assert LOG_KEYS <= result.logs.keys()
    assert {"charts/reward_terms/dice", "charts/reward_terms/continuity"} <= result.logs.keys()
    assert math.isclose(
        sum(result.logs[f"charts/action_frac/{a}"] for a in ("keep", "enhance", "weaken")), 1.0
    )
    assert result.final.shape == x0.shape and 0 <= result.final.min() and result.final.max() <= 1
    assert not torch.equal(result.final, x0)  # the agents acted
    result.loss.backward()
    assert reward_conv.weight.grad is not None
    assert any(p.grad is not None for p in net.decoders["value"].parameters())
    policy_grads = [p.grad for p in net.decoders["policy"].parameters() if p.grad is not None]
    assert bool(policy_grads) == (stage == 3)


def test_same_seed_same_episode() -> None:
    def run() -> float:
        torch.manual_seed(0)
        net = build_network(TINY)
        x0, y = torch.rand(1, 1, 16, 16, 16), cube()
        gen = torch.Generator().manual_seed(5)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        return float(intensity_episode(net, x0, y, _rl_cfg(t_max=2), 3, gen, loss_fn).loss.detach())

    assert run() == run()


@pytest.mark.parametrize("stage", [2, 3])
def test_label_episode_refines_the_soft_target(stage: int) -> None:
    torch.manual_seed(0)
    net = build_network(TINY, aux_channels=1)
    decoder_passes: list[int] = []
    for decoder in net.decoders.values():
        decoder.register_forward_hook(lambda *_: decoder_passes.append(1))
    y = cube().repeat(2, 1, 1, 1, 1)
    teacher_p = torch.rand_like(y)
    result = label_episode(
        net,
        torch.rand(2, 1, 16, 16, 16),
        y.clone(),
        y,
        teacher_p,
        _rl_cfg(t_max=3, action_space="label", w_region=1.0),
        stage,
        torch.Generator().manual_seed(0),
        _soft_target_loss,
        RunningStd(),
        RewardConv(3),
    )
    assert torch.isfinite(result.loss)
    assert decoder_passes == [1] * 3  # the image's decoders ran once; the steps ran only the aux tails
    terms = {"charts/reward_terms/teacher", "charts/reward_terms/prior", "charts/reward_terms/region"}
    assert LOG_KEYS | terms <= result.logs.keys()
    q = result.final
    assert q.shape == y.shape and 0 <= q.min() and q.max() <= 1 and not torch.equal(q, y)
    result.loss.backward()
    assert any(p.grad is not None for p in net.fuse["value"].parameters())
    assert any(p.grad is not None for p in net.decoders["seg"].parameters())
    assert any(p.grad is not None for p in net.fuse["policy"].parameters()) == (stage == 3)
    with pytest.raises(ValueError, match="aux_channels"):
        label_episode(build_network(TINY), y, y, y, y, _rl_cfg(), stage, None, _soft_target_loss)


def test_a_reward_is_one_small_class_and_the_episode_uses_the_one_rl_reward_names() -> None:
    """A new reward is one class (``__call__(f_t, f_next, y) -> (r, terms)``): the episode rewards with it and logs
    its terms; without one it uses the class ``rl.reward`` names in REWARDS (the same draws and loss)."""

    class Half(Reward):
        name = "half"

        def __call__(self, f_t, f_next, y):
            r = torch.full_like(f_t, 0.5)
            return r, {"half": r.mean()}

    def run(cfg: RL, reward: Reward | None = None):
        torch.manual_seed(0)
        net = build_network(TINY)
        x0, y = torch.rand(1, 1, 16, 16, 16), cube()
        gen = torch.Generator().manual_seed(5)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        return intensity_episode(net, x0, y, cfg, 3, gen, loss_fn, reward=reward)

    cfg = _rl_cfg(t_max=2)
    half = run(cfg, Half(cfg))
    assert half.logs["charts/reward"] == 0.5 and half.logs["charts/reward_terms/half"] == 0.5
    for name, cls in (("voxel", VoxelReward), ("paper", PaperReward)):
        by_name, by_class = run(_rl_cfg(t_max=2, reward=name)), run(cfg, cls(cfg))
        assert by_name.logs == by_class.logs and torch.equal(by_name.loss, by_class.loss)
    f_t, f_next, y = torch.rand(3, 2, 1, 8, 8, 8).unbind(0)
    r, terms = VoxelReward(cfg)(f_t, f_next, y)
    r_fn, terms_fn = intensity_reward(f_t, f_next, y, cfg.w_dice, cfg.w_vox, cfg.w_cont, cfg.w_cc)
    assert torch.equal(r, r_fn) and terms.keys() == terms_fn.keys()


def test_action_spaces_declare_what_the_trainer_must_provide() -> None:
    cfg = _rl_cfg()
    given, teacher = GivenReference(cfg), TeacherReference(cfg)
    intensity = IntensityActions(cfg, VoxelReward(cfg), given)
    assert (intensity.aux_channels, intensity.keeps_targets, intensity.refines_images) == (0, False, True)
    assert not intensity.needs_teacher and IntensityActions(cfg, VoxelReward(cfg), teacher).needs_teacher
    label = LabelActions(cfg, VoxelReward(cfg), given)
    assert (label.aux_channels, label.keeps_targets, label.refines_images, label.needs_teacher) == (
        1,
        True,
        False,
        True,
    )
    y = cube()
    assert given(y, torch.rand_like(y), None) is y
    with pytest.raises(ValueError, match="teacher"):
        teacher(y, torch.rand_like(y), None)
    # time estimates: t_max + 1 full passes (1.5 plain steps each with three decoders), or one pass + tails
    assert (
        IntensityActions.episode_cost(3, "decoders") == 6.0 and LabelActions.episode_cost(3, "light") == 2.1
    )


def test_each_registry_lists_the_choices_of_its_setting() -> None:
    """settings.py (the bottom layer) cannot import the registries: its choices are written out, and kept equal
    to them here. A new reward, action space or target update needs its name in both."""
    from svldrl.config import SCHEMA
    from svldrl.methods.kit.targets import TARGET_UPDATES

    assert set(SCHEMA["rl.reward"]["choices"]) == set(REWARDS)
    assert set(SCHEMA["rl.reward_target"]["choices"]) == set(REWARD_TARGETS)
    assert set(SCHEMA["rl.action_space"]["choices"]) == set(ACTION_SPACES)
    assert set(SCHEMA["rl.target_update"]["choices"]) == {"none", *TARGET_UPDATES}


def test_episodes_refuse_stage_1() -> None:
    with pytest.raises(ValueError, match="stage"):
        intensity_episode(build_network(TINY), cube(), cube(), _rl_cfg(), 1, None, DiceLoss(softmax=True))


def test_greedy_refine_follows_the_argmax_policy() -> None:
    net = build_network(TINY).eval()
    with torch.no_grad():  # a policy head that always says "enhance"
        net.out["policy"].conv.conv.weight.zero_()
        net.out["policy"].conv.conv.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    x = torch.full((1, 1, 16, 16, 16), 0.5)
    same, keep = greedy_refine(net, x, steps=0)
    assert torch.equal(same, x) and (keep == KEEP).all()
    refined, last = greedy_refine(net, x, steps=2, action_scale=0.3)
    assert (last == ENHANCE).all()
    assert torch.allclose(refined, torch.full_like(x, 0.5 * 1.15**2))  # eps = E[eps] = 0.5 without generator


# ---------------------------------------------------------------- the paper's reward (rl.reward = paper)


def test_paper_reward_matches_a_hand_computation():
    from svldrl.rl.reward import paper_continuity, paper_reward

    y = torch.zeros(1, 1, 6, 6, 6)
    y[0, 0, 1:3, 1:3, 1:3] = 1.0  # 8 voxels
    f_t = torch.zeros_like(y)
    f_t[0, 0, 1:3, 1:3, 1] = 1.0  # half of it: Dice 2*4/(4+8) = 2/3
    f_next = y.clone()
    f_next[0, 0, 5, 5, 5] = 1.0  # all of it plus a stray voxel: Dice 16/17, two components
    # local TV of f_next: the 2^3 cube has 3 faces x 4 voxels on its far sides and 3 x 4 on its near sides
    # (forward differences), 24; the stray corner voxel adds 3 (its near faces; the far ones leave the volume)
    tv_mean = (24 + 3) / 216
    expected_c = 0.01 * 1 + 0.1 * tv_mean
    assert float(paper_continuity(f_next)[0]) == pytest.approx(expected_c, rel=1e-5)
    r, terms = paper_reward(f_t, f_next, y)
    expected = (16 / 17 - 2 / 3) - expected_c
    assert r.shape == y.shape and torch.allclose(r, torch.full_like(r, expected), atol=1e-5)
    assert float(terms["dice"]) == pytest.approx(16 / 17 - 2 / 3, rel=1e-4)
    assert float(terms["continuity"]) == pytest.approx(-expected_c, rel=1e-5)
    # Fragmenting is penalised, not rewarded (the summary's "+ C" read literally would reward it).
    r_same, _ = paper_reward(f_next, f_next, y)
    r_clean, _ = paper_reward(y, y, y)
    assert float(r_same.mean()) < float(r_clean.mean()) < 0
