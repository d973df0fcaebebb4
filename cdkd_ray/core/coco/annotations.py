"""Reading and validating COCO person-keypoint annotation files."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cdkd_ray.core.keypoints import NUM_KEYPOINTS, PERSON_CATEGORY_ID, person_category
from cdkd_ray.core.errors import DataValidationError

REQUIRED_IMAGE_FIELDS = ("id", "file_name", "width", "height")
REQUIRED_ANN_FIELDS = ("id", "image_id", "category_id", "bbox", "keypoints", "iscrowd")


@dataclass
class PersonAnnotation:
    ann_id: int
    bbox: list[float]  # x, y, w, h
    keypoints: list[float]  # 17 * (x, y, v)
    num_keypoints: int
    area: float
    iscrowd: int


@dataclass
class CocoImage:
    image_id: int
    file_name: str
    width: int
    height: int
    persons: list[PersonAnnotation] = field(default_factory=list)


@dataclass
class CocoKeypointSet:
    """A validated person-keypoint annotation set, grouped per image."""

    images: list[CocoImage]
    raw: dict  # the parsed JSON (possibly filtered), kept for COCOeval
    source_sha256: str
    skipped_non_person: int = 0
    problems: list[str] = field(default_factory=list)  # filled only when bad items were skipped

    @property
    def num_persons(self) -> int:
        return sum(len(im.persons) for im in self.images)

    def drop_images(self, image_ids: set[int]) -> None:
        """Remove images (and their annotations) from the set and from the raw JSON."""
        self.images = [im for im in self.images if im.image_id not in image_ids]
        self.raw["images"] = [im for im in self.raw["images"] if im.get("id") not in image_ids]
        self.raw["annotations"] = [
            a for a in self.raw["annotations"] if a.get("image_id") not in image_ids
        ]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_numbers(values: Any, length: int) -> bool:
    return (
        isinstance(values, list)
        and len(values) == length
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    )


def _check_image(entry: Any, index: int) -> str | None:
    if not isinstance(entry, dict):
        return f"images[{index}]: not an object"
    missing = [k for k in REQUIRED_IMAGE_FIELDS if k not in entry]
    name = f"image id={entry.get('id', f'<index {index}>')}"
    if missing:
        return f"{name}: missing field(s) {', '.join(missing)}"
    if not _is_int(entry["id"]):
        return f"{name}: id is not an integer"
    if not isinstance(entry["file_name"], str) or not entry["file_name"]:
        return f"{name}: file_name is not a non-empty string"
    for key in ("width", "height"):
        if not _is_int(entry[key]) or entry[key] <= 0:
            return f"{name}: {key} is not a positive integer ({entry[key]!r})"
    return None


def _check_annotation(ann: dict, name: str) -> str | None:
    missing = [k for k in REQUIRED_ANN_FIELDS if k not in ann]
    if missing:
        return f"{name}: missing field(s) {', '.join(missing)}"
    if not _finite_numbers(ann["bbox"], 4):
        return f"{name}: bbox is not 4 finite numbers ({str(ann['bbox'])[:60]})"
    if ann["bbox"][2] < 0 or ann["bbox"][3] < 0:
        return f"{name}: bbox has negative width or height ({ann['bbox']})"
    if not _finite_numbers(ann["keypoints"], NUM_KEYPOINTS * 3):
        n = len(ann["keypoints"]) if isinstance(ann["keypoints"], list) else "non-list"
        return f"{name}: keypoints must be {NUM_KEYPOINTS}*3={NUM_KEYPOINTS * 3} finite numbers (got {n})"
    vis = ann["keypoints"][2::3]
    if any(v not in (0, 1, 2) for v in vis):
        return f"{name}: keypoint visibility flags must be 0, 1 or 2"
    if ann["iscrowd"] not in (0, 1, False, True):
        return f"{name}: iscrowd must be 0 or 1"
    return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_coco_keypoints(data: bytes, source: str = "<json>", skip_bad: bool = False) -> CocoKeypointSet:
    """Parse and validate a COCO person-keypoints JSON document.

    Every problem is collected; with ``skip_bad`` the bad images/annotations are dropped and
    listed in ``problems``, otherwise a DataValidationError names all of them.
    """
    digest = sha256_bytes(data)
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataValidationError(f"{source} is not valid JSON", [str(exc)]) from None
    if not isinstance(raw, dict):
        raise DataValidationError(f"{source} is not a COCO annotation file", ["top level is not an object"])
    top_missing = [k for k in ("images", "annotations") if not isinstance(raw.get(k), list)]
    if top_missing:
        raise DataValidationError(
            f"{source} is not a COCO annotation file",
            [f"missing or non-list top-level key '{k}'" for k in top_missing],
        )

    problems: list[str] = []
    images: dict[int, CocoImage] = {}
    bad_image_ids: set[int] = set()
    kept_image_entries = []
    for index, entry in enumerate(raw["images"]):
        problem = _check_image(entry, index)
        if problem is None and entry["id"] in images:
            problem = f"image id={entry['id']}: duplicate image id"
        if problem:
            problems.append(problem)
            if isinstance(entry, dict) and _is_int(entry.get("id")):
                bad_image_ids.add(entry["id"])
            continue
        images[entry["id"]] = CocoImage(entry["id"], entry["file_name"], entry["width"], entry["height"])
        kept_image_entries.append(entry)
    for image_id in bad_image_ids:
        images.pop(image_id, None)
    kept_image_entries = [e for e in kept_image_entries if e["id"] not in bad_image_ids]

    categories = raw.get("categories") or [person_category()]
    person_ids = {c.get("id") for c in categories if isinstance(c, dict) and c.get("name") == "person"}
    person_ids = person_ids or {PERSON_CATEGORY_ID}

    seen_ann_ids: set[int] = set()
    skipped_non_person = 0
    kept_anns = []
    for index, ann in enumerate(raw["annotations"]):
        if not isinstance(ann, dict):
            problems.append(f"annotations[{index}]: not an object")
            continue
        ann_id = ann.get("id")
        name = f"annotation id={ann_id if ann_id is not None else f'<index {index}>'} (image id={ann.get('image_id')})"
        if "category_id" in ann and ann["category_id"] not in person_ids:
            skipped_non_person += 1
            continue
        problem = _check_annotation(ann, name)
        if problem is None and not _is_int(ann_id):
            problem = f"{name}: id is not an integer"
        if problem is None and ann_id in seen_ann_ids:
            problem = f"{name}: duplicate annotation id"
        if problem is None and ann["image_id"] not in images:
            problem = (
                f"{name}: image id {ann['image_id']} is invalid"
                if ann["image_id"] in bad_image_ids
                else f"{name}: points at unknown image id {ann['image_id']}"
            )
        if problem:
            problems.append(problem)
            continue
        seen_ann_ids.add(ann_id)
        kps = ann["keypoints"]
        num = ann.get("num_keypoints")
        if not _is_int(num):
            num = int(sum(1 for v in kps[2::3] if v > 0))
        bbox = ann["bbox"]
        area = ann.get("area")
        area = float(area) if isinstance(area, (int, float)) and math.isfinite(area) else float(bbox[2] * bbox[3])
        images[ann["image_id"]].persons.append(
            PersonAnnotation(ann_id, [float(v) for v in bbox], [float(v) for v in kps], int(num), area, int(ann["iscrowd"]))
        )
        kept_anns.append(ann)

    if problems and not skip_bad:
        raise DataValidationError(f"{source} has invalid entries", problems)
    filtered = dict(raw)
    filtered["images"] = kept_image_entries
    filtered["annotations"] = kept_anns
    filtered["categories"] = [c for c in categories if isinstance(c, dict) and c.get("id") in person_ids]
    return CocoKeypointSet(
        images=list(images.values()),
        raw=filtered,
        source_sha256=digest,
        skipped_non_person=skipped_non_person,
        problems=problems,
    )


def keypoints_array(persons: list[PersonAnnotation]) -> np.ndarray:
    """[P, 17, 3] float32 array of the persons' keypoints."""
    if not persons:
        return np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
    return np.asarray([p.keypoints for p in persons], np.float32).reshape(-1, NUM_KEYPOINTS, 3)
