"""Pictures: skeleton overlays and grids of training crops with their target heatmaps."""

from __future__ import annotations

import cv2
import numpy as np

from cdkd_ray.core.keypoints import FLIP_PAIRS, SKELETON

LEFT_IDS = {a for a, _ in FLIP_PAIRS}
RIGHT_IDS = {b for _, b in FLIP_PAIRS}


def _color(i: int) -> tuple[int, int, int]:
    """BGR colour: left joints orange, right joints blue, centre green."""
    if i in LEFT_IDS:
        return (0, 140, 255)
    if i in RIGHT_IDS:
        return (255, 128, 0)
    return (0, 200, 0)


def draw_skeleton(image_bgr: np.ndarray, keypoints: np.ndarray, scores: np.ndarray | None = None,
                  threshold: float = 0.3, thickness: int = 2) -> np.ndarray:
    """Draw one person's [17,2] keypoints (scores or visibility [17]) on a BGR image in place."""
    scores = np.ones(len(keypoints)) if scores is None else scores
    ok = scores > threshold
    pts = np.round(keypoints).astype(int)
    for a, b in SKELETON:
        if ok[a] and ok[b]:
            color = _color(a) if (a in LEFT_IDS) == (b in LEFT_IDS) else (0, 200, 0)
            cv2.line(image_bgr, tuple(pts[a]), tuple(pts[b]), color, thickness, cv2.LINE_AA)
    for i in np.nonzero(ok)[0]:
        cv2.circle(image_bgr, tuple(pts[i]), thickness + 1, _color(int(i)), -1, cv2.LINE_AA)
    return image_bgr


def crop_with_heatmaps(image_rgb_chw: np.ndarray, target: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """One tile: the crop (BGR), the summed target heatmap blended in, the skeleton on top."""
    crop = np.ascontiguousarray(image_rgb_chw.transpose(1, 2, 0)[:, :, ::-1])
    h, w = crop.shape[:2]
    heat = cv2.resize(target.max(0), (w, h), interpolation=cv2.INTER_LINEAR)
    heat_color = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (np.clip(heat, 0, 1) * 0.6)[..., None]
    tile = (crop * (1 - alpha) + heat_color * alpha).astype(np.uint8)
    return draw_skeleton(tile, joints[:, :2], joints[:, 2], threshold=0.5, thickness=1)


def grid(tiles: list[np.ndarray], columns: int = 8, pad: int = 2) -> np.ndarray:
    """Tiles of equal size in a grid with a thin border."""
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + columns - 1) // columns
    canvas = np.full((rows * (h + pad) + pad, min(columns, len(tiles)) * (w + pad) + pad, 3), 32, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = tile
    return canvas
