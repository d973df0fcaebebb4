"""The student at serving time: crops for boxes, batched forward, keypoints in image coordinates."""

from __future__ import annotations

import numpy as np
import torch

from cdkd_ray.core.codec import heatmaps_to_keypoints
from cdkd_ray.core.geometry import box_to_center_scale, crop_affine, warp_crops
from cdkd_ray.core.models.loading import load_pose_model
from cdkd_ray.core.models.inference import predict_heatmaps
from cdkd_ray.core.models.pose_resnet import heatmap_size_for
from cdkd_ray.core.evaluation import rescore


class StudentRuntime:
    """A loaded student export plus the geometry its card describes."""

    def __init__(self, model_uri: str):
        loaded = load_pose_model(model_uri)
        self.model = loaded.model.eval()
        self.card = loaded.card
        self.channel_order = loaded.channel_order
        self.input_size = tuple(self.card.get("input_size", (256, 192)))
        self.heatmap_size = heatmap_size_for(self.input_size)
        self.num_keypoints = loaded.model_cfg.num_keypoints
        self.decode = self.card.get("decode", "argmax")
        self.model_uri = model_uri
        self.name = f"cdkd-ray {loaded.model_cfg.arch}"

    def crops(self, image_bgr: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 RGB crops [M,3,H,W] for boxes [M,5], with their centers and scales."""
        h, w = self.input_size
        center, scale = box_to_center_scale(boxes[:, :4], w / h)
        mat = crop_affine(center, scale, np.zeros(len(boxes)), self.input_size)
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        crops = warp_crops([rgb], np.zeros(len(boxes), int), mat, self.input_size)
        return np.ascontiguousarray(crops.transpose(0, 3, 1, 2)), center, scale

    def heatmaps(self, crops: np.ndarray, flip_test: bool) -> np.ndarray:
        return predict_heatmaps(self.model, torch.from_numpy(crops), self.channel_order, flip_test).numpy()

    def keypoints(self, heatmaps: np.ndarray, center: np.ndarray, scale: np.ndarray, boxes: np.ndarray) -> list[dict]:
        kpts, scores = heatmaps_to_keypoints(heatmaps, center, scale, self.input_size, self.decode)
        person_scores = rescore(scores, boxes[:, 4])
        return [{"box": [round(float(v), 2) for v in box[:4]], "box_score": float(box[4]),
                 "score": float(ps), "keypoints": [[round(float(x), 2), round(float(y), 2), round(float(s), 4)]
                                                    for (x, y), s in zip(k, sc)]}
                for box, ps, k, sc in zip(boxes, person_scores, kpts, scores)]
