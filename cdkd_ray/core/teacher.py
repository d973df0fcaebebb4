"""The frozen teacher: runs on augmented crops and adds teacher heatmaps and features (fp16).

`TeacherStage` is a Ray Data callable class for an actor pool (`teacher.placement=pool`);
the same `Teacher` runs inside each train worker with `teacher.placement=worker`.
"""

from __future__ import annotations

import numpy as np
import torch

from cdkd_ray.core.geometry import normalize_images
from cdkd_ray.core.models.loading import load_pose_model


class Teacher:
    """A frozen pose model in eval mode that returns heatmaps and one tapped feature."""

    def __init__(self, checkpoint: str, tap: str = "layer4", device: str = "cpu", channel_order: str | None = None):
        loaded = load_pose_model(checkpoint, channel_order)
        self.model = loaded.model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.arch = loaded.model_cfg.arch
        self.deconv_channels = loaded.model_cfg.deconv_channels
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


class TeacherStage:
    """Ray Data actor-pool stage: adds `teacher_heatmaps` and `teacher_features` to each batch."""

    def __init__(self, checkpoint: str, tap: str = "layer4", num_threads: int | None = None,
                 channel_order: str | None = None):
        if num_threads:
            torch.set_num_threads(num_threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.teacher = Teacher(checkpoint, tap, device, channel_order)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(batch["image"]) == 0:
            n = 0
            batch["teacher_heatmaps"] = np.zeros((n, *batch["target"].shape[1:]), np.float16)
            batch["teacher_features"] = np.zeros((n, 1, 1, 1), np.float16)
            return batch
        heatmaps, feature = self.teacher.infer(torch.from_numpy(np.ascontiguousarray(batch["image"])))
        batch["teacher_heatmaps"] = heatmaps.cpu().numpy()
        batch["teacher_features"] = feature.cpu().numpy()
        return batch
