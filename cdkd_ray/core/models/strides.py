"""Heatmap geometry of a SimpleBaseline head, without torch: the data path needs it, its tasks need no torch."""

from __future__ import annotations

HEATMAP_STRIDE = 4  # three stride-2 deconvolutions after a stride-32 backbone: heatmap = input / 4


def heatmap_size_for(input_size: tuple[int, int]) -> tuple[int, int]:
    """The heatmap (H, W) a SimpleBaseline head produces for an input (H, W)."""
    return input_size[0] // HEATMAP_STRIDE, input_size[1] // HEATMAP_STRIDE
