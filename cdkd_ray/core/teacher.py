"""The frozen teacher: heatmaps and one tapped feature (fp16) for augmented crops.

It runs inside the training step (`teacher.placement=worker`) or in a Ray Data actor pool
(`teacher.placement=pool`, the ray_adapters pipeline wraps it).
"""

from __future__ import annotations

import torch

from cdkd_ray.core.models.inference import normalize_images
from cdkd_ray.core.models.loading import load_pose_model


class Teacher:
    """A frozen pose model in eval mode that returns heatmaps and one tapped feature."""

    def __init__(self, checkpoint: str, tap: str = "layer4", device: str = "cpu", channel_order: str | None = None):
        loaded = load_pose_model(checkpoint, channel_order)
        self.model = loaded.model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.channel_order = loaded.channel_order
        self.tap = tap
        self.device = device

    @torch.no_grad()
    def infer(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 RGB [N,3,H,W] -> (heatmaps, feature), both fp16."""
        self.model.eval()
        x = normalize_images(images_uint8.to(self.device), self.channel_order)
        heatmaps, feats = self.model(x, (self.tap,))
        return heatmaps.half(), feats[self.tap].half()
