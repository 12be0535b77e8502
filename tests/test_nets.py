"""Networks: one encoder pass, three heads, only the decoders asked for run (method.md section 2)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from monai.inferers import sliding_window_inference

from svldrl.nets import SegRLNet, build_network
from svldrl.settings import Nets

TINY = Nets(backbone="unet", features=[4, 8, 16, 32])
ALL = ("seg", "value", "policy")


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("size", [32, 64])
def test_unet_heads_have_the_documented_shapes(size: int) -> None:
    net = build_network(TINY).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 1, size, size, size), heads=ALL)
    assert out["seg"].shape == (1, 2, size, size, size)
    assert out["value"].shape == (1, 1, size, size, size)
    assert out["policy"].shape == (1, 3, size, size, size)
    assert set(net(torch.rand(1, 1, 32, 32, 32)).keys()) == {"seg"}  # default: segmentation only


def test_unet_rejects_sizes_not_divisible_by_its_depth() -> None:
    net = build_network(TINY)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 1, 20, 32, 32))
    with pytest.raises(ValueError, match="heads"):
        net(torch.rand(1, 1, 32, 32, 32), heads=("seg", "critic"))


def test_segmentation_only_call_leaves_value_and_policy_decoders_untouched() -> None:
    net = build_network(TINY)
    calls: list[str] = []
    for name, module in [("encoder", net.encoder), *net.decoders.items()]:
        module.register_forward_hook(lambda *_, name=name: calls.append(name))
    net(torch.rand(1, 1, 16, 16, 16), heads=ALL)
    assert sorted(calls) == ["encoder", "policy", "seg", "value"]  # one encoder pass for three heads
    calls.clear()
    net.segment(torch.rand(1, 1, 16, 16, 16)).mean().backward()
    assert calls == ["encoder", "seg"]  # costs what a plain U-Net costs
    assert _grad_norm(net.decoders["seg"]) > 0 and _grad_norm(net.encoder) > 0
    for head in ("value", "policy"):
        assert all(p.grad is None for p in net.decoders[head].parameters())
        assert all(p.grad is None for p in net.out[head].parameters())


def test_light_heads_share_one_decoder_so_they_save_two_decoders() -> None:
    decoders, light = build_network(TINY), build_network(replace(TINY, heads="light"))
    one_decoder = sum(p.numel() for p in decoders.decoders["seg"].parameters())
    assert decoders.num_parameters - light.num_parameters == 2 * one_decoder
    assert list(light.decoders) == ["shared"]
    out = light(torch.rand(1, 1, 16, 16, 16), heads=ALL)
    sum(o.mean() for o in out.values()).backward()
    assert all(_grad_norm(light.out[h]) > 0 for h in ALL)


@pytest.mark.parametrize("heads", ["decoders", "light"])
@pytest.mark.parametrize("into_shared", [True, False])
def test_rl_losses_reach_the_shared_layers_only_when_configured(heads: str, into_shared: bool) -> None:
    net = build_network(replace(TINY, heads=heads, rl_grad_into_shared=into_shared))
    shared = [net.encoder] + ([net.decoders["shared"]] if heads == "light" else [])
    out = net(torch.rand(1, 1, 16, 16, 16), heads=ALL)
    (out["value"].square().mean() + out["policy"].mean()).backward()  # RL losses only
    assert all(_grad_norm(net.out[h]) > 0 for h in ("value", "policy"))  # their own heads always learn
    assert (sum(_grad_norm(m) for m in shared) > 0) == into_shared
    net.zero_grad(set_to_none=True)
    net(torch.rand(1, 1, 16, 16, 16), heads=ALL)["seg"].mean().backward()
    assert all(_grad_norm(m) > 0 for m in shared)  # segmentation trains the shared layers either way


def test_aux_reaches_value_and_policy_but_not_segmentation() -> None:
    torch.manual_seed(0)
    net = build_network(TINY, aux_channels=1).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        a = net(x, heads=ALL, aux=torch.zeros(1, 1, 16, 16, 16))
        b = net(x, heads=ALL, aux=torch.ones(1, 1, 16, 16, 16))
        feats = net.trunk(x, heads=ALL)  # one encoder pass, then only the aux tails per step
        c = net.tail(feats, ("value",), aux=torch.ones(1, 1, 16, 16, 16))
    assert torch.equal(a["seg"], b["seg"])
    assert not torch.allclose(a["value"], b["value"]) and not torch.allclose(a["policy"], b["policy"])
    assert torch.allclose(c["value"], b["value"], atol=1e-6)
    with pytest.raises(ValueError, match="aux"):
        net(x, heads=("value",))
    with pytest.raises(ValueError, match="aux"):
        build_network(TINY)(x, heads=("value",), aux=torch.zeros(1, 1, 16, 16, 16))


def test_segment_works_as_a_sliding_window_predictor() -> None:
    net = build_network(TINY).eval()
    with torch.no_grad():
        logits = sliding_window_inference(torch.rand(1, 1, 24, 24, 40), (16, 16, 16), 2, net.segment)
    assert logits.shape == (1, 2, 24, 24, 40)


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="backbone"):
        build_network(Nets(backbone="resnet"))


@pytest.mark.parametrize("heads", ["decoders", "light"])
def test_swinunetr_trains_all_three_heads(heads: str) -> None:
    pytest.importorskip("einops", reason="MONAI's Swin transformer needs einops")
    torch.manual_seed(0)
    net = build_network(Nets(backbone="swinunetr", feature_size=12, heads=heads))
    assert isinstance(net, SegRLNet) and net.divisor == 32
    # 32^3 leaves one voxel at 1/32 scale, which instance norm refuses (MONAI's SwinUNETR too).
    x = torch.rand(1, 1, 32, 32, 64)
    out = net(x, heads=ALL)
    assert out["seg"].shape == (1, 2, 32, 32, 64) and out["policy"].shape == (1, 3, 32, 32, 64)
    sum(o.float().pow(2).mean() for o in out.values()).backward()
    assert _grad_norm(net.encoder.swinViT) > 0
    for name, decoder in net.decoders.items():
        assert _grad_norm(decoder) > 0, name
    if heads == "decoders":
        light = build_network(Nets(backbone="swinunetr", feature_size=12, heads="light"))
        one_decoder = sum(p.numel() for p in net.decoders["seg"].parameters())
        assert net.num_parameters - light.num_parameters == 2 * one_decoder
    with pytest.raises(ValueError, match="1/32"):
        net(torch.rand(1, 1, 32, 32, 32))
