"""`cdkd-ray show`: a picture of what the model is fed."""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from cdkd_ray.core.data_config import DataConfig
from cdkd_ray.core.instances import build_instances
from cdkd_ray.core.shard_reader import iter_shard_rows
from cdkd_ray.core.errors import CdkdError
from cdkd_ray.core.targets import batch_targets
from cdkd_ray.core.viz import crop_with_heatmaps, grid


def show_instances(uri: str, split: str, cfg: DataConfig, count: int, out_path: str,
                   s3_endpoint: str | None = None, epoch: int = 0) -> dict:
    """Write a grid PNG of `count` crops (augmented for train) with skeletons and target heatmaps."""
    tiles: list[np.ndarray] = []
    for rows in iter_shard_rows(uri, split, cfg.images_per_block, s3_endpoint, labelled_only=True):
        inst = build_instances(rows, cfg, train=(split == "train"), epoch=epoch)
        targets = batch_targets(torch.from_numpy(inst["joints"]), cfg)[0].numpy()
        for i in range(len(inst["image_id"])):
            tiles.append(crop_with_heatmaps(inst["image"][i], targets[i], inst["joints"][i]))
            if len(tiles) >= count:
                break
        if len(tiles) >= count:
            break
    if not tiles:
        raise CdkdError(f"no person instances in {uri} split '{split}'")
    picture = grid(tiles, columns=min(8, len(tiles)))
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    if not cv2.imwrite(out_path, picture):
        raise CdkdError(f"cannot write {out_path} (use a .png or .jpg name)")
    return {"out": os.path.abspath(out_path), "instances": len(tiles)}
