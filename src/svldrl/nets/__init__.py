"""Networks: one shared encoder with segmentation, value and policy heads (method.md section 2)."""

from __future__ import annotations

from svldrl.nets.factory import HEADS, NUM_ACTIONS, SegRLNet, build_network

__all__ = ["HEADS", "NUM_ACTIONS", "SegRLNet", "build_network"]
