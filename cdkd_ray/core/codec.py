"""Heatmap codec: Gaussian targets, argmax(+quarter)/DARK decoding, flip-test helpers.

Heatmap pixel j sits at input pixel j * stride (stride = input / heatmap size), the convention
of SimpleBaseline; every function here is vectorised over batch and keypoints.
"""

from __future__ import annotations

import cv2
import numpy as np

from cdkd_ray.core.geometry import FLIP_INDEX


def encode_heatmaps(joints: np.ndarray, visible: np.ndarray, input_size: tuple[int, int],
                    heatmap_size: tuple[int, int], sigma: float, subpixel: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian targets [N,K,h,w] (peak 1) and target weights [N,K].

    joints: [N,K,2] in input-crop pixels; visible: [N,K] labelled flags. The Gaussian is cut to a
    window of +-3 sigma; its centre is the nearest heatmap pixel (SimpleBaseline) or, with
    `subpixel`, the exact position (unbiased, best with DARK decoding). The weight is 0 for
    unlabelled joints and for Gaussians entirely outside the heatmap.
    """
    in_h, in_w = input_size
    h, w = heatmap_size
    n, k = joints.shape[:2]
    stride = np.array([in_w / w, in_h / h], np.float32)
    mu = joints.astype(np.float32) / stride
    if not subpixel:
        mu = np.floor(mu + 0.5)
    radius = 3 * sigma
    ul = np.floor(mu - radius)
    br = np.floor(mu + radius + 1)
    inside = (ul[..., 0] < w) & (ul[..., 1] < h) & (br[..., 0] >= 0) & (br[..., 1] >= 0)
    weight = ((visible > 0) & inside).astype(np.float32)
    target = np.zeros((n, k, h, w), np.float32)
    nk = np.nonzero(weight.reshape(-1))[0]
    if nk.size == 0:
        return target, weight
    # Scatter only the (2r+1)^2 window around each peak: separable Gaussian, no dense pass.
    half = int(np.ceil(radius))
    offsets = np.arange(-half, half + 1)
    centre = np.floor(mu.reshape(-1, 2)[nk] + 0.5).astype(np.int64)  # [M,2]
    xs = centre[:, 0:1] + offsets  # [M,S]
    ys = centre[:, 1:2] + offsets
    mu_m = mu.reshape(-1, 2)[nk]
    dx = xs - mu_m[:, 0:1]
    dy = ys - mu_m[:, 1:2]
    gx = np.exp(-dx ** 2 / (2 * sigma ** 2)) * (np.abs(dx) <= radius) * ((xs >= 0) & (xs < w))
    gy = np.exp(-dy ** 2 / (2 * sigma ** 2)) * (np.abs(dy) <= radius) * ((ys >= 0) & (ys < h))
    values = (gy[:, :, None] * gx[:, None, :]).astype(np.float32)  # [M,S,S]
    flat = target.reshape(n * k, h, w)
    yy = np.clip(ys, 0, h - 1)[:, :, None]
    xx = np.clip(xs, 0, w - 1)[:, None, :]
    valid = values > 0
    rows = np.broadcast_to(nk[:, None, None], values.shape)
    flat[rows[valid], np.broadcast_to(yy, values.shape)[valid], np.broadcast_to(xx, values.shape)[valid]] = values[valid]
    return target, weight


def _argmax(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = flat.argmax(-1)
    maxvals = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
    coords = np.stack([idx % w, idx // w], -1).astype(np.float32)
    return coords, maxvals


def decode_heatmaps(heatmaps: np.ndarray, method: str = "argmax", dark_kernel: int = 11
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps [N,K,h,w] -> coords [N,K,2] in heatmap pixels, scores [N,K] (the peak values).

    method 'argmax': the peak moved 0.25 px toward the higher neighbour on each axis;
    'dark': distribution-aware sub-pixel refinement (Taylor expansion of the smoothed log-heatmap).
    """
    heatmaps = np.asarray(heatmaps, np.float32)
    n, k, h, w = heatmaps.shape
    coords, maxvals = _argmax(heatmaps)
    px = coords[..., 0].astype(np.int64)
    py = coords[..., 1].astype(np.int64)
    if method == "argmax":
        hm = heatmaps.reshape(n * k, h, w)
        ii = np.arange(n * k)
        x, y = px.reshape(-1), py.reshape(-1)
        ok_x = (x > 0) & (x < w - 1)
        ok_y = (y > 0) & (y < h - 1)
        xr, xl = np.clip(x + 1, 0, w - 1), np.clip(x - 1, 0, w - 1)
        yd, yu = np.clip(y + 1, 0, h - 1), np.clip(y - 1, 0, h - 1)
        ddx = np.sign(hm[ii, y, xr] - hm[ii, y, xl]) * ok_x
        ddy = np.sign(hm[ii, yd, x] - hm[ii, yu, x]) * ok_y
        coords = coords + 0.25 * np.stack([ddx, ddy], -1).reshape(n, k, 2)
    elif method == "dark":
        coords = coords + _dark_offsets(heatmaps, px, py, dark_kernel)
    else:
        raise ValueError(f"unknown decode method '{method}' (argmax or dark)")
    return coords.astype(np.float32), maxvals


def _dark_offsets(heatmaps: np.ndarray, px: np.ndarray, py: np.ndarray, kernel: int) -> np.ndarray:
    n, k, h, w = heatmaps.shape
    hm = heatmaps.reshape(n * k, h, w).copy()
    for i in range(n * k):  # per-map smoothing; cv2 has no batched blur
        peak = hm[i].max()
        blurred = cv2.GaussianBlur(hm[i], (kernel, kernel), 0)
        hm[i] = blurred * (peak / max(blurred.max(), 1e-12))
    hm = np.log(np.clip(hm, 1e-10, None))
    pad = np.pad(hm, ((0, 0), (1, 1), (1, 1)), mode="edge")
    x, y = px.reshape(-1) + 1, py.reshape(-1) + 1
    ii = np.arange(n * k)
    at = lambda dy, dx: pad[ii, y + dy, x + dx]  # noqa: E731
    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = at(0, 1) - 2 * at(0, 0) + at(0, -1)
    dyy = at(1, 0) - 2 * at(0, 0) + at(-1, 0)
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy ** 2
    ok = np.abs(det) > 1e-12
    safe = np.where(ok, det, 1.0)
    off_x = -(dyy * dx - dxy * dy) / safe
    off_y = -(dxx * dy - dxy * dx) / safe
    off = np.stack([off_x, off_y], -1) * ok[:, None]
    off = np.clip(off, -1.0, 1.0)
    return off.reshape(n, k, 2)


def heatmap_to_input(coords: np.ndarray, input_size: tuple[int, int], heatmap_size: tuple[int, int]) -> np.ndarray:
    """Heatmap-pixel coordinates -> input-crop pixels."""
    in_h, in_w = input_size
    h, w = heatmap_size
    return coords * np.array([in_w / w, in_h / h], np.float32)


def flip_back(heatmaps, shift: bool = True):
    """Un-flip heatmaps predicted on a mirrored input: mirror, swap pairs, shift 1 px right.

    Works on numpy arrays and torch tensors of shape [N,K,h,w].
    """
    try:
        import torch

        is_torch = isinstance(heatmaps, torch.Tensor)
    except ImportError:  # pragma: no cover
        is_torch = False
    if is_torch:
        out = heatmaps.flip(-1)[:, FLIP_INDEX.tolist()]
        if shift:
            out = out.clone()
            out[..., 1:] = out[..., :-1].clone()
        return out
    out = heatmaps[..., ::-1][:, FLIP_INDEX].copy()
    if shift:
        out[..., 1:] = out[..., :-1].copy()
    return out


def crop_to_image(points: np.ndarray, center: np.ndarray, scale: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Input-crop pixels [N,K,2] -> original image pixels (unrotated, unflipped crops)."""
    from cdkd_ray.core.geometry import apply_affine, crop_affine, invert_affine

    mat = crop_affine(np.asarray(center, np.float64), np.asarray(scale, np.float64),
                      np.zeros(len(center)), input_size)
    return apply_affine(points.astype(np.float64), invert_affine(mat)).astype(np.float32)


def heatmaps_to_keypoints(heatmaps: np.ndarray, center: np.ndarray, scale: np.ndarray,
                          input_size: tuple[int, int], method: str = "argmax") -> tuple[np.ndarray, np.ndarray]:
    """Decode heatmaps [N,K,h,w] of crops to image-space keypoints [N,K,2] and scores [N,K]."""
    heatmap_size = heatmaps.shape[-2:]
    coords, scores = decode_heatmaps(heatmaps, method)
    return crop_to_image(heatmap_to_input(coords, input_size, heatmap_size), center, scale, input_size), scores
