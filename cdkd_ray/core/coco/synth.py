"""Synthetic COCO-format person-keypoint dataset of articulated, human-like figures.

Each figure has a head (nose, eyes, ears), a torso, arms and legs posed with plausible joint
angles and a body yaw (facing the camera, turned, or away), so the left/right identity of
joints must be read from the face and the body layout. Images hold 1-4 people that overlap,
small unlabelled people, crowd regions, cluttered textured backgrounds with limb-like
distractors, and colour/lighting variation. Visibility flags follow COCO: 2 visible, 1
labelled but occluded by a person in front, 0 unlabelled (outside the image, or a face point
turned away from the camera). Everything is drawn with vectorised OpenCV/NumPy calls and is
deterministic for a seed.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from cdkd_ray.core.keypoints import NUM_KEYPOINTS, person_category

SPLIT_CODES = {"train": 1, "val": 2}
SPLIT_ID_BASE = {"train": 0, "val": 1_000_000}

# Keypoint indices (COCO order)
NOSE, L_EYE, R_EYE, L_EAR, R_EAR = 0, 1, 2, 3, 4
L_SHO, R_SHO, L_ELB, R_ELB, L_WRI, R_WRI = 5, 6, 7, 8, 9, 10
L_HIP, R_HIP, L_KNE, R_KNE, L_ANK, R_ANK = 11, 12, 13, 14, 15, 16


@dataclass
class Figure:
    """A posed figure: keypoints [17, 2] in pixels, per-keypoint depth, face visibility, sizes."""

    points: np.ndarray
    depth: np.ndarray
    face_visible: np.ndarray
    height: float
    head_center: np.ndarray
    head_radius: float
    facing_camera: bool


def _rot(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


@dataclass(frozen=True)
class _Frame:
    """A figure's image-plane frame: up/right/down unit vectors and its yaw (as cos, sin)."""

    up: np.ndarray
    right: np.ndarray
    cos_y: float
    sin_y: float

    @property
    def down(self) -> np.ndarray:
        return -self.up

    def lateral(self, L: float, F: float = 0.0) -> tuple[np.ndarray, float]:
        """Image offset and depth (toward camera) of a body-frame point (L: person's left, F: forward)."""
        return (L * self.cos_y + F * self.sin_y) * self.right, F * self.cos_y - L * self.sin_y


def _sample_frame(rng: np.random.Generator) -> _Frame:
    yaw = rng.uniform(-math.pi, math.pi) if rng.random() < 0.25 else rng.normal(0, 0.45)
    cos_y, sin_y = math.cos(yaw), math.sin(yaw)
    if abs(cos_y) < 0.3:  # avoid degenerate exact profiles: keep some lateral extent
        cos_y = math.copysign(0.3, cos_y if cos_y != 0 else 1.0)
    lean = rng.normal(0, 0.12) + (rng.uniform(-0.7, 0.7) if rng.random() < 0.1 else 0.0)
    up = np.array([math.sin(lean), -math.cos(lean)])
    right = np.array([math.cos(lean), math.sin(lean)])  # image-right when upright
    return _Frame(up, right, cos_y, sin_y)


def _place_face(rng, frame: _Frame, pts: np.ndarray, depth: np.ndarray, sho_c: np.ndarray, H: float):
    """Nose, eyes and ears around a tilted head; returns (head centre, head radius, face visibility)."""
    r = 0.07 * H
    head_tilt = rng.normal(0, 0.15)
    head_up, head_right = _rot(frame.up, head_tilt), _rot(frame.right, head_tilt)
    head_c = sho_c + 0.14 * H * head_up
    face = {NOSE: (0.0, 1.0, -0.15), L_EYE: (0.38, 0.85, 0.22), R_EYE: (-0.38, 0.85, 0.22),
            L_EAR: (1.0, 0.0, 0.05), R_EAR: (-1.0, 0.0, 0.05)}
    face_visible = np.ones(NUM_KEYPOINTS, bool)
    for idx, (L, F, U) in face.items():
        x_off = (L * frame.cos_y + F * frame.sin_y) * r
        d = (F * frame.cos_y - L * frame.sin_y) * r
        pts[idx] = head_c + x_off * head_right + U * r * head_up
        depth[idx] = d
        face_visible[idx] = d > (-0.35 * r if idx in (L_EAR, R_EAR) else 0.05 * r)
    return head_c, r, face_visible


def _place_limbs(rng, frame: _Frame, pts: np.ndarray, depth: np.ndarray, H: float, r: float) -> None:
    """Elbows, wrists, knees and ankles from sampled joint angles (arms swing out, knees bend)."""
    side_sign = {"L": 1.0, "R": -1.0}
    facing = 1 if frame.cos_y >= 0 else -1
    for side, (sho, elb, wri, hip, kne, ank) in {"L": (L_SHO, L_ELB, L_WRI, L_HIP, L_KNE, L_ANK),
                                                 "R": (R_SHO, R_ELB, R_WRI, R_HIP, R_KNE, R_ANK)}.items():
        outward = side_sign[side] * facing * frame.right
        # arm: upper-arm angle from hanging down (+ = outward), forearm bend
        a1 = rng.uniform(-0.5, 2.7) if rng.random() < 0.6 else rng.normal(0.25, 0.2)
        a2 = a1 + rng.choice([-1, 1]) * rng.uniform(0.0, 2.3) * (rng.random() < 0.8)
        pts[elb] = pts[sho] + 0.17 * H * (math.cos(a1) * frame.down + math.sin(a1) * outward)
        pts[wri] = pts[elb] + 0.15 * H * (math.cos(a2) * frame.down + math.sin(a2) * outward)
        depth[elb] = depth[wri] = depth[sho] + rng.uniform(-0.3, 0.3) * r
        # leg: thigh angle, knee bend in the walking/sitting direction
        t1 = rng.normal(0.12, 0.18) if rng.random() < 0.8 else rng.uniform(-0.3, 1.4)
        bend = rng.uniform(0, 1.6) if rng.random() < 0.5 else rng.uniform(0, 0.3)
        t2 = t1 - bend * (1 if frame.sin_y >= 0 else -1) * side_sign[side] * facing
        pts[kne] = pts[hip] + 0.235 * H * (math.cos(t1) * frame.down + math.sin(t1) * outward)
        pts[ank] = pts[kne] + 0.23 * H * (math.cos(t2) * frame.down + math.sin(t2) * outward)
        depth[kne] = depth[ank] = depth[hip]


def pose_figure(rng: np.random.Generator, hip_center: np.ndarray, height: float) -> Figure:
    """Sample an anatomically plausible 2D pose for a figure of the given height."""
    frame = _sample_frame(rng)
    pts, depth = np.zeros((NUM_KEYPOINTS, 2)), np.zeros(NUM_KEYPOINTS)
    sho_c = hip_center + 0.30 * height * rng.uniform(0.92, 1.08) * frame.up
    sw, hw = 0.115 * height * rng.uniform(0.85, 1.15), 0.08 * height * rng.uniform(0.85, 1.15)
    for idx, L, base in ((L_SHO, sw, sho_c), (R_SHO, -sw, sho_c), (L_HIP, hw, hip_center), (R_HIP, -hw, hip_center)):
        off, d = frame.lateral(L)
        pts[idx], depth[idx] = base + off, d
    head_c, r, face_visible = _place_face(rng, frame, pts, depth, sho_c, height)
    _place_limbs(rng, frame, pts, depth, height, r)
    return Figure(pts, depth, face_visible, height, head_c, r, frame.cos_y > 0)


def _person_colors(rng: np.random.Generator) -> dict[str, tuple[int, int, int]]:
    skin_tone = rng.uniform(0.25, 1.0)
    skin = np.array([90, 130, 200]) * skin_tone + np.array([20, 30, 40]) * (1 - skin_tone)
    shirt = rng.integers(0, 256, 3)
    pants = rng.integers(0, 200, 3)
    hair = rng.integers(0, 90, 3) if rng.random() < 0.8 else rng.integers(60, 220, 3)
    shoe = rng.integers(0, 120, 3)
    to_tuple = lambda c: tuple(int(v) for v in np.clip(c, 0, 255))  # noqa: E731
    return {
        "skin": to_tuple(skin), "skin_dark": to_tuple(skin * 0.7), "shirt": to_tuple(shirt),
        "sleeve": to_tuple(shirt * rng.uniform(0.75, 1.0)), "pants": to_tuple(pants),
        "hair": to_tuple(hair), "shoe": to_tuple(shoe), "eye": (30, 30, 30),
        "forearm": to_tuple(skin if rng.random() < 0.6 else shirt * 0.9),
    }


def draw_figure(canvas: np.ndarray, fig: Figure, colors: dict, aa: bool = True) -> None:
    """Draw a figure on a BGR image (colors per part) or on a mask (every color the same)."""
    line = cv2.LINE_AA if aa else cv2.LINE_8
    H, p = fig.height, fig.points
    ip = lambda q: (int(round(q[0])), int(round(q[1])))  # noqa: E731
    th = lambda f: max(2, int(round(f * H)))  # noqa: E731

    def limb(a: int, b: int, c: int, upper: str, lower: str, w1: float, w2: float) -> None:
        cv2.line(canvas, ip(p[a]), ip(p[b]), colors[upper], th(w1), line)
        cv2.line(canvas, ip(p[b]), ip(p[c]), colors[lower], th(w2), line)

    def arm(side: str) -> None:
        s, e, w = (L_SHO, L_ELB, L_WRI) if side == "L" else (R_SHO, R_ELB, R_WRI)
        limb(s, e, w, "sleeve", "forearm", 0.055, 0.045)
        cv2.circle(canvas, ip(p[w]), th(0.028), colors["skin"], -1, line)

    def leg(side: str) -> None:
        h, k, a = (L_HIP, L_KNE, L_ANK) if side == "L" else (R_HIP, R_KNE, R_ANK)
        limb(h, k, a, "pants", "pants", 0.075, 0.06)
        cv2.ellipse(canvas, ip(p[a]), (th(0.04), th(0.022)), 0, 0, 360, colors["shoe"], -1, line)

    left_far = fig.depth[L_SHO] < fig.depth[R_SHO]
    far, near = ("L", "R") if left_far else ("R", "L")
    leg(far)
    arm(far)
    torso = np.array([p[L_SHO], p[R_SHO], p[R_HIP], p[L_HIP]])
    centre = torso.mean(0)
    torso = centre + (torso - centre) * np.array([1.18, 1.05])
    cv2.fillConvexPoly(canvas, np.round(torso).astype(np.int32), colors["shirt"], line)
    leg(near)
    neck_top = (p[L_SHO] + p[R_SHO]) / 2 + 0.6 * (fig.head_center - (p[L_SHO] + p[R_SHO]) / 2)
    cv2.line(canvas, ip((p[L_SHO] + p[R_SHO]) / 2), ip(neck_top), colors["skin"], th(0.045), line)
    r = max(2, int(round(fig.head_radius)))
    cv2.circle(canvas, ip(fig.head_center), r, colors["skin"] if fig.facing_camera else colors["hair"], -1, line)
    if fig.facing_camera:  # hair cap on the top half of the head
        up = fig.head_center - (p[L_SHO] + p[R_SHO]) / 2
        angle = math.degrees(math.atan2(up[1], up[0]))
        cv2.ellipse(canvas, ip(fig.head_center), (r, r), angle, -90, 90, colors["hair"], -1, line)
    for ear in (L_EAR, R_EAR):
        if fig.face_visible[ear]:
            cv2.circle(canvas, ip(p[ear]), max(1, r // 4), colors["skin_dark"], -1, line)
    for eye in (L_EYE, R_EYE):
        if fig.face_visible[eye]:
            cv2.circle(canvas, ip(p[eye]), max(1, r // 6), colors["eye"], -1, line)
    if fig.face_visible[NOSE]:
        cv2.circle(canvas, ip(p[NOSE]), max(1, r // 6), colors["skin_dark"], -1, line)
    arm(near)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Textured, cluttered background with limb-like distractors."""
    low = rng.uniform(0, 255, (rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    detail = rng.normal(0, rng.uniform(2, 25), (h // 4 + 1, w // 4 + 1, 3)).astype(np.float32)
    img += cv2.resize(detail, (w, h), interpolation=cv2.INTER_LINEAR)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(6, 22)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 5)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(6, max(8, min(h, w) // 3)))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), color, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), size // 2, color, -1, cv2.LINE_AA)
        elif kind == 2:
            pts = rng.integers(0, [w, h], (rng.integers(3, 6), 2)).astype(np.int32)
            cv2.polylines(img, [pts], False, color, int(rng.integers(1, 5)), cv2.LINE_AA)
        elif kind == 3:  # limb-like distractor: a bent thick stroke, often skin-coloured
            if rng.random() < 0.5:
                tone = rng.uniform(0.3, 1.0)
                color = tuple(int(c) for c in np.array([90, 130, 200]) * tone)
            a = np.array([x, y], float)
            b = a + rng.normal(0, size, 2)
            c = b + rng.normal(0, size, 2)
            t = int(rng.integers(3, 10))
            cv2.polylines(img, [np.array([a, b, c]).astype(np.int32)], False, color, t, cv2.LINE_AA)
        else:
            cv2.ellipse(img, (x, y), (size // 2, size // 4), float(rng.uniform(0, 180)), 0, 360, color, -1, cv2.LINE_AA)
    return img


def _lighting(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    gx = np.linspace(-1, 1, w, dtype=np.float32)[None, :] * rng.uniform(-0.35, 0.35)
    gy = np.linspace(-1, 1, h, dtype=np.float32)[:, None] * rng.uniform(-0.35, 0.35)
    gain = (rng.uniform(0.6, 1.3) * (1 + gx + gy))[..., None]
    cast = rng.uniform(0.8, 1.2, 3).astype(np.float32)
    out = img.astype(np.float32) * gain * cast
    out = 255.0 * np.power(np.clip(out / 255.0, 0, 1), rng.uniform(0.7, 1.4))
    out += rng.normal(0, rng.uniform(0, 6), out.shape).astype(np.float32)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (3, 3), rng.uniform(0.3, 1.2))
    return out


def _mask_box_area(mask: np.ndarray) -> tuple[list[float], float] | None:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], float(xs.size)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _blank_annotation(ann_id: int, image_id: int, box: list[float], area: float, iscrowd: int, seg) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": box, "area": area, "iscrowd": iscrowd,
            "num_keypoints": 0, "keypoints": [0] * (NUM_KEYPOINTS * 3), "segmentation": seg}


def _draw_with_mask(img: np.ndarray, fig: Figure, colors: dict, mask: np.ndarray) -> None:
    draw_figure(img, fig, colors)
    draw_figure(mask, fig, {k: 1 for k in colors}, aa=False)


def _unlabelled_people(rng: np.random.Generator, img: np.ndarray) -> list[tuple[list[float], float, int, object]]:
    """A crowd region (iscrowd=1) and a small unlabelled person, each sometimes: (box, area, iscrowd, seg)."""
    h, w = img.shape[:2]
    found = []
    if rng.random() < 0.15:  # a crowd region of many small figures, annotated once with iscrowd=1
        crowd = np.zeros((h, w), np.uint8)
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.3, 0.7) * h
        for _ in range(rng.integers(5, 11)):
            fh = rng.uniform(18, 36)
            fig = pose_figure(rng, np.array([cx + rng.normal(0, 0.12 * w), cy + rng.normal(0, 0.06 * h)]), fh)
            _draw_with_mask(img, fig, _person_colors(rng), crowd)
        box_area = _mask_box_area(crowd)
        if box_area:
            found.append((*box_area, 1, _rle(crowd)))
    if rng.random() < 0.2:  # a small person without keypoint labels, as COCO has many
        fig = pose_figure(rng, np.array([rng.uniform(0, w), rng.uniform(0.3, 0.8) * h]), rng.uniform(20, 40))
        colors = _person_colors(rng)
        mask = np.zeros((h, w), np.uint8)
        _draw_with_mask(img, fig, colors, mask)
        box_area = _mask_box_area(mask)
        if box_area:
            found.append((*box_area, 0, []))
    return found


def _keypointed_people(rng: np.random.Generator, img: np.ndarray) -> tuple[list[tuple[Figure, np.ndarray]], np.ndarray]:
    """1-4 labelled figures drawn back to front: [(figure, mask)] and the frontmost-person label map."""
    h, w = img.shape[:2]
    n_people = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.35, 0.2, 0.1]))
    labels = np.zeros((h, w), np.uint8)  # which keypointed person is frontmost at each pixel
    figures = []
    for k in range(n_people):
        height = rng.uniform(0.45, 1.05) * h if rng.random() < 0.8 else rng.uniform(0.22, 0.45) * h
        height = max(height, 64.0)
        hip = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.3, 0.75) * h])
        hip[1] = max(hip[1], 0.45 * height)  # keep heads mostly in frame
        fig = pose_figure(rng, hip, height)
        mask = np.zeros((h, w), np.uint8)
        _draw_with_mask(img, fig, _person_colors(rng), mask)
        labels[mask > 0] = k + 1
        figures.append((fig, mask))
    return figures, labels


def _keypoint_labels(fig: Figure, labels: np.ndarray, k: int) -> np.ndarray:
    """[17,3] COCO keypoints: 2 visible, 1 occluded by a person in front, 0 outside the image or face hidden."""
    h, w = labels.shape
    pts = fig.points
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < w) & (pts[:, 1] >= 0) & (pts[:, 1] < h)
    xi = np.clip(pts[:, 0].astype(int), 0, w - 1)
    yi = np.clip(pts[:, 1].astype(int), 0, h - 1)
    occluded = labels[yi, xi] > k + 1
    vis = np.where(inside & fig.face_visible, np.where(occluded, 1, 2), 0)
    kps = np.zeros((NUM_KEYPOINTS, 3))
    kps[:, :2] = np.where(vis[:, None] > 0, np.round(pts, 2), 0)
    kps[:, 2] = vis
    return kps


def render_image(seed: int, split: str, index: int) -> tuple[bytes, dict, list[dict]]:
    """Render one synthetic image: (JPEG bytes, COCO image entry, COCO annotations)."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    h, w = int(rng.integers(224, 353)), int(rng.integers(256, 401))
    image_id = SPLIT_ID_BASE[split] + index + 1
    img = _background(rng, h, w)
    anns: list[dict] = []
    for box, area, iscrowd, seg in _unlabelled_people(rng, img):
        anns.append(_blank_annotation(image_id * 100 + len(anns), image_id, box, area, iscrowd, seg))
    figures, labels = _keypointed_people(rng, img)
    for k, (fig, mask) in enumerate(figures):
        found = _mask_box_area(mask)
        kps = _keypoint_labels(fig, labels, k) if found else None
        if kps is None or not (kps[:, 2] > 0).any():
            continue
        ann = _blank_annotation(image_id * 100 + len(anns), image_id, found[0], found[1], 0, [])
        ann["keypoints"] = [float(v) if i % 3 != 2 else int(v) for i, v in enumerate(kps.reshape(-1))]
        ann["num_keypoints"] = int((kps[:, 2] > 0).sum())
        anns.append(ann)
    img = _lighting(rng, img)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(75, 96))])
    assert ok
    entry = {"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w, "height": h}
    return buf.tobytes(), entry, anns


def _render_and_write(args: tuple[int, str, int, str]) -> tuple[dict, list[dict]]:
    seed, split, index, folder = args
    data, entry, anns = render_image(seed, split, index)
    with open(os.path.join(folder, entry["file_name"]), "wb") as f:
        f.write(data)
    return entry, anns


def synth_split(out_dir: str, split: str, count: int, seed: int, workers: int = 1, progress=None) -> dict:
    """Write `count` images of one split plus its annotation JSON; returns the JSON dict."""
    folder = os.path.join(out_dir, split)
    os.makedirs(folder, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    jobs = [(seed, split, i, folder) for i in range(count)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = []
            for result in pool.map(_render_and_write, jobs, chunksize=8):
                results.append(result)
                if progress:
                    progress(1)
    else:
        results = []
        for job in jobs:
            results.append(_render_and_write(job))
            if progress:
                progress(1)
    doc = {
        "info": {"description": f"cdkd-ray synthetic person keypoints ({split}, seed {seed})", "version": "1.0"},
        "licenses": [],
        "images": [entry for entry, _ in results],
        "annotations": [ann for _, anns in results for ann in anns],
        "categories": [person_category()],
    }
    path = os.path.join(out_dir, "annotations", f"person_keypoints_{split}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)
    return doc
