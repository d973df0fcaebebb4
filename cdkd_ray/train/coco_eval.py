"""COCO keypoint evaluation with pycocotools, plus the two protocols' helpers."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from typing import Iterable

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def load_coco_gt(annotations: dict | str) -> COCO:
    """A pycocotools COCO object from a dict or a JSON path, built quietly."""
    coco = COCO()
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(annotations, str):
            with open(annotations) as f:
                annotations = json.load(f)
        coco.dataset = copy.deepcopy(annotations)
        coco.createIndex()
    return coco


def gt_as_results(annotations: dict) -> list[dict]:
    """The ground truth written as detection results (score 1): the AP ceiling, 1.0."""
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "keypoints": a["keypoints"], "score": 1.0}
        for a in annotations["annotations"]
        if not a.get("iscrowd") and a.get("num_keypoints", 0) > 0
    ]


def evaluate_keypoints(gt: COCO | dict | str, results: list[dict], verbose: bool = False) -> dict:
    """Run COCOeval 'keypoints'; returns AP/AR stats by name (all -1 when nothing to score)."""
    coco = gt if isinstance(gt, COCO) else load_coco_gt(gt)
    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        dets = coco.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco, dets, "keypoints")
        ev.params.imgIds = sorted({r["image_id"] for r in results} | set(coco.getImgIds()))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def format_stats_table(rows: Iterable[tuple[str, dict]]) -> str:
    """A fixed-width table of AP stats, one row per (name, stats)."""
    cols = ("AP", "AP50", "AP75", "APm", "APl", "AR")
    lines = [f"{'':<24}" + "".join(f"{c:>8}" for c in cols)]
    for name, stats in rows:
        lines.append(f"{name:<24}" + "".join(f"{stats.get(c, float('nan')):>8.3f}" for c in cols))
    return "\n".join(lines)


def oks_iou(kpts_a: np.ndarray, kpts_b: np.ndarray, area: float, sigmas: np.ndarray) -> float:
    """OKS between two [17,3] keypoint sets (b's visibility as in COCO ground truth)."""
    var = (sigmas * 2) ** 2
    d2 = ((kpts_a[:, :2] - kpts_b[:, :2]) ** 2).sum(-1)
    e = d2 / var / (area + np.spacing(1)) / 2
    return float(np.mean(np.exp(-e)))
