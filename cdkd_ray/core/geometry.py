"""Top-down geometry: boxes to center/scale, random augmentation, affine crops (vectorised)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cdkd_ray.core.keypoints import LOWER_BODY_IDS, NUM_KEYPOINTS, UPPER_BODY_IDS, flip_index

FLIP_INDEX = flip_index()
IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class AugmentParams:
    """Per-instance augmentation draws: scale multiplier, rotation (deg), flip, half-body."""

    scale_mult: np.ndarray  # [N]
    rotation: np.ndarray  # [N] degrees
    flip: np.ndarray  # [N] bool
    half_body: np.ndarray  # [N] bool


def box_to_center_scale(boxes: np.ndarray, aspect: float, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """[N,4] xywh boxes -> center [N,2], scale [N,2] (crop width/height in pixels).

    The short side grows so that width/height == aspect (input W/H), then both grow by `padding`.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    center = boxes[:, :2] + boxes[:, 2:] * 0.5
    w, h = boxes[:, 2].copy(), boxes[:, 3].copy()
    wide = w > aspect * h
    h = np.where(wide, w / aspect, h)
    w = np.where(wide, w, h * aspect)
    return center, np.stack([w, h], 1) * padding


def sample_augment(rng: np.random.Generator, n: int, scale_factor: float, rotation_factor: float,
                   rotation_prob: float, flip_prob: float, half_body_prob: float) -> AugmentParams:
    """Draw SimpleBaseline-style augmentation for n instances at once."""
    scale = np.clip(rng.normal(size=n) * scale_factor + 1, 1 - scale_factor, 1 + scale_factor)
    rot = np.clip(rng.normal(size=n) * rotation_factor, -2 * rotation_factor, 2 * rotation_factor)
    rot = np.where(rng.random(n) < rotation_prob, rot, 0.0)
    return AugmentParams(scale.astype(np.float32), rot.astype(np.float32),
                         rng.random(n) < flip_prob, rng.random(n) < half_body_prob)


def half_body_center_scale(joints: np.ndarray, use: np.ndarray, rng: np.random.Generator, aspect: float,
                           min_joints: int = 8, padding: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Center/scale around the upper or lower body for the instances in `use` that qualify.

    joints: [N,K,3] (x, y, v). Returns (center [N,2], scale [N,2], applied [N]); rows not applied
    are NaN. An instance qualifies with more than `min_joints` labelled joints; the upper body is
    chosen with probability 0.5 when it has more than 2 labelled joints, else the lower body.
    """
    vis = joints[..., 2] > 0
    n = joints.shape[0]
    upper = np.zeros(NUM_KEYPOINTS, bool)
    upper[list(UPPER_BODY_IDS)] = True
    lower = np.zeros(NUM_KEYPOINTS, bool)
    lower[list(LOWER_BODY_IDS)] = True
    n_up, n_low = (vis & upper).sum(1), (vis & lower).sum(1)
    pick_upper = (rng.random(n) < 0.5) & (n_up > 2)
    pick_upper |= n_low <= 2
    chosen = vis & np.where(pick_upper[:, None], upper[None], lower[None])
    applied = use & (vis.sum(1) > min_joints) & (chosen.sum(1) >= 2)
    big = np.float32(1e9)
    x, y = joints[..., 0], joints[..., 1]
    x0 = np.where(chosen, x, big).min(1)
    y0 = np.where(chosen, y, big).min(1)
    x1 = np.where(chosen, x, -big).max(1)
    y1 = np.where(chosen, y, -big).max(1)
    boxes = np.stack([x0, y0, np.maximum(x1 - x0, 1), np.maximum(y1 - y0, 1)], 1)
    center, scale = box_to_center_scale(boxes, aspect, padding)
    center[~applied] = np.nan
    scale[~applied] = np.nan
    return center, scale, applied


def crop_affine(center: np.ndarray, scale: np.ndarray, rotation: np.ndarray, out_size: tuple[int, int],
                flip: np.ndarray | None = None) -> np.ndarray:
    """[N,2,3] affine maps from image to crop of size (H, W).

    The center goes to the crop center, the scale box fills the crop, content turns by `rotation`
    degrees counter-clockwise, and `flip` mirrors the crop (x -> W-1-x).
    """
    out_h, out_w = out_size
    n = center.shape[0]
    k = out_w / scale[:, 0]
    theta = np.deg2rad(rotation)
    cos, sin = np.cos(theta) * k, np.sin(theta) * k
    mat = np.zeros((n, 2, 3), np.float64)
    # rotation by +theta counter-clockwise on screen (y down): [[cos, sin], [-sin, cos]]
    mat[:, 0, 0], mat[:, 0, 1] = cos, sin
    mat[:, 1, 0], mat[:, 1, 1] = -sin, cos
    mat[:, :, 2] = np.array([out_w * 0.5, out_h * 0.5]) - np.einsum("nij,nj->ni", mat[:, :, :2], center)
    if flip is not None and flip.any():
        f = flip.astype(bool)
        mat[f, 0, :] *= -1
        mat[f, 0, 2] += out_w - 1
    return mat


def invert_affine(mat: np.ndarray) -> np.ndarray:
    """Inverse of [N,2,3] affine maps."""
    lin = mat[:, :, :2]
    inv = np.linalg.inv(lin)
    out = np.zeros_like(mat)
    out[:, :, :2] = inv
    out[:, :, 2] = -np.einsum("nij,nj->ni", inv, mat[:, :, 2])
    return out


def apply_affine(points: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Transform [N,K,2] points by [N,2,3] affine maps."""
    return np.einsum("nij,nkj->nki", mat[:, :, :2], points) + mat[:, None, :, 2]


def warp_crops(images: list[np.ndarray], image_index: np.ndarray, mat: np.ndarray,
               out_size: tuple[int, int]) -> np.ndarray:
    """Affine crops [N,H,W,3] uint8, crop i taken from images[image_index[i]] (bilinear, zero border)."""
    out_h, out_w = out_size
    crops = np.empty((mat.shape[0], out_h, out_w, 3), np.uint8)
    for i, (src, m) in enumerate(zip(image_index, mat)):
        crops[i] = cv2.warpAffine(images[src], m, (out_w, out_h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return crops


def flip_joints_order(joints: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Swap left/right joint identities for flipped instances ([N,K,...])."""
    out = joints.copy()
    out[flip] = joints[flip][:, FLIP_INDEX]
    return out


def normalize_images(images, channel_order: str = "RGB"):
    """uint8 [N,3,H,W] RGB tensor -> float ImageNet-normalised, in the model's channel order."""
    import torch

    x = images.float().div_(255.0)
    mean = torch.as_tensor(IMAGENET_MEAN_RGB, device=x.device).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD_RGB, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if channel_order.upper() == "BGR":
        x = x.flip(1)
    return x
