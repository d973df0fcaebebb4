"""What the training stream's shuffle buffer costs the consuming process: Ray's against the core's, side by side.

    python bench/shuffle_buffer.py [--images 1200] [--rows-per-file 300] [--passes 2] [--rounds 3]
                                   [--input-size 96x64] [--json]

Three consumers of the same stream of person instances, batch 16, alternating --rounds times in one
embedded Ray, each over a materialised dataset (the consumer alone) and over the streaming data path:
- "Ray's buffer": `iter_torch_batches(local_shuffle_buffer_size=512)`, as cdkd-ray did until 2026-12-03;
- "core buffer": `train_batches`, the core's numpy slot pool of 512 instances (`shuffled_batches`) over the
  blocks' record batches as views;
- "no buffer": `iter_torch_batches` without one (files shuffled only), the floor.
Printed: samples/s, and the CPU-seconds this process spent per 1,000 samples (all its threads: Ray
Data's iterator threads, its streaming executor, the buffer). Ratios are against Ray's buffer.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _streams import input_size, print_report, stream_arguments, synthetic_shards  # noqa: E402
from torchrun_vs_ray import BASE, experiment, use_input_size  # noqa: E402


RAYS = "Ray's buffer"


def consumers(cfg) -> dict:
    from cdkd_ray.ray_adapters.pipeline import shuffle_seed, train_batches

    size, buffer = cfg.train.batch_size, cfg.data.shuffle_buffer
    return {
        RAYS: lambda ds, epoch: ds.iter_torch_batches(
            batch_size=size, drop_last=True, local_shuffle_buffer_size=buffer,
            local_shuffle_seed=shuffle_seed(cfg.data.seed, epoch, 0)),
        "core buffer": lambda ds, epoch: train_batches(ds, cfg, epoch),
        "no buffer": lambda ds, epoch: ds.iter_torch_batches(batch_size=size, drop_last=True),
    }


def consume(batches) -> dict:
    """samples/s and this process's CPU-seconds per 1,000 samples over one stream."""
    wall, cpu, n = time.perf_counter(), time.process_time(), 0
    for batch in batches:
        n += len(batch["image"])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"samples_per_s": n / wall, "cpu_s_per_1000": 1000 * cpu / max(n, 1), "samples": n}


def measure(shards: str, passes: int, rounds: int) -> dict[str, dict[str, list[dict]]]:
    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.experiment import ExperimentConfig
    from cdkd_ray.ray_adapters.pipeline import build_dataset

    cfg = experiment(1, 1)
    cfg = dataclasses.replace(cfg, data=load_config(ExperimentConfig, "synth-cpu", BASE).data)
    stream = lambda: build_dataset(shards, "train", cfg.data, shuffle_files=True, passes=passes)  # noqa: E731
    materialised = stream().materialize()
    sides = consumers(cfg)
    results: dict[str, dict[str, list[dict]]] = {"materialised": {s: [] for s in sides}, "streaming": {s: [] for s in sides}}
    for epoch in range(rounds):
        for side, make in sides.items():
            consume(make(materialised, epoch))  # warm: blocks local, threads started
            results["materialised"][side].append(consume(make(materialised, epoch + 1)))
            ds = stream()
            consume(make(ds, epoch))  # warm data workers
            results["streaming"][side].append(consume(make(ds, epoch + 1)))
    return results


def main() -> None:
    args = stream_arguments(__doc__, passes=2, rounds=3, more=lambda p: p.add_argument(
        "--input-size", type=input_size, default=(96, 64), help="crop size HxW (256x192 is the models' default)"))
    use_input_size(args.input_size)
    import ray

    from cdkd_ray.ray_adapters.runtime import ensure_ray

    shards = synthetic_shards(args.images, args.rows_per_file, "cdkd-shuffle-bench-")
    ensure_ray()
    results = measure(shards, args.passes, args.rounds)
    ray.shutdown()
    print_report(results, ("samples_per_s", "cpu_s_per_1000"),
                 ["path", "consumer", "samples/s", "vs Ray's buffer", "CPU-s per 1,000 samples", "vs Ray's buffer"],
                 lambda path, side, m, sides: [
                     path, side, f"{m['samples_per_s']:.1f}", f"{m['samples_per_s'] / sides[RAYS]['samples_per_s']:.2f}x",
                     f"{m['cpu_s_per_1000']:.3f}", f"{m['cpu_s_per_1000'] / sides[RAYS]['cpu_s_per_1000']:.2f}x"],
                 args.json)


if __name__ == "__main__":
    main()
