"""The AP ceiling of a heatmap resolution: ground truth through crop -> encode -> decode -> image."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from cdkd_ray.core.data_config import DataConfig
from cdkd_ray.core.codec import heatmaps_to_keypoints
from cdkd_ray.core.instances import build_instances, load_detections
from cdkd_ray.core.shard_reader import iter_shard_rows, load_split_annotations
from cdkd_ray.core.evaluation import evaluate_keypoints, predictions_to_results
from cdkd_ray.core.targets import batch_targets


def codec_check(uri: str, split: str, cfg: DataConfig, boxes_file: str | None = None,
                s3_endpoint: str | None = None, show_progress: bool = True) -> dict:
    """Evaluate GT keypoints pushed through the codec; returns AP stats and the instance count."""
    detections = load_detections(boxes_file, cfg.det_score_threshold) if boxes_file else None
    parts = {k: [] for k in ("keypoints", "scores", "image_id", "box_score", "area")}
    rows_read = iter_shard_rows(uri, split, cfg.images_per_block, s3_endpoint, labelled_only=detections is None)
    for rows in tqdm(rows_read, desc="codec-check",
                     unit="batch", disable=not show_progress):
        inst = build_instances(rows, cfg, train=False, detections=detections, match_gt=True)
        if not len(inst["image_id"]):
            continue
        target = batch_targets(torch.from_numpy(inst["joints"]), cfg)[0].numpy()
        kpts, scores = heatmaps_to_keypoints(target, inst["center"], inst["scale"], cfg.input_size, cfg.decode)
        for key, value in (("keypoints", kpts), ("scores", scores), ("image_id", inst["image_id"]),
                           ("box_score", inst["score"]), ("area", inst["area"])):
            parts[key].append(value)
    gt = load_split_annotations(uri, split, s3_endpoint)
    if not parts["image_id"]:
        return {"instances": 0, "stats": evaluate_keypoints(gt, [])}
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    results = predictions_to_results(cat["keypoints"], cat["scores"], cat["image_id"], cat["box_score"], cat["area"])
    return {"instances": int(len(cat["image_id"])), "protocol": "detected boxes" if boxes_file else "GT boxes",
            "input_size": list(cfg.input_size), "heatmap_size": list(cfg.heatmap_size),
            "stats": evaluate_keypoints(gt, results)}
