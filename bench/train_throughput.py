"""Training throughput, side by side in one run; prints images/s and ratios.

    python bench/train_throughput.py [--images 120] [--json]

1. Plain single-process PyTorch loop on in-memory tensors vs Ray Train with 1 and 2 workers
   (same global batch), all baseline ResNet-18 at 128x96 on the same synthetic shards.
2. CDKD step cost vs baseline step cost: teacher (ResNet-50) in the worker, and as a Ray Data actor
   pool, against the FLOP-based expectation (student fwd+bwd ~ 3x fwd; teacher fwd 1x; align).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdkd_ray.core.shards import shard_coco  # noqa: E402
from cdkd_ray.core.coco.synth import synth_split  # noqa: E402
from cdkd_ray.core.config import load_config  # noqa: E402
from cdkd_ray.core.experiment import ExperimentConfig  # noqa: E402

GLOBAL_BATCH = 16


def plain_loop(shards: str, cfg: ExperimentConfig, steps: int) -> float:
    import torch

    from cdkd_ray.core.instances import build_instances
    from cdkd_ray.core.shard_reader import iter_shard_rows
    from cdkd_ray.core.geometry import normalize_images
    from cdkd_ray.core.losses import heatmap_mse
    from cdkd_ray.core.models.pose_resnet import PoseResNet

    torch.set_num_threads(2)
    inst = [build_instances(r, cfg.data, True) for r in iter_shard_rows(shards, "train", 16)]
    images = torch.from_numpy(np.concatenate([i["image"] for i in inst]))
    target = torch.from_numpy(np.concatenate([i["target"] for i in inst]))
    weight = torch.from_numpy(np.concatenate([i["target_weight"] for i in inst]))
    model = PoseResNet(cfg.model)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    n = len(images) - GLOBAL_BATCH
    for step in range(steps + 2):
        if step == 2:
            start = time.perf_counter()
        i = (step * GLOBAL_BATCH) % max(1, n)
        loss = heatmap_mse(model(normalize_images(images[i:i + GLOBAL_BATCH])), target[i:i + GLOBAL_BATCH],
                           weight[i:i + GLOBAL_BATCH])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * GLOBAL_BATCH / (time.perf_counter() - start)


def ray_train_rate(shards: str, storage: str, name: str, overrides: list[str], teacher: str | None = None) -> float:
    from cdkd_ray.ray_adapters.train_driver import run_training

    cfg = load_config(ExperimentConfig, "tiny", ["train.epochs=2", "train.max_steps_per_epoch=1000",
                                                 "train.val_every=100", *overrides])
    run_training(cfg, "distill", shards, storage, name, teacher_checkpoint=teacher, write_outputs=False)
    with open(os.path.join(storage, name, _latest(storage, name), "trainer_state.json")) as f:
        return json.load(f)["history"][-1]["images_per_s"]  # epoch 2: start-up excluded


def _latest(storage: str, name: str) -> str:
    return sorted(d for d in os.listdir(os.path.join(storage, name)) if d.startswith("checkpoint_epoch"))[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch

    from cdkd_ray.core.models.info import model_info
    from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet
    from cdkd_ray.ray_adapters.runtime import ensure_ray

    work = tempfile.mkdtemp(prefix="cdkd-train-bench-")
    synth_split(work, "train", args.images, seed=0)
    synth_split(work, "val", 8, seed=0)
    shards = os.path.join(work, "shards")
    for split in ("train", "val"):
        shard_coco(os.path.join(work, "annotations", f"person_keypoints_{split}.json"), os.path.join(work, split),
                   shards, split=split, show_progress=False)
    cfg = load_config(ExperimentConfig, "tiny")
    teacher = os.path.join(work, "teacher.pth")
    torch.save(PoseResNet(ModelConfig(arch="resnet50")).state_dict(), teacher)

    plain = plain_loop(shards, cfg, 30)
    ensure_ray()
    storage = os.path.join(work, "runs")
    common = ["train.torch_threads=1", "teacher.num_cpus=1"]
    one = ray_train_rate(shards, storage, "w1", [*common, "train.num_workers=1", f"train.batch_size={GLOBAL_BATCH}",
                                                 "train.torch_threads=2", "distill.enabled=false"])
    two = ray_train_rate(shards, storage, "w2", [*common, "train.num_workers=2",
                                                 f"train.batch_size={GLOBAL_BATCH // 2}", "distill.enabled=false"])
    single = [*common, "train.num_workers=1", f"train.batch_size={GLOBAL_BATCH}", "train.torch_threads=2"]
    base = one
    in_worker = ray_train_rate(shards, storage, "kd-worker", [*single, "teacher.placement=worker"], teacher)
    pool = ray_train_rate(shards, storage, "kd-pool", [*single, "teacher.placement=pool"], teacher)

    costs = model_info("tiny", overrides=["teacher.arch=resnet50"])["models"]
    s_flops = next(v["flops"] for k, v in costs.items() if k.startswith("student"))
    t_flops = next(v["flops"] for k, v in costs.items() if k.startswith("teacher"))
    a_flops = next(v["flops"] for k, v in costs.items() if k.startswith("train-only"))
    expected = (3 * s_flops + t_flops + 3 * a_flops) / (3 * s_flops)
    result = {"plain_images_per_s": plain, "ray_1_worker": one, "ray_2_workers": two,
              "ray1_over_plain": one / plain, "ray2_over_plain": two / plain,
              "baseline_images_per_s": base, "cdkd_teacher_in_worker": in_worker, "cdkd_teacher_pool": pool,
              "cdkd_step_cost_in_worker": base / in_worker, "cdkd_step_cost_pool": base / pool,
              "flop_expected_step_cost": expected}
    print(f"plain PyTorch loop, in-memory tensors     {plain:7.1f} img/s")
    print(f"Ray Train, 1 worker (batch {GLOBAL_BATCH})            {one:7.1f} img/s   {one / plain:.2f}x plain")
    print(f"Ray Train, 2 workers (batch {GLOBAL_BATCH // 2} each)       {two:7.1f} img/s   {two / plain:.2f}x plain")
    print(f"CDKD, teacher in worker                   {in_worker:7.1f} img/s   step cost {base / in_worker:.2f}x baseline")
    print(f"CDKD, teacher as actor pool               {pool:7.1f} img/s   step cost {base / pool:.2f}x baseline")
    print(f"FLOP-based expectation (teacher serial)   step cost {expected:.2f}x baseline")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
