"""Model inference on crops: normalisation, optional flip test, decoding to image coordinates."""

from __future__ import annotations

import numpy as np
import torch

from cdkd_ray.core.codec import flip_back, heatmaps_to_keypoints

IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)


def normalize_images(images, channel_order: str = "RGB"):
    """uint8 [N,3,H,W] RGB tensor -> float ImageNet-normalised, in the model's channel order."""
    x = images.float().div_(255.0)
    mean = torch.as_tensor(IMAGENET_MEAN_RGB, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD_RGB, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if channel_order.upper() == "BGR":
        x = x.flip(1)
    return x


@torch.no_grad()
def predict_heatmaps(model: torch.nn.Module, images_uint8: torch.Tensor, channel_order: str = "RGB",
                     flip_test: bool = False, with_plain: bool = False):
    """Heatmaps for uint8 RGB crops [N,3,H,W]; with flip_test, averaged with the un-flipped mirror.

    `with_plain` returns (the plain forward's heatmaps, the result) so callers can score the plain output.
    """
    x = normalize_images(images_uint8, channel_order)
    plain = model(x).float()
    heatmaps = (plain + flip_back(model(x.flip(-1)).float())) * 0.5 if flip_test else plain
    return (plain, heatmaps) if with_plain else heatmaps


def predict_keypoints(model: torch.nn.Module, images_uint8: torch.Tensor, center: np.ndarray, scale: np.ndarray,
                      input_size: tuple[int, int], channel_order: str = "RGB", flip_test: bool = False,
                      decode: str = "argmax") -> tuple[np.ndarray, np.ndarray]:
    """Image-space keypoints [N,K,2] and scores [N,K] for crops given by center/scale."""
    heatmaps = predict_heatmaps(model, images_uint8, channel_order, flip_test).cpu().numpy()
    return heatmaps_to_keypoints(heatmaps, np.asarray(center), np.asarray(scale), input_size, decode)
