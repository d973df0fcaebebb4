"""What does Ray cost? Ray Train + Ray Data against torchrun + DataLoader, side by side in one run.

    python bench/torchrun_vs_ray.py [--images 600] [--epochs 3] [--passes 32] [--json]

Both sides read the same shards, run the same decode/augment/target code (`build_instances`), the same
model and the same training step (the core's `fit_epoch`), at 1 and 2 workers with the same global batch
and the same CPU budget (all cores of this machine: 1 worker gets them all, 2 workers half each; the
DataLoader gets as many processes per rank as the rank has cores, Ray Data schedules its own tasks).
Epoch 0 is start-up; steady state is the mean of the later epochs. Printed:

1. the data path alone, samples/s in one long stream (the parts read --passes times, so a per-execution
   start-up does not hide the rate; the time to the first batch is printed apart): one process (no Ray,
   no DataLoader), DataLoader with shuffle, Ray Data (`build_dataset` + `train_batches` with the
   instance shuffle buffer, and without it), and per core against the one-process path;
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
    cfg = experiment(world, args.epochs)
    torch.set_num_threads(cfg.train.torch_threads)
    dataset = InstanceDataset(args.shards, "train", cfg.data)
    if args.passes:  # the data path alone: one long shuffled pass, twice (the first warms the page cache)
        loader = DataLoader(torch.utils.data.ConcatDataset([dataset] * args.passes), batch_size=GLOBAL_BATCH,
                            shuffle=True, drop_last=True, num_workers=CORES)
        timings = [timed_stream(loader) for _ in range(2)]
        print("RATES " + json.dumps({"startup_s": timings[1][0], "steady": timings[1][1]}), flush=True)
        return
    if world > 1:
        dist.init_process_group("gloo")
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
        rates.append(fit_epoch(session, loader, epoch, world)["images_per_s"])
    if rank == 0:
        print("RATES " + json.dumps(rates), flush=True)
    if world > 1:
        dist.destroy_process_group()


def torchrun_rates(shards: str, workers: int, epochs: int, passes: int = 0):
    """Per-epoch training rates of a torchrun job, or with `passes` the DataLoader data path alone."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
           os.path.abspath(__file__), "--worker", "--shards", shards, "--epochs", str(epochs), "--passes", str(passes)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(max(1, CORES // workers))})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RATES ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"torchrun failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RATES "):])


# ------------------------------------------------------------------ the Ray side and the one-process reference

def single_process_rate(shards: str, passes: int) -> dict:
    """The data path in one process on one core: shard rows -> build_instances, `passes` times."""
    import cv2
    import torch

    from cdkd_ray.core.instances import build_instances
    from cdkd_ray.core.shard_reader import iter_shard_rows

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg = experiment(1, 1)
    rows = list(iter_shard_rows(shards, "train", cfg.data.images_per_block))
    started = time.perf_counter()
    seen = sum(len(build_instances(r, cfg.data, True, p)["image"]) for p in range(passes) for r in rows)
    return {"startup_s": 0.0, "steady": seen / (time.perf_counter() - started)}


def timed_stream(batches) -> tuple[float, float]:
    """(seconds to the first batch, samples/s over the whole stream, start-up included) of one pass.

    Not "after the first batch": a streaming pipeline produces ahead while it starts, so that would time
    the consumer. A long stream (--passes) keeps the start-up a small part of the whole instead.
    """
    started, first, n = time.perf_counter(), None, 0
    for batch in batches:
        n += len(batch["image"])
        first = first if first is not None else time.perf_counter() - started
    return first, n / (time.perf_counter() - started)


def ray_data_rate(shards: str, passes: int, overrides: list[str] = ()) -> dict:
    """Ray Data's training stream alone (build_dataset + train_batches) over the parts read `passes` times."""
    import dataclasses

    from cdkd_ray.ray_adapters.pipeline import build_dataset, train_batches

    cfg = experiment(1, 1)
    cfg = dataclasses.replace(cfg, data=load_config(ExperimentConfig, "synth-cpu", [*BASE, *overrides]).data)
    timings = [timed_stream(train_batches(build_dataset(shards, "train", cfg.data, shuffle_files=True, passes=passes),
                                          cfg, epoch)) for epoch in range(2)]  # the first warms the workers
    return {"startup_s": timings[1][0], "steady": timings[1][1]}


def ray_train_rates(shards: str, storage: str, workers: int, epochs: int) -> list[float]:
    from cdkd_ray.core.experiment import RunKind
    from cdkd_ray.ray_adapters.train_driver import run_training

    summary = run_training(experiment(workers, epochs), RunKind.BASELINE, shards, storage, f"ray-w{workers}",
                           write_outputs=True)
    with open(os.path.join(summary["run_dir"], "metrics.jsonl")) as f:
        return [json.loads(line)["images_per_s"] for line in f if line.strip()]


# ------------------------------------------------------------------ the comparison

def measure(shards: str, storage: str, epochs: int, passes: int) -> dict:
    """Every rate in one run: the data paths ({startup_s, steady}), then training per epoch, torchrun before Ray."""
    from cdkd_ray.ray_adapters.runtime import ensure_ray

    data = {"single_process": single_process_rate(shards, passes),
            "dataloader": torchrun_rates(shards, 1, 1, passes=passes)}
    train = {f"torchrun_w{w}": torchrun_rates(shards, w, epochs) for w in (1, 2)}
    ensure_ray()
    data["ray_data"] = ray_data_rate(shards, passes)
    data["ray_data_no_shuffle"] = ray_data_rate(shards, passes, ["data.shuffle_buffer=0"])
    train.update({f"ray_train_w{w}": ray_train_rates(shards, storage, w, epochs) for w in (1, 2)})
    return {"data": data, "train": train}


def report(measured: dict) -> dict:
    data, train = measured["data"], measured["train"]
    s = {key: steady(values) for key, values in train.items()}
    one = data["single_process"]["steady"]
    result = {"cores": CORES, "data_path": data, "train_per_epoch": train, "train_steady": s,
              "ray_data_per_core_vs_single_process": data["ray_data"]["steady"] / CORES / one,
              "dataloader_per_core_vs_single_process": data["dataloader"]["steady"] / CORES / one,
              "shuffle_buffer_cost": 1 - data["ray_data"]["steady"] / data["ray_data_no_shuffle"]["steady"],
              **{f"ray_train_vs_torchrun_w{w}": s[f"ray_train_w{w}"] / s[f"torchrun_w{w}"] for w in (1, 2)}}
    lines = [f"{'data path alone (one long stream, start-up included)':<52}{'samples/s':>10}{'per core':>10}"
             f"{'start-up':>10}"]
    for label, key, cores in (("one process, one core (reference)", "single_process", 1),
                              (f"DataLoader shuffle=True, {CORES} workers", "dataloader", CORES),
                              ("Ray Data + instance shuffle buffer", "ray_data", CORES),
                              ("Ray Data, no shuffle buffer", "ray_data_no_shuffle", CORES)):
        d = data[key]
        lines.append(f"{label:<52}{d['steady']:>10.1f}{d['steady'] / cores / one:>9.2f}x{d['startup_s']:>9.2f}s")
    lines.append(f"{'training (samples/s; steady: epochs 2..; epoch 1 apart)':<52}{'steady':>10}{'epoch 1':>10}{'ratio':>10}")
    for w in (1, 2):
        for side in ("torchrun", "ray_train"):
            key = f"{side}_w{w}"
            label = f"{'torchrun + DataLoader' if side == 'torchrun' else 'Ray Train + Ray Data'}, {w} worker(s)"
            ratio = f"{s[key] / s[f'torchrun_w{w}']:.2f}x" if side == "ray_train" else ""
            lines.append(f"{label:<52}{s[key]:>10.1f}{train[key][0]:>10.1f}{ratio:>10}")
    lines.append(f"the shuffle buffer costs {result['shuffle_buffer_cost']:.1%} of Ray Data's steady rate")
    result["table"] = "\n".join(lines)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--shards", help="existing shard root (default: synthesise --images)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one torchrun rank
    parser.add_argument("--passes", type=int, default=32, help="passes over the parts in one data-path stream")
    args = parser.parse_args()
    if args.worker:
        return torchrun_worker(args)
    from cdkd_ray.apps.recipes import make_synthetic, shard_coco_dir

    work = tempfile.mkdtemp(prefix="cdkd-torchrun-bench-")
    shards = args.shards or shard_coco_dir(make_synthetic(os.path.join(work, "synth"), args.images, 8, seed=0),
                                           os.path.join(work, "shards"), rows_per_file=50)
    result = report(measure(shards, os.path.join(work, "runs"), args.epochs, args.passes))
    print(result["table"])
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "table"}))


if __name__ == "__main__":
    main()
