"""What does Ray cost? Ray Train + Ray Data against torchrun + DataLoader, side by side in one run.

    python bench/torchrun_vs_ray.py [--images 600] [--epochs 3] [--json]

Both sides read the same shards, run the same decode/augment/target code (`build_instances`), the same
model and the same training step (the core's `fit_epoch`), at 1 and 2 workers with the same global batch
and the same CPU budget (all cores of this machine: 1 worker gets them all, 2 workers half each; the
DataLoader gets as many processes per rank as the rank has cores, Ray Data schedules its own tasks).
Epoch 0 is start-up; steady state is the mean of the later epochs. Printed:

1. the data path alone, samples/s: one process (no Ray, no DataLoader), DataLoader with shuffle,
   Ray Data (`build_dataset` + `train_batches` with the instance shuffle buffer), and per core;
2. training, samples/s: torchrun (DDP, gloo) + DataLoader vs Ray Train + Ray Data, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from cdkd_ray.core.config import load_config  # noqa: E402
from cdkd_ray.core.experiment import ExperimentConfig  # noqa: E402

BASE = ["data.input_size=[96,64]", "data.heatmap_size=[24,16]", "data.sigma=1.5", "distill.enabled=false",
        "train.lr_steps=[100]", "train.val_every=100"]
GLOBAL_BATCH = 16
CORES = os.cpu_count() or 2


def experiment(workers: int, epochs: int) -> ExperimentConfig:
    return load_config(ExperimentConfig, "synth-cpu", [
        *BASE, f"train.epochs={epochs}", f"train.num_workers={workers}", f"train.batch_size={GLOBAL_BATCH // workers}",
        f"train.cpus_per_worker={CORES / workers:g}", f"train.torch_threads={max(1, CORES // workers)}"])


def steady(rates: list[float]) -> float:
    return statistics.mean(rates[1:]) if len(rates) > 1 else rates[0]


# ------------------------------------------------------------------ the torchrun side (one process per rank)

def torchrun_worker(args) -> None:
    """One torchrun rank: DataLoader over InstanceDataset (+ DistributedSampler), DDP, the core's fit_epoch."""
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader, DistributedSampler

    from cdkd_ray.core.experiment import RunKind
    from cdkd_ray.core.torch_data import InstanceDataset
    from cdkd_ray.core.training import fit_epoch, new_session

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo")
    cfg = experiment(world, args.epochs)
    torch.set_num_threads(cfg.train.torch_threads)
    dataset = InstanceDataset(args.shards, "train", cfg.data)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.data.seed or 0)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=True,
                        num_workers=max(1, CORES // world))
    session = new_session(cfg, RunKind.BASELINE)
    if world > 1:
        session.model = torch.nn.parallel.DistributedDataParallel(session.module)
    rates = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        if args.data_only:
            started, seen = time.perf_counter(), sum(len(b["image"]) for b in loader)
            rates.append(seen * world / (time.perf_counter() - started))
        else:
            rates.append(fit_epoch(session, loader, epoch, world)["images_per_s"])
    if rank == 0:
        print("RATES " + json.dumps(rates), flush=True)
    if world > 1:
        dist.destroy_process_group()


def torchrun_rates(shards: str, workers: int, epochs: int, data_only: bool = False) -> list[float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
           os.path.abspath(__file__), "--worker", "--shards", shards, "--epochs", str(epochs)]
    proc = subprocess.run(cmd + (["--data-only"] if data_only else []), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(max(1, CORES // workers))})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RATES ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"torchrun failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RATES "):])


# ------------------------------------------------------------------ the Ray side and the one-process reference

def single_process_rate(shards: str, epochs: int) -> list[float]:
    """The data path in one process on one core: shard rows -> build_instances, per epoch."""
    import cv2
    import torch

    from cdkd_ray.core.instances import build_instances
    from cdkd_ray.core.shard_reader import iter_shard_rows

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg, rates = experiment(1, epochs), []
    for epoch in range(epochs):
        started = time.perf_counter()
        seen = sum(len(build_instances(rows, cfg.data, True, epoch)["image"])
                   for rows in iter_shard_rows(shards, "train", cfg.data.images_per_block))
        rates.append(seen / (time.perf_counter() - started))
    return rates


def ray_data_rate(shards: str, epochs: int, overrides: list[str] = ()) -> list[float]:
    """Ray Data's training stream alone (build_dataset + train_batches), per epoch."""
    import dataclasses

    from cdkd_ray.ray_adapters.pipeline import build_dataset, train_batches

    cfg = experiment(1, epochs)
    cfg = dataclasses.replace(cfg, data=load_config(ExperimentConfig, "synth-cpu", [*BASE, *overrides]).data)
    ds, rates = build_dataset(shards, "train", cfg.data, shuffle_files=True), []
    for epoch in range(epochs):
        started = time.perf_counter()
        seen = sum(len(b["image"]) for b in train_batches(ds, cfg, epoch))
        rates.append(seen / (time.perf_counter() - started))
    return rates


def ray_train_rates(shards: str, storage: str, workers: int, epochs: int) -> list[float]:
    from cdkd_ray.core.experiment import RunKind
    from cdkd_ray.ray_adapters.train_driver import run_training

    summary = run_training(experiment(workers, epochs), RunKind.BASELINE, shards, storage, f"ray-w{workers}",
                           write_outputs=True)
    with open(os.path.join(summary["run_dir"], "metrics.jsonl")) as f:
        return [json.loads(line)["images_per_s"] for line in f if line.strip()]


# ------------------------------------------------------------------ the comparison

def measure(shards: str, storage: str, epochs: int) -> dict:
    """Every rate per epoch, in one run: torchrun first (no Ray running), then Ray."""
    from cdkd_ray.ray_adapters.runtime import ensure_ray

    rates = {"single_process_data": single_process_rate(shards, epochs)}
    for workers in (1, 2):
        rates[f"dataloader_data_w{workers}"] = torchrun_rates(shards, workers, epochs, data_only=True)
        rates[f"torchrun_train_w{workers}"] = torchrun_rates(shards, workers, epochs)
    ensure_ray()
    rates["ray_data"] = ray_data_rate(shards, epochs)
    rates["ray_data_no_shuffle"] = ray_data_rate(shards, epochs, ["data.shuffle_buffer=0"])
    for workers in (1, 2):
        rates[f"ray_train_w{workers}"] = ray_train_rates(shards, storage, workers, epochs)
    return rates


def report(rates: dict) -> dict:
    s = {key: steady(values) for key, values in rates.items()}
    result = {"cores": CORES, "steady_samples_per_s": s, "per_epoch": rates,
              "ray_data_per_core_vs_single_process": s["ray_data"] / CORES / s["single_process_data"],
              "dataloader_per_core_vs_single_process": s["dataloader_data_w1"] / CORES / s["single_process_data"],
              "shuffle_buffer_cost": 1 - s["ray_data"] / s["ray_data_no_shuffle"]}
    for w in (1, 2):
        result[f"ray_train_vs_torchrun_w{w}"] = s[f"ray_train_w{w}"] / s[f"torchrun_train_w{w}"]
    rows = [("data path, one process, one core (reference)", "single_process_data", None),
            ("data path, DataLoader shuffle=True, 1 rank", "dataloader_data_w1", "single_process_data"),
            ("data path, Ray Data + instance shuffle", "ray_data", "single_process_data"),
            ("data path, Ray Data, no shuffle buffer", "ray_data_no_shuffle", "ray_data"),
            ("train, torchrun + DataLoader, 1 worker", "torchrun_train_w1", None),
            ("train, Ray Train + Ray Data, 1 worker", "ray_train_w1", "torchrun_train_w1"),
            ("train, torchrun + DataLoader, 2 workers", "torchrun_train_w2", None),
            ("train, Ray Train + Ray Data, 2 workers", "ray_train_w2", "torchrun_train_w2")]
    lines = [f"{'(samples/s, steady state = epochs 1..; start-up = epoch 0)':<62}{'steady':>9}{'epoch 0':>9}  ratio"]
    for label, key, against in rows:
        ratio = f"{s[key] / s[against]:.2f}x {against}" if against else ""
        lines.append(f"{label:<62}{s[key]:>9.1f}{rates[key][0]:>9.1f}  {ratio}")
    lines.append(f"per core: Ray Data {result['ray_data_per_core_vs_single_process']:.2f}x, DataLoader "
                 f"{result['dataloader_per_core_vs_single_process']:.2f}x the one-process path ({CORES} cores); "
                 f"shuffle buffer costs {result['shuffle_buffer_cost']:.1%} of Ray Data's rate")
    result["table"] = "\n".join(lines)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--shards", help="existing shard root (default: synthesise --images)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one torchrun rank
    parser.add_argument("--data-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return torchrun_worker(args)
    from cdkd_ray.apps.recipes import make_synthetic, shard_coco_dir

    work = tempfile.mkdtemp(prefix="cdkd-torchrun-bench-")
    shards = args.shards or shard_coco_dir(make_synthetic(os.path.join(work, "synth"), args.images, 8, seed=0),
                                           os.path.join(work, "shards"), rows_per_file=50)
    result = report(measure(shards, os.path.join(work, "runs"), args.epochs))
    print(result["table"])
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "table"}))


if __name__ == "__main__":
    main()
