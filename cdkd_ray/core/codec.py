"""Heatmap codec: argmax(+quarter)/DARK decoding, flip-test helpers (the Gaussian targets: core.targets).

Heatmap pixel j sits at input pixel j * stride (stride = input / heatmap size), the convention
of SimpleBaseline; every function here is vectorised over batch and keypoints.
"""

from __future__ import annotations

import numpy as np

from cdkd_ray.core.geometry import apply_affine, crop_affine, invert_affine
from cdkd_ray.core.keypoints import FLIP_INDEX

DECODE_METHODS = ("argmax", "dark")


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
        # On purpose unlike SimpleBaseline (which shifts only when 1 < px < w-1 and 1 < py < h-1 together):
        # each axis is shifted wherever both its neighbours exist, so an edge row still refines x.
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


def gaussian_blur(maps: np.ndarray, kernel: int) -> np.ndarray:
    """Separable Gaussian blur of [M,h,w] maps, zeros outside the map, vectorised over maps (OpenCV's sigma rule)."""
    radius = kernel // 2
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    _, h, w = maps.shape
    rows = np.pad(maps, ((0, 0), (radius, radius), (0, 0)))
    out = sum(t * rows[:, i:i + h, :] for i, t in enumerate(taps))
    cols = np.pad(out, ((0, 0), (0, 0), (radius, radius)))
    return sum(t * cols[:, :, i:i + w] for i, t in enumerate(taps))


def _dark_offsets(heatmaps: np.ndarray, px: np.ndarray, py: np.ndarray, kernel: int) -> np.ndarray:
    """DARK: a Taylor step on the smoothed log-heatmap at the argmax.

    Near the border any blur is biased: reflecting the border (cv2's default) mirrors the peak back in
    and drags the estimate outward (a sigma-2 peak at x=2 decodes to 1.00), zero padding pulls it
    inward (2.21, mmpose's result). So the blurred map is used only where the blur window around the
    3x3 neighbourhood lies inside the map; closer to the border the step runs on the raw log-heatmap,
    exact for a Gaussian peak. A peak on the outermost pixels is left unrefined.
    """
    n, k, h, w = heatmaps.shape
    maps = heatmaps.reshape(n * k, h, w)
    blurred = gaussian_blur(maps, kernel)
    scale = maps.max((1, 2)) / np.maximum(blurred.max((1, 2)), 1e-12)
    x, y = px.reshape(-1), py.reshape(-1)
    reach = kernel // 2 + 1
    far = (x >= reach) & (x < w - reach) & (y >= reach) & (y < h - reach)
    hm = np.log(np.clip(np.where(far[:, None, None], blurred * scale[:, None, None], maps), 1e-10, None))
    inner = (x > 0) & (x < w - 1) & (y > 0) & (y < h - 1)
    x, y, ii = np.clip(x, 1, w - 2), np.clip(y, 1, h - 2), np.arange(n * k)
    at = lambda dy, dx: hm[ii, y + dy, x + dx]  # noqa: E731
    dx, dy = 0.5 * (at(0, 1) - at(0, -1)), 0.5 * (at(1, 0) - at(-1, 0))
    dxx = at(0, 1) - 2 * at(0, 0) + at(0, -1)
    dyy = at(1, 0) - 2 * at(0, 0) + at(-1, 0)
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy ** 2
    ok = inner & (np.abs(det) > 1e-12)
    safe = np.where(ok, det, 1.0)
    off = np.stack([-(dyy * dx - dxy * dy) / safe, -(dxx * dy - dxy * dx) / safe], -1) * ok[:, None]
    return np.clip(off, -1.0, 1.0).reshape(n, k, 2)


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
    mat = crop_affine(np.asarray(center, np.float64), np.asarray(scale, np.float64),
                      np.zeros(len(center)), input_size)
    return apply_affine(points.astype(np.float64), invert_affine(mat)).astype(np.float32)


def heatmaps_to_keypoints(heatmaps: np.ndarray, center: np.ndarray, scale: np.ndarray,
                          input_size: tuple[int, int], method: str = "argmax") -> tuple[np.ndarray, np.ndarray]:
    """Decode heatmaps [N,K,h,w] of crops to image-space keypoints [N,K,2] and scores [N,K]."""
    heatmap_size = heatmaps.shape[-2:]
    coords, scores = decode_heatmaps(heatmaps, method)
    return crop_to_image(heatmap_to_input(coords, input_size, heatmap_size), center, scale, input_size), scores
