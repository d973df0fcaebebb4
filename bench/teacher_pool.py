"""Persistent teacher pool vs Ray Data's actor pool vs the teacher in the worker, alternating, side by side.

    python bench/teacher_pool.py [--images 120] [--epochs 3] [--rounds 2] [--json]

Tiny CDKD runs (ResNet-18 student at 128x96, ResNet-50 teacher, 1 train worker, global batch 16, teacher
batch 16 on 1 thread) on the same synthetic shards and the same cores: `teacher.placement=worker` (the
worker with a thread per core), `teacher.placement=pool` (persistent actors, the default) and
`teacher.persistent=false` (Ray Data's pool, started anew every epoch), the student on the cores the pool
leaves (a thread fewer), and the persistent pool once more with the student on all cores (one thread
more than there are cores).
They alternate, `--rounds` times. Epoch 1 is the run's start-up;
printed are the later epochs' mean seconds and the wait for their first batch, the wall-clock seconds an
epoch over the whole run from its first batch (evaluation, checkpoints and reports between epochs
included; work that one epoch's stream does ahead for the next counted once), and the ratios to the
in-worker teacher (aim: pool <= 1.2x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench._streams import scratch_folder  # noqa: E402

from train_throughput import ray_train_epochs  # noqa: E402

from cdkd_ray.apps.recipes import make_synthetic, shard_coco_dir  # noqa: E402

# The same cores for each: the in-worker teacher's worker gets them all; beside a pool actor (1 thread) the
# student gets the rest. The last setting gives the student all of them anyway: one thread more than cores.
CORES = os.cpu_count() or 2
SETTINGS = {"in-worker": ["teacher.placement=worker", f"train.torch_threads={CORES}"],
            "persistent pool": ["teacher.placement=pool", f"train.torch_threads={max(1, CORES - 1)}"],
            "Ray Data's pool": ["teacher.placement=pool", "teacher.persistent=false",
                                f"train.torch_threads={max(1, CORES - 1)}"],
            "persistent pool, student on all cores": ["teacher.placement=pool", f"train.torch_threads={CORES}"]}
COMMON = ["train.num_workers=1", "train.batch_size=16", "teacher.num_cpus=1", "teacher.batch_size=16"]


def wall_epoch_s(run: list[dict]) -> float:
    """Wall-clock seconds an epoch over the whole run, from its first batch (the run's start-up left out) to the
    end of the last epoch: evaluation, checkpoints and reports between epochs included, and wherever one
    epoch's stream overlaps another's, both epochs' time counted once."""
    first_batch_at = run[0]["finished_at"] - run[0]["epoch_s"] + run[0]["first_batch_s"]
    return (run[-1]["finished_at"] - first_batch_at) / len(run)


def later_epochs(runs: list[list[dict]]) -> dict:
    """Mean over every run's epochs after the first (seconds, first-batch wait, img/s), and wall-clock seconds an
    epoch over whole runs from their first batch."""
    epochs = [e for run in runs for e in run[1:]]
    return {"epoch_s": statistics.mean(e["epoch_s"] for e in epochs),
            "wall_epoch_s": statistics.mean(wall_epoch_s(run) for run in runs),
            "first_batch_s": statistics.mean(e["first_batch_s"] for e in epochs),
            "first_batch_range_s": [min(e["first_batch_s"] for e in epochs), max(e["first_batch_s"] for e in epochs)],
            "images_per_s": statistics.mean(e["images_per_s"] for e in epochs),
            "after_first_batch_images_per_s": statistics.mean(e["after_first_batch_images_per_s"] for e in epochs),
            "per_run_epoch_s": [statistics.mean(e["epoch_s"] for e in run[1:]) for run in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=3, help="epochs a run (>= 2: the first is start-up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is the run's start-up")
    import torch

    from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet
    from cdkd_ray.ray_adapters.runtime import ensure_ray

    work = scratch_folder("cdkd-pool-bench-")
    shards = shard_coco_dir(make_synthetic(work, args.images, 8, seed=0), os.path.join(work, "shards"))
    teacher = os.path.join(work, "teacher.pth")
    torch.save(PoseResNet(ModelConfig(arch="resnet50")).state_dict(), teacher)
    ensure_ray()
    runs: dict[str, list] = {name: [] for name in SETTINGS}
    for r in range(args.rounds):
        for i, (name, overrides) in enumerate(SETTINGS.items()):
            runs[name].append(ray_train_epochs(shards, os.path.join(work, "runs"), f"r{r}-{i}",
                                               [*COMMON, *overrides], teacher, epochs=args.epochs))
    result = {name: later_epochs(r) for name, r in runs.items()}
    base = result["in-worker"]
    print(f"{'teacher':<38}{'epoch s':>9}{'vs in-worker':>14}{'run s/ep':>9}{'vs in-worker':>14}{'from 1st batch':>16}"
          f"{'1st batch s':>13}  per run")
    for name, m in result.items():
        m["over_in_worker"] = m["epoch_s"] / base["epoch_s"]
        m["wall_over_in_worker"] = m["wall_epoch_s"] / base["wall_epoch_s"]
        m["over_in_worker_after_first_batch"] = (base["after_first_batch_images_per_s"]
                                                 / m["after_first_batch_images_per_s"])
        low, high = m["first_batch_range_s"]
        print(f"{name:<38}{m['epoch_s']:9.1f}{m['over_in_worker']:13.2f}x{m['wall_epoch_s']:9.1f}"
              f"{m['wall_over_in_worker']:13.2f}x{m['over_in_worker_after_first_batch']:15.2f}x"
              f"{m['first_batch_s']:8.1f} ({low:.1f}-{high:.1f})  " + "/".join(f"{s:.1f}" for s in m["per_run_epoch_s"]))
    if args.json:
        print(json.dumps({"epochs": args.epochs, "rounds": args.rounds, "images": args.images, "settings": result,
                          "raw": runs}))


if __name__ == "__main__":
    main()
