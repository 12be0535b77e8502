"""Swin UNETR backbone from MONAI's parts, with the decoder path separable (method.md section 2).

**known**: the paper's backbone is Swin UNETR with one shared encoder and three decoders.
**decision**: build it from the blocks MONAI's ``SwinUNETR`` (MONAI 1.6, no ``img_size``) is made
of, assembled exactly as ``monai.networks.nets.swin_unetr.SwinUNETR.__init__/forward`` does:
the encoder part (``swinViT`` + ``encoder1..4`` + ``encoder10``) is :class:`SwinEncoder`, the
decoder path (``decoder5..1``) is :class:`SwinDecoder`, instantiated once per decoder. MONAI's
defaults are kept (patch 2, window 7, depths (2, 2, 2, 2), heads (3, 6, 12, 24), instance norm,
residual blocks, normalised hidden states). ``nets.feature_size`` (default 24) must be a
multiple of 12; spatial sizes must be divisible by 32, and the 1/32-scale bottleneck must hold
more than one voxel (instance norm needs two), so a patch is at least 64 along one axis
(e.g. 64^3 or 32x32x64): MONAI's SwinUNETR fails on 32^3 for the same reason. MONAI's Swin
transformer needs the ``einops`` package.

The encoder's parameter names are ``SwinUNETR``'s with the prefix ``encoder.`` (e.g.
``encoder.swinViT.layers1.*``), and each decoder's are its ``decoder5..1`` under
``decoders.<head>.``, so a SwinUNETR state dict maps over one to one.
"""

from __future__ import annotations

import importlib.util
import math

import torch
from monai.networks.blocks import UnetrBasicBlock, UnetrUpBlock
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

NORM = "instance"


def _basic(c_in: int, c_out: int) -> UnetrBasicBlock:
    return UnetrBasicBlock(
        spatial_dims=3,
        in_channels=c_in,
        out_channels=c_out,
        kernel_size=3,
        stride=1,
        norm_name=NORM,
        res_block=True,
    )


def _up(c_in: int, c_out: int) -> UnetrUpBlock:
    return UnetrUpBlock(
        spatial_dims=3,
        in_channels=c_in,
        out_channels=c_out,
        kernel_size=3,
        upsample_kernel_size=2,
        norm_name=NORM,
        res_block=True,
    )


class SwinEncoder(nn.Module):
    """SwinUNETR's encoder: Swin transformer + the convolutional skip encoders.

    Args:
        in_channels: image channels.
        feature_size: Swin embedding size (MONAI's ``feature_size``), a multiple of 12.
    """

    divisor = 32  # patch size 2 ** 5: patch embedding + 4 patch mergings

    def __init__(self, in_channels: int, feature_size: int = 24) -> None:
        super().__init__()
        if importlib.util.find_spec("einops") is None:
            raise ImportError(
                "the swinunetr backbone needs einops (MONAI's Swin transformer uses it): pip install einops"
            )
        if feature_size % 12:
            raise ValueError(f"nets.feature_size must be a multiple of 12 for swinunetr, got {feature_size}")
        fs = feature_size
        self.swinViT = SwinTransformer(
            in_chans=in_channels,
            embed_dim=fs,
            window_size=(7, 7, 7),
            patch_size=(2, 2, 2),
            depths=(2, 2, 2, 2),
            num_heads=(3, 6, 12, 24),
            mlp_ratio=4.0,
            qkv_bias=True,
            drop_rate=0.0,
            attn_drop_rate=0.0,
            drop_path_rate=0.0,
            norm_layer=nn.LayerNorm,
            patch_norm=False,
            use_checkpoint=False,
            spatial_dims=3,
        )
        self.encoder1 = _basic(in_channels, fs)
        self.encoder2 = _basic(fs, fs)
        self.encoder3 = _basic(2 * fs, 2 * fs)
        self.encoder4 = _basic(4 * fs, 4 * fs)
        self.encoder10 = _basic(16 * fs, 16 * fs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[enc0, enc1, enc2, enc3, hidden3, dec4]`` as SwinUNETR.forward computes them."""
        if math.prod(s // self.divisor for s in x.shape[2:]) < 2:
            # Instance norm of encoder10 on a single voxel fails deep inside torch: say why here.
            raise ValueError(
                f"swinunetr needs more than one voxel at 1/32 scale; spatial size {tuple(x.shape[2:])} "
                "gives one (use e.g. 64^3 or 32x32x64)"
            )
        hidden = self.swinViT(x, True)  # normalize=True, MONAI's default
        enc0 = self.encoder1(x)
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        dec4 = self.encoder10(hidden[4])
        return [enc0, enc1, enc2, enc3, hidden[3], dec4]


class SwinDecoder(nn.Module):
    """SwinUNETR's decoder path ``decoder5 .. decoder1``; output ``feature_size`` channels."""

    def __init__(self, feature_size: int = 24) -> None:
        super().__init__()
        fs = feature_size
        self.out_channels = fs
        self.decoder5 = _up(16 * fs, 8 * fs)
        self.decoder4 = _up(8 * fs, 4 * fs)
        self.decoder3 = _up(4 * fs, 2 * fs)
        self.decoder2 = _up(2 * fs, fs)
        self.decoder1 = _up(fs, fs)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """Decode :class:`SwinEncoder`'s output into full-resolution features."""
        enc0, enc1, enc2, enc3, hidden3, dec4 = skips
        dec3 = self.decoder5(dec4, hidden3)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        return self.decoder1(dec0, enc0)
