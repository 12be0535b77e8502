"""Small residual 3D U-Net backbone: the CPU / test / demo backbone of method.md section 2.

**decision** (method.md section 2): besides Swin UNETR, a small residual 3D U-Net with the same
shared-encoder / three-decoder shape exists for CPU runs. Channels per level come from
``nets.features`` (default ``[16, 32, 64, 128]``). Every block is MONAI's ``UnetResBlock``
(two 3x3x3 convs, instance norm, LeakyReLU 0.01, residual with 1x1x1 projection); going down is
a stride-2 residual block, going up is MONAI's ``UnetrUpBlock`` (2x2x2 transposed conv, skip
concat, residual block). Spatial sizes must be divisible by ``2 ** (levels - 1)``.

The encoder and the decoder are separate modules so that :class:`~svldrl.nets.factory.SegRLNet`
can share one encoder between one or three decoders.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UnetResBlock, UnetrUpBlock
from torch import nn

NORM = "instance"


class UNetEncoder(nn.Module):
    """Residual encoder: a full-resolution stem, then one stride-2 residual block per level.

    Args:
        in_channels: image channels (plus nothing else: the image alone is encoded).
        features: channels per level, e.g. ``[16, 32, 64, 128]`` (4 levels, 3 downsamplings).
    """

    def __init__(self, in_channels: int, features: Sequence[int]) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError("nets.features needs at least two levels")
        self.features = tuple(int(f) for f in features)
        # Inputs must survive len(features) - 1 halvings without rounding.
        self.divisor = 2 ** (len(self.features) - 1)
        self.stem = UnetResBlock(3, in_channels, self.features[0], kernel_size=3, stride=1, norm_name=NORM)
        self.down = nn.ModuleList(
            UnetResBlock(3, c_in, c_out, kernel_size=3, stride=2, norm_name=NORM)
            for c_in, c_out in zip(self.features[:-1], self.features[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the skip features of every level, full resolution first, bottleneck last."""
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        return skips


class UNetDecoder(nn.Module):
    """Residual decoder: transposed conv up, concat the skip, residual block; one per level.

    Instantiated once per head (``nets.heads = decoders``) or once (``light``). Its output has
    ``out_channels = features[0]`` channels at full resolution; the heads' output convs follow.
    """

    def __init__(self, features: Sequence[int]) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        self.out_channels = features[0]
        # Deepest level first: features[-1] -> features[-2] -> ... -> features[0].
        self.up = nn.ModuleList(
            UnetrUpBlock(
                3, c_in, c_out, kernel_size=3, upsample_kernel_size=2, norm_name=NORM, res_block=True
            )
            for c_in, c_out in zip(features[:0:-1], features[-2::-1], strict=True)
        )

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """Decode the encoder's skip list into full-resolution features."""
        z = skips[-1]
        for block, skip in zip(self.up, skips[-2::-1], strict=True):
            z = block(z, skip)
        return z
