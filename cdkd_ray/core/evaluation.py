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

from cdkd_ray.core.keypoints import OKS_SIGMAS, is_labelled_person

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


@contextlib.contextmanager
def quiet_pycocotools(enabled: bool = True):
    """Silence pycocotools' prints (module-level, so it also works in Ray's worker threads)."""
    import pycocotools.coco
    import pycocotools.cocoeval

    if not enabled:
        yield
        return
    modules = (pycocotools.coco, pycocotools.cocoeval)
    saved = [m.__dict__.get("print") for m in modules]
    for m in modules:
        m.print = lambda *args, **kwargs: None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for m, old in zip(modules, saved):
            if old is None:
                del m.print
            else:
                m.print = old


def load_coco_gt(annotations: dict | str) -> COCO:
    """A pycocotools COCO object from a dict or a JSON path, built quietly."""
    coco = COCO()
    with quiet_pycocotools():
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
        if is_labelled_person(a)
    ]


def evaluate_keypoints(gt: COCO | dict | str, results: list[dict], verbose: bool = False) -> dict:
    """Run COCOeval 'keypoints'; returns AP/AR stats by name (all 0.0 when there are no results)."""
    coco = gt if isinstance(gt, COCO) else load_coco_gt(gt)
    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    with quiet_pycocotools(not verbose):
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


def oks_matrix(kpts: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Pairwise OKS [M,M] between M predicted poses [M,K,3] (areas as object scale)."""
    var = (sigmas * 2) ** 2
    d2 = ((kpts[:, None, :, :2] - kpts[None, :, :, :2]) ** 2).sum(-1)  # [M,M,K]
    area = (areas[:, None] + areas[None, :]) / 2
    e = d2 / var / (area[..., None] + np.spacing(1)) / 2
    return np.exp(-e).mean(-1)


def oks_nms(kpts: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float, sigmas: np.ndarray) -> list[int]:
    """Greedy OKS non-maximum suppression; returns kept indices, best first."""
    # Stable: on equal scores the earlier pose wins (SimpleBaseline's argsort()[::-1] takes the later one).
    order = np.argsort(-scores, kind="stable")
    oks = oks_matrix(kpts, areas, sigmas)
    keep: list[int] = []
    suppressed = np.zeros(len(scores), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= oks[i] > threshold
    return keep


def rescore(keypoint_scores: np.ndarray, box_scores: np.ndarray, threshold: float = 0.2) -> np.ndarray:
    """Person score: box score x mean of the keypoint scores above `threshold` (SimpleBaseline)."""
    above = keypoint_scores > threshold
    mean = np.where(above.any(1), (keypoint_scores * above).sum(1) / np.maximum(above.sum(1), 1), 0.0)
    return box_scores * mean


def predictions_to_results(keypoints: np.ndarray, keypoint_scores: np.ndarray, image_ids: np.ndarray,
                           box_scores: np.ndarray, areas: np.ndarray, nms_threshold: float = 0.9,
                           rescore_threshold: float = 0.2) -> list[dict]:
    """COCO keypoint results from image-space predictions: rescoring, then OKS-NMS per image."""
    scores = rescore(keypoint_scores, box_scores, rescore_threshold)
    poses = np.concatenate([keypoints, keypoint_scores[..., None]], -1)
    results = []
    for image_id in np.unique(image_ids):
        idx = np.nonzero(image_ids == image_id)[0]
        keep = oks_nms(poses[idx], scores[idx], areas[idx], nms_threshold, OKS_SIGMAS) if nms_threshold < 1 else range(len(idx))
        for j in keep:
            i = idx[j]
            results.append({"image_id": int(image_id), "category_id": 1,
                            "keypoints": [round(float(v), 3) for v in poses[i].reshape(-1)],
                            "score": float(scores[i])})
    return results
