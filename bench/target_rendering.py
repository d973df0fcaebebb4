"""Where the heatmap targets are rendered: in the decode tasks (shipped through the stream) or by the consumer.

    python bench/target_rendering.py [--input-sizes 256x192,96x64] [--images 1200] [--passes 2] [--rounds 3] [--json]

Until 2026-12-07 each decode task rendered every person's Gaussian targets ([K,h,w] float32) and the
stream carried them through Arrow, the object store and the shuffle buffer to the train worker. Now
the stream carries the joints ([K,3]) and the training step renders the targets on its device. Both
sides here deliver the same batches (crops + targets, batch 16, the core's shuffle buffer) from the
same shards, alternating --rounds times in one embedded Ray, each stream warmed first:
- "targets in the stream": the decode task renders them (with the core's renderer) and ships them;
- "joints in the stream": the pipeline as it is; the consumer renders each batch's targets (1 thread).
Printed per input size: samples/s, the consumer's CPU-seconds per 1,000 samples, the bytes per sample
the stream delivers, and the ratios of the joints side to the targets side.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _streams import input_sizes, print_report, size_overrides, stream_arguments, synthetic_shards  # noqa: E402
from torchrun_vs_ray import BASE, experiment  # noqa: E402

SIDES = ("targets in the stream", "joints in the stream")


def _add_targets(table, cfg):
    """Each person's rendered targets appended to a decoded block, as the decode tasks shipped them before."""
    import torch
    from ray.data._internal.tensor_extensions.arrow import ArrowTensorArray

    from cdkd_ray.core.targets import batch_targets

    joints = table.column("joints").combine_chunks().to_numpy()
    target, weight = batch_targets(torch.from_numpy(joints), cfg)
    table = table.append_column("target", ArrowTensorArray.from_numpy(target.numpy()))
    return table.append_column("target_weight", ArrowTensorArray.from_numpy(weight.numpy()))


def stream(shards: str, cfg, side: str, passes: int):
    """The training stream: the pipeline's own, or with `_add_targets` fused into its decode tasks."""
    import ray.data

    from cdkd_ray.ray_adapters.pipeline import build_dataset, map_task_limit

    ds = build_dataset(shards, "train", cfg.data, shuffle_files=True, passes=passes)
    if side == SIDES[1]:
        return ds
    # the decode step's own compute and resources, so that Ray Data fuses this step into its tasks
    return ds.map_batches(_add_targets, fn_kwargs={"cfg": cfg.data}, batch_size=None, batch_format="pyarrow",
                          num_cpus=cfg.data.num_cpus_per_task,
                          compute=ray.data.TaskPoolStrategy(size=map_task_limit(cfg.data)))


def consume(batches, cfg, render: bool) -> dict:
    """samples/s, this process's CPU-seconds per 1,000 samples and bytes per sample over one stream."""
    from cdkd_ray.core.targets import batch_targets

    wall, cpu, n, size = time.perf_counter(), time.process_time(), 0, 0
    for batch in batches:
        n, size = n + len(batch["image"]), size + sum(t.nbytes for t in batch.values())  # as the stream delivers it
        if render:  # as the training step does, on the CPU here
            batch["target"], batch["target_weight"] = batch_targets(batch["joints"], cfg.data)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"samples_per_s": n / wall, "cpu_s_per_1000": 1000 * cpu / max(n, 1), "samples": n,
            "bytes_per_sample": round(size / max(n, 1))}


def config_for(size: tuple[int, int]):
    """The benchmarks' tiny experiment at crop size `size`."""
    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.experiment import ExperimentConfig

    data = load_config(ExperimentConfig, "synth-cpu", [*BASE, *size_overrides(size)]).data
    return dataclasses.replace(experiment(1, 1), data=data)


def measure(shards: str, input_size: tuple[int, int], passes: int, rounds: int) -> dict[str, list[dict]]:
    from cdkd_ray.ray_adapters.pipeline import train_batches

    cfg = config_for(input_size)
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    for epoch in range(rounds):
        for side in SIDES:
            ds, render = stream(shards, cfg, side, passes), side == SIDES[1]
            consume(train_batches(ds, cfg, epoch), cfg, render)  # warm: data workers up, torch imported
            results[side].append(consume(train_batches(ds, cfg, epoch + 1), cfg, render))
    return results


HEADER = ["input", "stream carries", "samples/s", "ratio", "consumer CPU-s per 1,000 samples", "bytes a sample"]


def table_row(size: str, side: str, m: dict, sides: dict) -> list[str]:
    """One side's means at one input size; its ratio is to the targets-in-the-stream side."""
    ratio = m["samples_per_s"] / sides[SIDES[0]]["samples_per_s"]
    return [size, side, f"{m['samples_per_s']:.1f}", f"{ratio:.2f}x", f"{m['cpu_s_per_1000']:.3f}",
            f"{m['bytes_per_sample']:,.0f}"]


def main() -> None:
    more = lambda p: p.add_argument("--input-sizes", type=input_sizes, default=input_sizes("256x192,96x64"),  # noqa: E731
                                    help="crop sizes HxW, comma-separated")
    args = stream_arguments(__doc__, passes=2, rounds=3, more=more)
    import ray
    import torch

    # one thread renders, as in a decode task: two would spin on cores the decode tasks are using
    torch.set_num_threads(1)

    from cdkd_ray.ray_adapters.runtime import ensure_ray

    shards = synthetic_shards(args.images, args.rows_per_file, "cdkd-target-bench-")
    ensure_ray()
    results = {f"{h}x{w}": measure(shards, (h, w), args.passes, args.rounds) for h, w in args.input_sizes}
    ray.shutdown()
    print_report(results, ("samples_per_s", "cpu_s_per_1000", "bytes_per_sample"), HEADER, table_row, args.json)


if __name__ == "__main__":
    main()
