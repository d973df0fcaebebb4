"""Decode tasks on glibc's default heap or on a kept heap (`data.keep_freed_heap`), side by side in one run.

    python bench/decode_heap.py [--images 1200] [--rows-per-file 300] [--passes 6] [--rounds 3]
                                [--input-size 256x192] [--json]

The training stream (`build_dataset` + `train_batches`, as in bench/torchrun_vs_ray.py) over parts of
--rows-per-file synthetic images, read --passes times, with `data.keep_freed_heap=false` (glibc as it
comes: a block's crops, MBs, go to fresh pages whenever glibc maps them anew or has trimmed its heap) and
`true` (the shipped default: freed memory is reused). The setting lasts a worker process's life, so each
side runs in an embedded Ray of its own, started anew each round; the sides alternate --rounds times,
each stream warmed first. Printed per side: samples/s, per core against one process on one core, and
the data workers' page faults per sample and share of their CPU time spent in the kernel (/proc).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _streams import input_size, stream_arguments, synthetic_shards  # noqa: E402
from data_task_gaps import process_stats  # noqa: E402
from torchrun_vs_ray import BASE, CORES, experiment, single_process_rate, timed_stream, use_input_size  # noqa: E402

SIDES = {"glibc's default heap": False, "kept heap (shipped)": True}
WORKERS = "data workers"


def worker_counters() -> dict[int, tuple[int, float, float]]:
    """pid -> (minor page faults, user s, kernel s) of every data worker of this user's Ray."""
    tick = os.sysconf("SC_CLK_TCK")
    return {pid: (int(fields[7]), int(fields[11]) / tick, int(fields[12]) / tick)
            for pid, role, _, fields in process_stats() if role == WORKERS}


def one_side(shards: str, passes: int, keep: bool) -> dict:
    """One measured stream (after a warm-up one) in a fresh embedded Ray, decode tasks keeping the heap or not."""
    import ray

    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.experiment import ExperimentConfig
    from cdkd_ray.ray_adapters.pipeline import build_dataset, train_batches
    from cdkd_ray.ray_adapters.runtime import ensure_ray

    ensure_ray()
    try:
        cfg = experiment(1, 1)
        data = load_config(ExperimentConfig, "synth-cpu", [*BASE, f"data.keep_freed_heap={str(keep).lower()}"]).data
        cfg = dataclasses.replace(cfg, data=data)
        ds = build_dataset(shards, "train", cfg.data, shuffle_files=True, passes=passes)
        timed_stream(train_batches(ds, cfg, 0))
        before, started = worker_counters(), time.perf_counter()
        n = sum(len(batch["image"]) for batch in train_batches(ds, cfg, 1))
        seconds, after = time.perf_counter() - started, worker_counters()
    finally:
        ray.shutdown()
    faults, user, kernel = (sum(after[p][i] - before.get(p, (0, 0.0, 0.0))[i] for p in after) for i in range(3))
    return {"samples_per_s": n / seconds, "faults_per_sample": faults / n, "kernel_share": kernel / max(user + kernel, 1e-9),
            "worker_cores": (user + kernel) / seconds}


def main() -> None:
    args = stream_arguments(__doc__, passes=6, rounds=3, more=lambda p: p.add_argument(
        "--input-size", type=input_size, default=(256, 192), help="crop size HxW"))
    use_input_size(args.input_size)
    shards = synthetic_shards(args.images, args.rows_per_file, "cdkd-heap-bench-")
    one_core = single_process_rate(shards, 1)["steady"]
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side, keep in SIDES.items():
            runs[side].append(one_side(shards, args.passes, keep))
    mean = {side: {k: statistics.mean(r[k] for r in rs) for k in rs[0]} for side, rs in runs.items()}
    h, w = args.input_size
    print(f"one process, one core: {one_core:.1f} samples/s; {CORES} cores; {args.rows_per_file} images a part; "
          f"{h}x{w}; mean of {args.rounds} rounds")
    print("| decode tasks | samples/s | per core | page faults per sample | data workers' CPU in the kernel "
          "| data workers' cores |\n| --- | --- | --- | --- | --- | --- |")
    for side, m in mean.items():
        rates = ", ".join(f"{r['samples_per_s']:.0f}" for r in runs[side])
        print(f"| {side} | {m['samples_per_s']:.1f} ({rates}) | {m['samples_per_s'] / CORES / one_core:.2f}x "
              f"| {m['faults_per_sample']:.1f} | {m['kernel_share']:.0%} | {m['worker_cores']:.2f} |")
    default, kept = (mean[side]["samples_per_s"] for side in SIDES)
    print(f"kept / default heap: {kept / default:.2f}x samples/s")
    if args.json:
        print(json.dumps({"one_core_samples_per_s": one_core, "cores": CORES, "input_size": args.input_size,
                          "runs": runs, "mean": mean, "kept_vs_default": kept / default}))


if __name__ == "__main__":
    main()
