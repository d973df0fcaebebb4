"""Data pipeline benchmark, measured side by side in one run; prints samples/s and ratios.

(a') our vectorised keypoint transform + target step  vs  (b') a straightforward reference that
transforms and renders targets keypoint by keypoint, as the original SimpleBaseline code does;
(a) our whole per-sample path (decode, augment, crop, targets)  vs  (b) the reference's;
(c) Ray Data streaming from local shards  vs  (d) from an S3 endpoint (moto server on loopback) with
pyarrow's S3 client (the default) and (d') with s3fs; steady state, start-up reported apart.

    python bench/data_pipeline.py [--images 600] [--epochs 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._streams import scratch_folder  # noqa: E402

from cdkd_ray.core.coco.images import decode_bgr  # noqa: E402
from cdkd_ray.core.shards import shard_coco  # noqa: E402
from cdkd_ray.core.coco.synth import synth_split  # noqa: E402
from cdkd_ray.core.data_config import DataConfig  # noqa: E402
from cdkd_ray.core.instances import build_instances  # noqa: E402
from cdkd_ray.core.keypoints import is_labelled_person  # noqa: E402
from cdkd_ray.core.targets import batch_targets  # noqa: E402
from cdkd_ray.core.shard_reader import iter_shard_rows  # noqa: E402
from cdkd_ray.core.augment import sample_augment  # noqa: E402
from cdkd_ray.core.geometry import box_to_center_scale, crop_affine  # noqa: E402


def reference_target(joint_set: np.ndarray, mat: np.ndarray, cfg: DataConfig) -> np.ndarray:
    """One instance's targets, keypoint by keypoint, as the original SimpleBaseline code renders them."""
    h, w = cfg.heatmap_size
    stride = cfg.input_size[1] / w
    tmp = 3 * cfg.sigma
    target = np.zeros((17, h, w), np.float32)
    for k in range(17):
        x = mat[0, 0] * joint_set[k, 0] + mat[0, 1] * joint_set[k, 1] + mat[0, 2]
        y = mat[1, 0] * joint_set[k, 0] + mat[1, 1] * joint_set[k, 1] + mat[1, 2]
        mu_x, mu_y = int(x / stride + 0.5), int(y / stride + 0.5)
        ul = [int(mu_x - tmp), int(mu_y - tmp)]
        br = [int(mu_x + tmp + 1), int(mu_y + tmp + 1)]
        if joint_set[k, 2] == 0 or ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
            continue
        size = 2 * int(tmp) + 1
        xs = np.arange(0, size, 1, np.float32)
        g = np.exp(-((xs - size // 2) ** 2 + (xs[:, None] - size // 2) ** 2) / (2 * cfg.sigma ** 2))
        g_x = max(0, -ul[0]), min(br[0], w) - ul[0]
        g_y = max(0, -ul[1]), min(br[1], h) - ul[1]
        img_x = max(0, ul[0]), min(br[0], w)
        img_y = max(0, ul[1]), min(br[1], h)
        target[k, img_y[0]:img_y[1], img_x[0]:img_x[1]] = g[g_y[0]:g_y[1], g_x[0]:g_x[1]]
    return target


def reference_instances(rows: dict, cfg: DataConfig, rng: np.random.Generator) -> int:
    """Per-instance, per-keypoint reference (SimpleBaseline style): the same work, plain loops."""
    import cv2

    n = 0
    in_h, in_w = cfg.input_size
    for data, persons in zip(rows["image"], rows["persons"]):
        image = cv2.cvtColor(decode_bgr(data), cv2.COLOR_BGR2RGB)
        for p in persons:
            if not is_labelled_person(p):
                continue
            c, s = box_to_center_scale(np.asarray([p["bbox"]]), cfg.aspect, cfg.padding)
            aug = sample_augment(rng, 1, cfg.scale_factor, cfg.rotation_factor, cfg.rotation_prob, cfg.flip_prob, 0)
            mat = crop_affine(c, s * aug.scale_mult[:, None], aug.rotation, cfg.input_size)[0]
            crop = cv2.warpAffine(image, mat, (in_w, in_h), flags=cv2.INTER_LINEAR)
            reference_target(np.asarray(p["keypoints"], np.float32).reshape(17, 3), mat, cfg)
            crop.transpose(2, 0, 1).copy()
            n += 1
    return n


def targets_vectorised(joints: np.ndarray, mats: np.ndarray, cfg: DataConfig) -> int:
    """Only the keypoint transform + targets, batched (the targets rendered as the training step does, on the CPU)."""
    from cdkd_ray.core.geometry import apply_affine

    crop = np.concatenate([apply_affine(joints[..., :2], mats), joints[..., 2:]], -1)
    batch_targets(torch.from_numpy(crop.astype(np.float32)), cfg)
    return len(joints)


def instances_with_targets(rows: dict, cfg: DataConfig) -> int:
    """Our whole per-sample path: build_instances, then the targets the training step renders from its joints."""
    instances = build_instances(rows, cfg, True)
    batch_targets(torch.from_numpy(instances["joints"]), cfg)
    return len(instances["image_id"])


def targets_reference(joints: np.ndarray, mats: np.ndarray, cfg: DataConfig) -> int:
    """Only the keypoint transform + targets, per instance and keypoint."""
    for joint_set, mat in zip(joints, mats):
        reference_target(joint_set, mat, cfg)
    return len(joints)


def time_local(rows_list, fn) -> tuple[float, int]:
    start = time.perf_counter()
    n = sum(fn(rows) for rows in rows_list)
    return n / (time.perf_counter() - start), n


def ray_epoch_rates(uri: str, cfg: DataConfig, epochs: int) -> list[float]:
    """Samples/s of each pass over one Ray Dataset: epoch 0 carries the start-up, later ones are steady state."""
    from cdkd_ray.ray_adapters.pipeline import build_dataset

    ds, rates = build_dataset(uri, "train", cfg), []
    for _ in range(epochs):
        start = time.perf_counter()
        n = sum(len(b["image_id"]) for b in ds.iter_batches(batch_size=32, batch_format="numpy"))
        rates.append(n / (time.perf_counter() - start))
    return rates


def steady(rates: list[float]) -> float:
    return sum(rates[1:]) / max(1, len(rates) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=4, help="passes over each Ray Dataset (the first is start-up)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # (a) renders its targets with torch: one core, as the reference (b) runs
    cfg = DataConfig()
    work = scratch_folder("cdkd-bench-")
    synth_split(work, "train", args.images, seed=0)
    shard_coco(os.path.join(work, "annotations", "person_keypoints_train.json"), os.path.join(work, "train"),
               os.path.join(work, "shards"), split="train", rows_per_file=50, show_progress=False)
    rows_list = list(iter_shard_rows(os.path.join(work, "shards"), "train", cfg.images_per_block))

    # (a) vs (b), alternating to share machine noise
    rng = np.random.default_rng(0)
    a_rates, b_rates = [], []
    for _ in range(2):
        a_rates.append(time_local(rows_list, lambda r: instances_with_targets(r, cfg))[0])
        b_rates.append(time_local(rows_list, lambda r: reference_instances(r, cfg, rng))[0])
    a, b = max(a_rates), max(b_rates)

    # (a') vs (b'): the keypoint transform + target step alone, batches of 32 instances
    insts = [build_instances(r, cfg, True) for r in rows_list]
    joints = np.concatenate([i["joints"] for i in insts])
    center, scale = np.concatenate([i["center"] for i in insts]), np.concatenate([i["scale"] for i in insts])
    mats = crop_affine(center, scale, np.zeros(len(center)), cfg.input_size)
    chunks = [(joints[i:i + 32], mats[i:i + 32]) for i in range(0, len(joints), 32)]
    at_rates, bt_rates = [], []
    for _ in range(3):
        at_rates.append(time_local(chunks, lambda c: targets_vectorised(c[0], c[1], cfg))[0])
        bt_rates.append(time_local(chunks, lambda c: targets_reference(c[0], c[1], cfg))[0])
    at, bt = max(at_rates), max(bt_rates)

    # (c) vs (d): Ray Data streaming, local folder vs S3 (moto server on loopback)
    from _moto import start_moto_s3

    server = start_moto_s3("bench")
    os.environ["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] = "1"
    shard_coco(os.path.join(work, "annotations", "person_keypoints_train.json"), os.path.join(work, "train"),
               "s3://bench/shards", split="train", rows_per_file=50, show_progress=False)
    import logging

    import ray
    import ray.data

    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=512 * 1024 ** 2, _node_ip_address="127.0.0.1",
             log_to_driver=False, logging_level=logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    import dataclasses

    rates: dict[str, list[float]] = {"local": [], "s3_pyarrow": [], "s3_s3fs": []}
    for _ in range(2):  # alternating, so the three share the machine's noise
        rates["local"] += ray_epoch_rates(os.path.join(work, "shards"), cfg, args.epochs)
        rates["s3_pyarrow"] += ray_epoch_rates("s3://bench/shards", cfg, args.epochs)
        rates["s3_s3fs"] += ray_epoch_rates("s3://bench/shards", dataclasses.replace(cfg, s3_client="s3fs"), args.epochs)
    per_run = {k: [v[:args.epochs], v[args.epochs:]] for k, v in rates.items()}
    c, d, d_fs = (sum(steady(r) for r in per_run[k]) / 2 for k in ("local", "s3_pyarrow", "s3_s3fs"))
    startup = {k: sum(1 / r[0] for r in runs) / 2 for k, runs in per_run.items()}  # seconds per sample, epoch 0
    ray.shutdown()
    server.stop()

    result = {"images": args.images, "input_size": list(cfg.input_size),
              "a_vectorised_samples_per_s": round(a, 1), "b_reference_samples_per_s": round(b, 1),
              "a_over_b": round(a / b, 2),
              "a_targets_samples_per_s": round(at, 1), "b_targets_samples_per_s": round(bt, 1),
              "a_over_b_targets": round(at / bt, 2),
              "c_ray_local_samples_per_s": round(c, 1), "d_ray_s3_samples_per_s": round(d, 1),
              "d_over_c": round(d / c, 2), "d_s3fs_samples_per_s": round(d_fs, 1), "d_s3fs_over_c": round(d_fs / c, 2),
              "epoch0_samples_per_s": {k: round(1 / v, 1) for k, v in startup.items()}}
    print(f"(a') keypoint transform + targets, vectorised   {at:9.1f} samples/s")
    print(f"(b') keypoint transform + targets, per keypoint {bt:9.1f} samples/s   a'/b' = {at / bt:.2f}  (goal >= 2)")
    print(f"(a) whole sample path (decode, augment, crop, targets), ours      {a:8.1f} samples/s")
    print(f"(b) whole sample path, reference (cvtColor + per-keypoint loops)  {b:8.1f} samples/s   a/b = {a / b:.2f}")
    print(f"steady state (epochs 2..{args.epochs} of one Dataset, mean of 2 runs); epoch 1 in brackets (start-up)")
    e0 = result["epoch0_samples_per_s"]
    print(f"(c) Ray Data from local shards          {c:8.1f} samples/s  ({e0['local']:.1f})")
    print(f"(d) Ray Data from S3 (moto), pyarrow    {d:8.1f} samples/s  ({e0['s3_pyarrow']:.1f})   d/c = {d / c:.2f}")
    print(f"(d') Ray Data from S3 (moto), s3fs      {d_fs:8.1f} samples/s  ({e0['s3_s3fs']:.1f})   d'/c = {d_fs / c:.2f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
