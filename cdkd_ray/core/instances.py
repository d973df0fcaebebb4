"""Image rows -> top-down person instances: decode, choose boxes, augment, crop; joints in crop pixels.

One function does the whole per-batch job so that Ray Data (map_batches), the `show` and
`codec-check` commands and the benchmarks share exactly one code path.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cdkd_ray.core.coco.images import decode_bgr
from cdkd_ray.core.keypoints import NUM_KEYPOINTS, is_labelled_person
from cdkd_ray.core.data_config import DataConfig
from cdkd_ray.core.augment import flip_joints_order, half_body_center_scale, sample_augment
from cdkd_ray.core.geometry import apply_affine, box_to_center_scale, crop_affine, warp_crops
from cdkd_ray.core.errors import DataValidationError

log = logging.getLogger("cdkd_ray.data")


def empty_instances(cfg: DataConfig) -> dict[str, np.ndarray]:
    h, w = cfg.input_size
    return {
        "image": np.zeros((0, 3, h, w), np.uint8), "joints": np.zeros((0, NUM_KEYPOINTS, 3), np.float32),
        "image_id": np.zeros(0, np.int64), "center": np.zeros((0, 2), np.float32), "scale": np.zeros((0, 2), np.float32),
        "score": np.zeros(0, np.float32), "area": np.zeros(0, np.float32),
    }


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip xywh boxes to the image; returns (clipped boxes, keep mask of boxes with positive area)."""
    x0 = np.clip(boxes[:, 0], 0, width - 1)
    y0 = np.clip(boxes[:, 1], 0, height - 1)
    x1 = np.clip(boxes[:, 0] + np.maximum(boxes[:, 2] - 1, 0), 0, width - 1)
    y1 = np.clip(boxes[:, 1] + np.maximum(boxes[:, 3] - 1, 0), 0, height - 1)
    keep = (x1 > x0) & (y1 > y0) & np.isfinite(boxes).all(1)
    return np.stack([x0, y0, x1 - x0, y1 - y0], 1).astype(np.float32), keep


def load_detections(path: str, score_threshold: float = 0.0) -> dict[int, np.ndarray]:
    """A COCO detection results file -> {image_id: [M,5] (x, y, w, h, score)} for persons."""
    from cdkd_ray.core.storage import resolve

    location = resolve(path)
    if not location.exists():
        raise DataValidationError("detections file not found", [path])
    try:
        dets = json.loads(location.read_bytes())
    except json.JSONDecodeError as exc:
        raise DataValidationError(f"{path} is not valid JSON", [str(exc)]) from None
    if not isinstance(dets, list):
        raise DataValidationError(f"{path} is not a COCO detection results list", ["top level is not a list"])
    out: dict[int, list] = {}
    problems = []
    for i, d in enumerate(dets):
        if not isinstance(d, dict) or not {"image_id", "bbox", "score"} <= d.keys():
            problems.append(f"detection [{i}]: needs image_id, bbox and score")
            continue
        box = d["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            problems.append(f"detection [{i}] (image id={d['image_id']}): bbox is not 4 finite numbers")
            continue
        if d.get("category_id", 1) != 1 or d["score"] < score_threshold:
            continue
        out.setdefault(int(d["image_id"]), []).append([*box, float(d["score"])])
    if problems:
        raise DataValidationError(f"{path} has invalid detections", problems)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU [M,P] of xywh boxes."""
    a0, a1 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]
    b0, b1 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:]
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None).prod(-1)
    union = a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter
    return inter / np.maximum(union, 1e-9)


def _matched_gt_joints(boxes: np.ndarray, persons: list[dict], min_iou: float = 0.5) -> np.ndarray:
    kept = [p for p in persons if is_labelled_person(p)]
    joints = np.zeros((len(boxes), NUM_KEYPOINTS, 3), np.float32)
    if not kept or not len(boxes):
        return joints
    gt_boxes = np.asarray([p["bbox"] for p in kept], np.float32)
    gt_joints = np.asarray([p["keypoints"] for p in kept], np.float32).reshape(-1, NUM_KEYPOINTS, 3)
    iou = box_iou(boxes, gt_boxes)
    best = iou.argmax(1)
    ok = iou.max(1) >= min_iou
    joints[ok] = gt_joints[best[ok]]
    return joints


def _batch_rng(cfg: DataConfig, epoch: int, image_ids: np.ndarray) -> np.random.Generator:
    if cfg.seed is None:
        return np.random.default_rng()
    return np.random.default_rng([cfg.seed, epoch, *[int(i) % (2 ** 32) for i in image_ids]])


@dataclass
class _People:
    """The people of a batch of images, before cropping: per-person arrays plus the decoded images."""

    images: list[np.ndarray] = field(default_factory=list)  # RGB
    boxes: list[np.ndarray] = field(default_factory=list)
    joints: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    owner_index: list[np.ndarray] = field(default_factory=list)
    owner_id: list[np.ndarray] = field(default_factory=list)


def _image_people(image_id: int, persons: list[dict], train: bool, detections, match_gt: bool):
    """(boxes [M,4], joints [M,K,3], scores [M]) of one image: its labelled people, or its detections (val)."""
    if detections is not None and not train:
        dets = detections.get(int(image_id), np.zeros((0, 5), np.float32))
        joints = _matched_gt_joints(dets[:, :4], persons) if match_gt else np.zeros((len(dets), NUM_KEYPOINTS, 3),
                                                                                   np.float32)
        return dets[:, :4], joints, dets[:, 4]
    kept = [p for p in persons if is_labelled_person(p)]
    boxes = np.asarray([p["bbox"] for p in kept], np.float32).reshape(-1, 4)
    joints = np.asarray([p["keypoints"] for p in kept], np.float32).reshape(-1, NUM_KEYPOINTS, 3)
    return boxes, joints, np.ones(len(kept), np.float32)


def _collect_people(rows: dict, cfg: DataConfig, train: bool, detections, match_gt: bool,
                    on_skip: Callable[[int], None] | None = None) -> _People:
    people = _People()
    for image_id, data, persons, width, height in zip(rows["image_id"], rows["image"], rows["persons"],
                                                      rows["width"], rows["height"]):
        boxes, joints, scores = _image_people(image_id, persons, train, detections, match_gt)
        boxes, keep = clip_boxes(boxes, int(width), int(height))
        if not keep.any():
            continue  # not decoded: in COCO's train split about half the images have no labelled person
        image = decode_bgr(data)
        if image is None:
            message = f"corrupt image in shard: image id={image_id} cannot be decoded"
            if cfg.on_bad_image == "fail":
                raise DataValidationError("bad shard data", [message])
            log.warning("%s; skipped (data.on_bad_image=skip)", message)
            if on_skip is not None:
                on_skip(int(image_id))
            continue
        people.images.append(image)  # BGR, as decoded: warp_crops writes the crops in RGB
        people.boxes.append(boxes[keep])
        people.joints.append(joints[keep])
        people.scores.append(scores[keep])
        people.owner_index.append(np.full(int(keep.sum()), len(people.images) - 1))
        people.owner_id.append(np.full(int(keep.sum()), image_id, np.int64))
    return people


def build_instances(rows: dict, cfg: DataConfig, train: bool, epoch: int = 0,
                    detections: dict[int, np.ndarray] | None = None, match_gt: bool = False,
                    on_skip: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Turn a batch of shard rows (columns as lists) into model-ready person instances.

    Train: every non-crowd person with keypoints, randomly flipped/scaled/rotated/half-body.
    Val: the same persons with their GT boxes, or the detections of the image when given
    (with `match_gt`, each detection carries the keypoints of the GT person it overlaps most).
    """
    people = _collect_people(rows, cfg, train, detections, match_gt, on_skip)
    if not people.boxes:
        return empty_instances(cfg)
    boxes, joints = np.concatenate(people.boxes), np.concatenate(people.joints)
    image_index, image_ids = np.concatenate(people.owner_index), np.concatenate(people.owner_id)
    center, scale = box_to_center_scale(boxes, cfg.aspect, cfg.padding)
    rotation, flip = np.zeros(len(boxes), np.float32), np.zeros(len(boxes), bool)
    if train:
        rng = _batch_rng(cfg, epoch, np.unique(image_ids))
        aug = sample_augment(rng, len(boxes), cfg.scale_factor, cfg.rotation_factor, cfg.rotation_prob,
                             cfg.flip_prob, cfg.half_body_prob)
        hb_center, hb_scale, applied = half_body_center_scale(
            joints, aug.half_body, rng, cfg.aspect, cfg.half_body_min_joints, cfg.half_body_padding)
        center = np.where(applied[:, None], hb_center, center)
        scale = np.where(applied[:, None], hb_scale, scale) * aug.scale_mult[:, None]
        rotation, flip = aug.rotation, aug.flip
    mat = crop_affine(center, scale, rotation, cfg.input_size, flip)
    crops = warp_crops(people.images, image_index, mat, cfg.input_size, swap_red_blue=True)
    crop_joints = np.concatenate([apply_affine(joints[..., :2], mat), joints[..., 2:]], -1).astype(np.float32)
    crop_joints = flip_joints_order(crop_joints, flip)
    return {"image": crops, "joints": crop_joints, "image_id": image_ids,
            "center": center.astype(np.float32), "scale": scale.astype(np.float32),
            "score": np.concatenate(people.scores).astype(np.float32),
            "area": (scale[:, 0] * scale[:, 1]).astype(np.float32)}


def rows_from_arrow(table) -> dict:
    """The columns build_instances needs, from a pyarrow Table/RecordBatch."""
    return {name: table.column(name).to_pylist() for name in ("image_id", "image", "persons", "width", "height")}
