"""COCO person-keypoint metadata: names, skeleton, flip pairs and OKS sigmas (COCO order)."""

from __future__ import annotations

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_KEYPOINTS = len(KEYPOINT_NAMES)

# 1-based, exactly as in the COCO categories block.
SKELETON_1BASED: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
    (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
SKELETON: tuple[tuple[int, int], ...] = tuple((a - 1, b - 1) for a, b in SKELETON_1BASED)

FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)

# Same values as pycocotools.cocoeval.Params for iouType='keypoints'.
OKS_SIGMAS = np.array(
    [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]
) / 10.0

UPPER_BODY_IDS: tuple[int, ...] = tuple(range(11))
LOWER_BODY_IDS: tuple[int, ...] = tuple(range(11, NUM_KEYPOINTS))

PERSON_CATEGORY_ID = 1


def is_labelled_person(person) -> bool:
    """Has keypoints and is not a crowd region: the people that train and that COCOeval scores.

    `person` is a COCO annotation or shard person (a dict), or an object with the same attributes.
    """
    get = person.get if isinstance(person, dict) else (lambda key, default=None: getattr(person, key, default))
    return (get("num_keypoints", 0) or 0) > 0 and not get("iscrowd", 0)


def flip_index() -> np.ndarray:
    """Permutation that maps each keypoint to its mirror partner."""
    perm = np.arange(NUM_KEYPOINTS)
    for a, b in FLIP_PAIRS:
        perm[a], perm[b] = b, a
    return perm


def person_category() -> dict:
    """The COCO 'person' categories entry with keypoint names and skeleton."""
    return {
        "supercategory": "person",
        "id": PERSON_CATEGORY_ID,
        "name": "person",
        "keypoints": list(KEYPOINT_NAMES),
        "skeleton": [list(edge) for edge in SKELETON_1BASED],
    }


FLIP_INDEX = flip_index()
