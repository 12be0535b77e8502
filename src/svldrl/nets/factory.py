"""One network for segmentation, value and policy: a shared encoder and three heads (method.md 2).

``build_network(nets)`` selects the backbone by name (``nets.backbone``: ``unet`` default,
``swinunetr``) and the head layout (``nets.heads``):

- ``decoders`` (default, the paper): one shared encoder, three full decoders, each followed by
  a 1x1x1 output conv: segmentation -> ``num_classes`` logits, value -> 1 channel V(s),
  policy -> 3 action logits pi(a | s).
- ``light``: one decoder shared by the three heads, each head a 1x1x1 conv.

``nets.rl_grad_into_shared`` (default true, the paper's joint loss): the value and policy losses
train the shared layers (the encoder; with ``light`` also the shared decoder). False cuts them off
there, so the shared features are learned from segmentation alone and L_value / L_policy train only
their own decoders and heads. **decision** (open in method.md): the value head regresses returns
that the sampled actions make partly unpredictable (L_value stays ~1-2 on the phantoms), so its
gradient may only add noise to the features the segmentation shares.

The encoder runs once per call, and only the decoders of the requested heads run, so
``net(x)`` (segmentation only) costs what a plain U-Net costs.

Label-action mode (method.md section 9): the value and policy must see the image and the
current soft target q. **decision**: q enters late, as ``aux``: it is concatenated to the final
decoder features of the value / policy path and passed through a small residual conv block
(``fuse``) before the output conv. The image's encoder + decoder pass (:meth:`SegRLNet.trunk`)
therefore runs once per episode, and each step only runs the cheap aux-dependent tail
(:meth:`SegRLNet.tail`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetResBlock
from torch import nn

from svldrl.nets.swin import SwinDecoder, SwinEncoder
from svldrl.nets.unet import UNetDecoder, UNetEncoder
from svldrl.settings import Nets

HEADS = ("seg", "value", "policy")
NUM_ACTIONS = 3  # keep / enhance (raise) / weaken (lower), method.md sections 3 and 9


class SegRLNet(nn.Module):
    """Shared encoder + segmentation / value / policy heads with one common interface.

    Args:
        encoder: maps the image to a list of skip features; has a ``divisor`` attribute
            (spatial sizes must be multiples of it).
        make_decoder: builds one decoder (skip list -> full-resolution features, with
            ``out_channels``); called three times for ``decoders``, once for ``light``.
        num_classes: segmentation classes (binary tasks: 2).
        heads: ``"decoders"`` or ``"light"`` (``nets.heads``, default ``decoders``).
        aux_channels: channels of the late-fused auxiliary input of the value / policy paths
            (0 for intensity actions, 1 for label actions: the soft target q).
        rl_heads: build the value and policy heads; False gives a segmentation-only network
            (supervised training and the baselines carry no unused decoders).
        rl_grad_into_shared: let the value / policy paths send gradient into the shared layers.
    """

    def __init__(
        self,
        encoder: nn.Module,
        make_decoder: Callable[[], nn.Module],
        num_classes: int = 2,
        heads: str = "decoders",
        aux_channels: int = 0,
        rl_heads: bool = True,
        rl_grad_into_shared: bool = True,
    ) -> None:
        super().__init__()
        if heads not in ("decoders", "light"):
            raise ValueError(f"nets.heads must be 'decoders' or 'light', got {heads!r}")
        self.heads_mode = heads
        self.rl_grad_into_shared = bool(rl_grad_into_shared)
        self.num_classes = int(num_classes)
        self.aux_channels = int(aux_channels)
        self.divisor = int(encoder.divisor)
        self.encoder = encoder
        self.head_names = HEADS if rl_heads else ("seg",)
        names = self.head_names if heads == "decoders" else ("shared",)
        self.decoders = nn.ModuleDict({name: make_decoder() for name in names})
        width = next(iter(self.decoders.values())).out_channels
        out_channels = {"seg": self.num_classes, "value": 1, "policy": NUM_ACTIONS}
        self.out = nn.ModuleDict({h: UnetOutBlock(3, width, out_channels[h]) for h in self.head_names})
        # Late fusion of aux (the soft target q) into value and policy only; seg sees the image alone.
        self.fuse = nn.ModuleDict()
        if self.aux_channels and rl_heads:
            for h in ("value", "policy"):
                self.fuse[h] = UnetResBlock(3, width + self.aux_channels, width, 3, 1, norm_name="instance")

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _check(self, x: torch.Tensor, heads: Sequence[str]) -> None:
        bad = [h for h in heads if h not in self.head_names]
        if bad or not heads:
            raise ValueError(f"heads must be a non-empty subset of {self.head_names}, got {tuple(heads)}")
        if any(s % self.divisor for s in x.shape[2:]):
            raise ValueError(f"spatial size {tuple(x.shape[2:])} must be divisible by {self.divisor}")

    def trunk(self, x: torch.Tensor, heads: Sequence[str] = ("seg",)) -> dict[str, torch.Tensor]:
        """Encoder once, then the decoder of each requested head: final decoder features per head."""
        self._check(x, heads)
        skips = self.encoder(x)
        cut = not self.rl_grad_into_shared
        if self.heads_mode == "light":
            z = self.decoders["shared"](skips)
            return {h: z.detach() if cut and h != "seg" else z for h in heads}
        rl_skips = [s.detach() for s in skips] if cut else skips
        return {h: self.decoders[h](skips if h == "seg" else rl_skips) for h in heads}

    def tail(
        self, feats: dict[str, torch.Tensor], heads: Sequence[str] = ("seg",), aux: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Output convs of ``heads`` on :meth:`trunk` features; value / policy fuse ``aux`` first."""
        out = {}
        for h in heads:
            z = feats[h]
            if h != "seg" and self.aux_channels:
                if aux is None:
                    raise ValueError(
                        f"this network was built with aux_channels={self.aux_channels}: pass aux"
                    )
                z = self.fuse[h](torch.cat([z, aux.to(z.dtype)], dim=1))
            out[h] = self.out[h](z)
        return out

    def forward(
        self, x: torch.Tensor, heads: Sequence[str] = ("seg",), aux: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the encoder once and the requested heads: ``{"seg": (B, C, ...), "value": (B, 1, ...),
        "policy": (B, 3, ...)}`` (only the keys asked for)."""
        if aux is not None and not self.aux_channels:
            raise ValueError("aux given to a network built with aux_channels=0")
        return self.tail(self.trunk(x, heads), heads, aux)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits only (the callable for MONAI's ``sliding_window_inference``)."""
        return self.forward(x, heads=("seg",))["seg"]


def build_network(nets: Nets, in_channels: int = 1, aux_channels: int = 0, rl_heads: bool = True) -> SegRLNet:
    """Build the network named by the ``nets`` config section.

    Args:
        nets: the ``nets`` section (``backbone``: ``unet`` | ``swinunetr``; ``heads``: ``decoders`` |
            ``light``; ``features`` for unet; ``feature_size`` for swinunetr; ``num_classes``;
            ``rl_grad_into_shared``).
        in_channels: image channels.
        aux_channels: late-fused aux channels of value / policy (1 in label-action mode, else 0).
        rl_heads: False builds the segmentation head only (supervised and baselines).
    """
    backbone = nets.backbone
    if backbone == "unet":
        features = list(nets.features)
        encoder: nn.Module = UNetEncoder(in_channels, features)

        def make_decoder() -> nn.Module:
            return UNetDecoder(features)

    elif backbone == "swinunetr":
        fs = int(nets.feature_size)
        encoder = SwinEncoder(in_channels, fs)

        def make_decoder() -> nn.Module:
            return SwinDecoder(fs)

    else:
        raise ValueError(f"nets.backbone must be 'unet' or 'swinunetr', got {backbone!r}")
    return SegRLNet(
        encoder,
        make_decoder,
        nets.num_classes,
        nets.heads,
        aux_channels,
        rl_heads,
        rl_grad_into_shared=bool(nets.rl_grad_into_shared),
    )
