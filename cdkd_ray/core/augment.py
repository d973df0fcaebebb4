"""Training augmentation of the field (SimpleBaseline): scale, rotation, flip, half-body crops, drawn per instance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cdkd_ray.core.geometry import box_to_center_scale
from cdkd_ray.core.keypoints import FLIP_INDEX, LOWER_BODY_IDS, NUM_KEYPOINTS, UPPER_BODY_IDS


@dataclass(frozen=True)
class AugmentParams:
    """Per-instance augmentation draws: scale multiplier, rotation (deg), flip, half-body."""

    scale_mult: np.ndarray  # [N]
    rotation: np.ndarray  # [N] degrees
    flip: np.ndarray  # [N] bool
    half_body: np.ndarray  # [N] bool


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


def flip_joints_order(joints: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """Swap left/right joint identities for flipped instances ([N,K,...])."""
    out = joints.copy()
    out[flip] = joints[flip][:, FLIP_INDEX]
    return out
