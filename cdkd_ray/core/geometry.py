"""Top-down geometry: boxes to center/scale, affine crop maps and their inverse, the crops themselves (vectorised)."""

from __future__ import annotations

import cv2
import numpy as np


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
    # On purpose unlike SimpleBaseline (which mirrors the whole image, x -> width-1-x, and the centre before
    # the affine): the crop itself is mirrored, x -> W-1-x; the same pixels, one warp, no image copy.
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
               out_size: tuple[int, int], swap_red_blue: bool = False) -> np.ndarray:
    """Affine crops [N,3,H,W] uint8 (the model's layout), crop i from images[image_index[i]] [h,w,3]
    (bilinear, zero border). `swap_red_blue`: BGR images (OpenCV's decode) give RGB crops.

    Each crop is warped into one scratch image and its channels written straight into their planes:
    no converted copy of a whole image, no [N,H,W,3] -> [N,3,H,W] transpose (a slow strided copy).
    """
    out_h, out_w = out_size
    crops = np.empty((mat.shape[0], 3, out_h, out_w), np.uint8)
    scratch = np.empty((out_h, out_w, 3), np.uint8)
    planes = (2, 1, 0) if swap_red_blue else (0, 1, 2)
    for i, (src, m) in enumerate(zip(image_index, mat)):
        cv2.warpAffine(images[src], m, (out_w, out_h), dst=scratch, flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        cv2.mixChannels([scratch], [crops[i, plane] for plane in planes], [0, 0, 1, 1, 2, 2])
    return crops
