"""Is Ray Data's data path held back by latency between its tasks, or by the CPU? Side by side in one run.

    python bench/data_task_gaps.py [--images 1200] [--rows-per-file 300] [--passes 3] [--rounds 2]
                                   [--waits 0.02,0.01,0.005] [--input-size 96x64] [--json]

The training stream (`build_dataset` + `train_batches`, as in bench/torchrun_vs_ray.py) over parts of
--rows-per-file images, read --passes times, with Ray Data's scheduling loop as Ray ships it (it waits up
to 0.1 s in `ray.wait` for its tasks to finish) and with that wait cut to each of --waits seconds (the
embedded Ray runs with 0.01 s: cdkd_ray/ray_adapters/runtime.py); the sides alternate --rounds times in
one embedded Ray. Printed per side: samples/s, decode tasks running at once (Ray's timeline),
the mean idle gap on a data worker between two of its tasks, the mean task length, and how busy the
machine's CPUs were (/proc/stat) while the stream ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _streams import input_size, stream_arguments, synthetic_shards  # noqa: E402
from torchrun_vs_ray import (  # noqa: E402
    BASE, CORES, experiment, single_process_rate, tasks_running, timed_stream, use_input_size,
)

TASK = "_instances_udf"
RAYS_WAIT_S = 0.1  # Ray Data 2.60's WAIT_FOR_TASK_COMPLETION_TIMEOUT_S
SHIPPED = "Ray's 0.1 s wait"


def wait_sides(text: str) -> dict[str, float]:
    """'0.01,0.005' -> {"Ray's 0.1 s wait": 0.1, "10 ms wait": 0.01, "5 ms wait": 0.005} (argparse type)."""
    try:
        waits = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds, comma-separated (0.02,0.005)") from None
    if not all(0 < w < 10 for w in waits):
        raise argparse.ArgumentTypeError(f"{text!r}: each wait must be between 0 and 10 s")
    return {SHIPPED: RAYS_WAIT_S, **{f"{w * 1000:g} ms wait": w for w in waits}}


def cpu_ticks() -> tuple[int, int]:
    """(idle + iowait, all) jiffies of the machine so far."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values)


def process_stats() -> Iterator[tuple[int, str, str, list[str]]]:
    """(pid, role for the tables, command line, /proc/PID/stat fields after the name) of every live process."""
    mine = os.getpid()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
        yield int(pid), process_role(int(pid), mine, cmd), cmd, fields


def process_cpu() -> dict[int, tuple[str, float]]:
    """CPU-seconds used so far by every process of this user: pid -> (a role for the table, seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    return {pid: (role, (int(fields[11]) + int(fields[12])) / tick) for pid, role, _, fields in process_stats()}


def process_role(pid: int, mine: int, cmd: str) -> str:
    if pid == mine:
        return "this process (consumer + Ray Data's executor)"
    if "ray::" in cmd and TASK not in cmd and "ReadParquet" not in cmd and "IDLE" not in cmd:
        return "Ray actors (Data's stats, autoscaling coordinator, ...)"
    if "ray::" in cmd or "default_worker" in cmd:
        return "data workers"
    return "Ray's daemons (raylet, GCS, dashboard, agents)" if "ray" in cmd else "other"


def cpu_by_role(before: dict, after: dict, seconds: float) -> dict[str, float]:
    """Cores used on average per role between two process_cpu() snapshots."""
    roles: dict[str, float] = {}
    for pid, (role, used) in after.items():
        roles[role] = roles.get(role, 0.0) + (used - before.get(pid, (role, 0.0))[1]) / seconds
    return roles


def task_spans(since: float, until: float) -> dict[str, list[tuple[float, float]]]:
    """Per data worker, the (start, seconds) of its decode tasks that started in the window."""
    import ray

    spans: dict[str, list[tuple[float, float]]] = {}
    for e in ray.timeline():
        if e.get("ph") == "X" and TASK in str(e.get("cat", "")) and since < e["ts"] / 1e6 < until:
            spans.setdefault(e["tid"], []).append((e["ts"] / 1e6, e["dur"] / 1e6))
    return spans


def gaps_and_lengths(spans: dict[str, list[tuple[float, float]]]) -> tuple[float, float]:
    """Mean idle gap between consecutive tasks of one worker, and the mean task length, in seconds."""
    gaps, lengths = [], []
    for worker in spans.values():
        worker.sort()
        lengths += [seconds for _, seconds in worker]
        gaps += [nxt[0] - (start + seconds) for (start, seconds), nxt in zip(worker, worker[1:])]
    return (statistics.mean(gaps) if gaps else float("nan")), statistics.mean(lengths)


def one_stream(shards: str, passes: int, wait_s: float) -> dict:
    """One measured stream (after a warm-up one) with the executor's completion wait at `wait_s`."""
    from ray.data._internal.execution import streaming_executor_state as executor_state

    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.experiment import ExperimentConfig
    from cdkd_ray.ray_adapters.pipeline import build_dataset, train_batches

    before = executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S
    executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = wait_s
    try:
        cfg = experiment(1, 1)
        cfg = dataclasses.replace(cfg, data=load_config(ExperimentConfig, "synth-cpu", BASE).data)
        ds = build_dataset(shards, "train", cfg.data, shuffle_files=True, passes=passes)
        timed_stream(train_batches(ds, cfg, 0))
        idle0, all0 = cpu_ticks()
        procs0, since = process_cpu(), time.time()
        _, rate = timed_stream(train_batches(ds, cfg, 1))
        until, procs1 = time.time(), process_cpu()
        idle1, all1 = cpu_ticks()
    finally:
        executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = before
    gap, length = gaps_and_lengths(task_spans(since, until))
    return {"samples_per_s": rate, "tasks_running": tasks_running(TASK, since, until), "gap_s": gap,
            "task_s": length, "machine_busy": 1 - (idle1 - idle0) / max(all1 - all0, 1),
            "cores_by_role": cpu_by_role(procs0, procs1, until - since)}


def main() -> None:
    def more(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--waits", type=wait_sides, default=wait_sides("0.02,0.01,0.005"),
                            help="executor waits to try beside Ray's 0.1 s, in seconds")
        parser.add_argument("--input-size", type=input_size, default=(96, 64), help="crop size HxW")

    args = stream_arguments(__doc__, passes=3, rounds=2, more=more)
    use_input_size(args.input_size)
    waits = args.waits
    import ray

    from cdkd_ray.ray_adapters.runtime import ensure_ray

    shards = synthetic_shards(args.images, args.rows_per_file, "cdkd-gaps-bench-")
    one_core = single_process_rate(shards, 1)["steady"]
    ensure_ray()
    sides: dict[str, list[dict]] = {side: [] for side in waits}
    for _ in range(args.rounds):
        for side, wait_s in waits.items():
            sides[side].append(one_stream(shards, args.passes, wait_s))
    ray.shutdown()
    mean = {side: {k: statistics.mean(r[k] for r in runs) for k in runs[0] if k != "cores_by_role"}
            for side, runs in sides.items()}
    for side, runs in sides.items():
        roles = {role for r in runs for role in r["cores_by_role"]}
        mean[side]["cores_by_role"] = {role: statistics.mean(r["cores_by_role"].get(role, 0.0) for r in runs)
                                       for role in sorted(roles)}
    print(f"one process, one core: {one_core:.1f} samples/s; {CORES} cores; {args.rows_per_file} images a part")
    print("| executor wait | samples/s | per core vs one process | tasks at once | gap between tasks, s "
          "| task, s | machine busy |\n| --- | --- | --- | --- | --- | --- | --- |")
    for side, m in mean.items():
        print(f"| {side} | {m['samples_per_s']:.1f} | {m['samples_per_s'] / CORES / one_core:.2f}x "
              f"| {m['tasks_running']:.2f} | {m['gap_s']:.3f} | {m['task_s']:.3f} | {m['machine_busy']:.0%} |")
    print("\ncores used while streaming, by process role (mean of the rounds):")
    for side, m in mean.items():
        print(f"  {side}: " + "; ".join(f"{role} {cores:.2f}" for role, cores in m["cores_by_role"].items()
                                        if cores >= 0.005))
    ratios = {side: mean[side]["samples_per_s"] / mean[SHIPPED]["samples_per_s"] for side in waits if side != SHIPPED}
    print("; ".join(f"{side} / Ray's: {ratio:.2f}x samples/s" for side, ratio in ratios.items()))
    if args.json:
        print(json.dumps({"one_core_samples_per_s": one_core, "cores": CORES, "input_size": args.input_size,
                          "sides": sides, "mean": mean, "vs_rays_wait": ratios}))


if __name__ == "__main__":
    main()
