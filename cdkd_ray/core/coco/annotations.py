"""Reading and validating COCO person-keypoint annotation files."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

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
    for key in ("id", "image_id", "category_id"):
        if not _is_int(ann[key]):
            return f"{name}: {key} is not an integer ({str(ann[key])[:40]})"
    if not _finite_numbers(ann["bbox"], 4):
        return f"{name}: bbox is not 4 finite numbers ({str(ann['bbox'])[:60]})"
    if ann["bbox"][2] < 0 or ann["bbox"][3] < 0:
        return f"{name}: bbox has negative width or height ({ann['bbox']})"
    if not _finite_numbers(ann["keypoints"], NUM_KEYPOINTS * 3):
        n = len(ann["keypoints"]) if isinstance(ann["keypoints"], list) else "non-list"
        return f"{name}: keypoints must be {NUM_KEYPOINTS}*3={NUM_KEYPOINTS * 3} finite numbers (got {n})"
    if any(v not in (0, 1, 2) for v in ann["keypoints"][2::3]):
        return f"{name}: keypoint visibility flags must be 0, 1 or 2"
    if ann["iscrowd"] not in (0, 1, False, True):
        return f"{name}: iscrowd must be 0 or 1"
    for key in ("area", "num_keypoints"):
        if key in ann and not (isinstance(ann[key], (int, float)) and not isinstance(ann[key], bool)
                               and math.isfinite(ann[key]) and ann[key] >= 0):
            return f"{name}: {key} is not a non-negative number ({str(ann[key])[:40]})"
    return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_json(data: bytes, source: str) -> dict:
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataValidationError(f"{source} is not valid JSON", [str(exc)]) from None
    if not isinstance(raw, dict):
        raise DataValidationError(f"{source} is not a COCO annotation file", ["top level is not an object"])
    top_missing = [k for k in ("images", "annotations") if not isinstance(raw.get(k), list)]
    if top_missing:
        raise DataValidationError(f"{source} is not a COCO annotation file",
                                  [f"missing or non-list top-level key '{k}'" for k in top_missing])
    return raw


def _collect_images(raw: dict, problems: list[str]) -> tuple[dict[int, CocoImage], list[dict], set[int]]:
    """Valid images by id, their raw entries, and the ids of invalid or duplicated images."""
    images: dict[int, CocoImage] = {}
    bad_ids: set[int] = set()
    entries = []
    for index, entry in enumerate(raw["images"]):
        problem = _check_image(entry, index)
        if problem is None and entry["id"] in images:
            problem = f"image id={entry['id']}: duplicate image id"
        if problem:
            problems.append(problem)
            if isinstance(entry, dict) and _is_int(entry.get("id")):
                bad_ids.add(entry["id"])
            continue
        images[entry["id"]] = CocoImage(entry["id"], entry["file_name"], entry["width"], entry["height"])
        entries.append(entry)
    for image_id in bad_ids:
        images.pop(image_id, None)
    return images, [e for e in entries if e["id"] not in bad_ids], bad_ids


def _annotation_problem(ann, index: int, images: dict, bad_ids: set[int], seen: set[int]) -> str | None:
    if not isinstance(ann, dict):
        return f"annotations[{index}]: not an object"
    ann_id = ann.get("id")
    name = f"annotation id={ann_id if ann_id is not None else f'<index {index}>'} (image id={str(ann.get('image_id'))[:40]})"
    problem = _check_annotation(ann, name)
    if problem is None and ann_id in seen:
        problem = f"{name}: duplicate annotation id"
    if problem is None and ann["image_id"] not in images:
        problem = (f"{name}: image id {ann['image_id']} is invalid" if ann["image_id"] in bad_ids
                   else f"{name}: points at unknown image id {ann['image_id']}")
    return problem


def _with_derived_fields(ann: dict) -> dict:
    """The annotation with `num_keypoints` and `area` filled in when absent (COCOeval needs both)."""
    out = dict(ann)
    if "num_keypoints" not in out:
        out["num_keypoints"] = int(sum(1 for v in ann["keypoints"][2::3] if v > 0))
    if "area" not in out:
        out["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return out


def _collect_persons(raw: dict, images: dict[int, CocoImage], bad_ids: set[int], person_ids: set,
                     problems: list[str]) -> tuple[list[dict], int]:
    """Attach valid person annotations to their images; returns (kept raw annotations, non-person count)."""
    seen: set[int] = set()
    kept, non_person = [], 0
    for index, ann in enumerate(raw["annotations"]):
        category = ann.get("category_id") if isinstance(ann, dict) else None
        if _is_int(category) and category not in person_ids:
            non_person += 1
            continue
        problem = _annotation_problem(ann, index, images, bad_ids, seen)
        if problem:
            problems.append(problem)
            continue
        seen.add(ann["id"])
        ann = _with_derived_fields(ann)
        images[ann["image_id"]].persons.append(PersonAnnotation(
            ann["id"], [float(v) for v in ann["bbox"]], [float(v) for v in ann["keypoints"]],
            int(ann["num_keypoints"]), float(ann["area"]), int(ann["iscrowd"])))
        kept.append(ann)
    return kept, non_person


def parse_coco_keypoints(data: bytes, source: str = "<json>", skip_bad: bool = False) -> CocoKeypointSet:
    """Parse and validate a COCO person-keypoints JSON document.

    Every problem is collected; with ``skip_bad`` the bad images/annotations are dropped and
    listed in ``problems``, otherwise a DataValidationError names all of them. Missing `area` and
    `num_keypoints` are derived (from the box and the visibility flags) and written into the kept
    annotations, so COCOeval finds them later.
    """
    raw = _load_json(data, source)
    problems: list[str] = []
    images, image_entries, bad_ids = _collect_images(raw, problems)
    categories = raw.get("categories") or [person_category()]
    person_ids = {c.get("id") for c in categories if isinstance(c, dict) and c.get("name") == "person"}
    person_ids = {i for i in person_ids if _is_int(i)} or {PERSON_CATEGORY_ID}
    annotations, non_person = _collect_persons(raw, images, bad_ids, person_ids, problems)
    if problems and not skip_bad:
        raise DataValidationError(f"{source} has invalid entries", problems)
    filtered = {**raw, "images": image_entries, "annotations": annotations,
                "categories": [c for c in categories if isinstance(c, dict) and c.get("id") in person_ids]}
    return CocoKeypointSet(images=list(images.values()), raw=filtered, source_sha256=sha256_bytes(data),
                           skipped_non_person=non_person, problems=problems)
