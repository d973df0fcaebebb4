"""What does Ray cost? Ray Train + Ray Data against torchrun + DataLoader, side by side in one run.

    python bench/torchrun_vs_ray.py [--images 600] [--epochs 3] [--passes 32] [--rounds 2] [--json]
                                    [--rows-per-file 50] [--big-part-rows N] [--input-size 96x64]
                                    [--coco DIR]

Both sides read the same shards, run the same decode/augment code (`build_instances`), the same
model and the same training step (the core's `fit_epoch`), at 1 and 2 workers with the same global batch
and the same CPU budget (all cores of this machine: 1 worker gets them all, 2 workers half each; the
DataLoader gets as many processes per rank as the rank has cores, Ray Data schedules its own tasks).
Epoch 0 is start-up; steady state is the mean of the later epochs, timed from each epoch's first batch
(the wait for it, each epoch's pipeline start-up, is printed apart; whole-epoch rates too). The training
runs alternate between the sides, `--rounds` times. Printed:

1. the data path alone, samples/s in one long stream (the parts read --passes times, so a per-execution
   start-up does not hide the rate; the time to the first batch is printed apart): one process (no Ray,
   no DataLoader), DataLoader with shuffle, Ray Data (`build_dataset` + `train_batches` with the
   instance shuffle buffer, and without it, one part a task instead of small parts grouped to
   `data.images_per_task` images, and with Ray's downstream-capacity backpressure ratio (2) instead of
   the embedded Ray's (cores + 2); with --big-part-rows also over the same images in larger
   parts, three times each as shipped, with Ray Data's per-operator object-store reservation, and in one
   process, alternating), and how many decode tasks ran at once on average (from Ray's task timeline),
   against plain Ray tasks of 0.1 s kept as many in flight as cores (--rounds 0 stops here). Per core
   against two one-process references (the large parts against their own, taken between their runs):
   build_instances over rows read beforehand, and the whole path as Ray Data's stream runs it (the parts
   read every pass, the shuffle buffer, torch batches). With --coco (and --rounds 0) the stream is a COCO
   folder's real photos, read --passes times, instead of synthetic images;
2. training, samples/s: torchrun (DDP, gloo) + DataLoader vs Ray Train + Ray Data, and the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench._streams import input_size, scratch_folder, size_overrides  # noqa: E402

from cdkd_ray.core.config import load_config  # noqa: E402
from cdkd_ray.core.experiment import ExperimentConfig  # noqa: E402

BASE = [*size_overrides((96, 64)), "distill.enabled=false", "train.lr_steps=[100]", "train.val_every=100"]
GLOBAL_BATCH = 16
RAYS_BACKPRESSURE_RATIO = 2.0  # Ray Data 2.60's downstream-capacity ratio (the embedded Ray ships cores + 2)
CORES = os.cpu_count() or 2


def use_input_size(size: tuple[int, int]) -> None:
    """Every run of this benchmark at crop size `size` (96x64 unless --input-size)."""
    BASE[:3] = size_overrides(size)


def experiment(workers: int, epochs: int) -> ExperimentConfig:
    return load_config(ExperimentConfig, "synth-cpu", [
        *BASE, f"train.epochs={epochs}", f"train.num_workers={workers}", f"train.batch_size={GLOBAL_BATCH // workers}",
        f"train.cpus_per_worker={CORES / workers:g}", f"train.torch_threads={max(1, CORES // workers)}"])


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
    epochs = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        epochs.append(epoch_timing(fit_epoch(session, loader, epoch, world)))
    if rank == 0:
        print("RATES " + json.dumps(epochs), flush=True)
    if world > 1:
        dist.destroy_process_group()


def torchrun_rates(shards: str, workers: int, epochs: int, passes: int = 0):
    """Per-epoch training rates of a torchrun job, or with `passes` the DataLoader data path alone."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
           os.path.abspath(__file__), "--worker", "--shards", shards, "--epochs", str(epochs), "--passes", str(passes),
           "--input-size", "x".join(map(str, experiment(1, 1).data.input_size))]
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
    rows = list(iter_shard_rows(shards, "train", cfg.data.images_per_block, labelled_only=True))  # as Ray reads
    started = time.perf_counter()
    seen = sum(len(build_instances(r, cfg.data, True, p)["image"]) for p in range(passes) for r in rows)
    return {"startup_s": 0.0, "steady": seen / (time.perf_counter() - started)}


def single_process_whole_path_rate(shards: str, passes: int) -> dict:
    """The whole data path in one process on one core, as Ray Data's stream runs it: each pass reads the parts
    from disk, then build_instances, the instance shuffle buffer and torch batches (train_batches' own code)."""
    import cv2
    import torch

    from cdkd_ray.core.instances import build_instances
    from cdkd_ray.core.shard_reader import iter_shard_rows
    from cdkd_ray.core.training import torch_batches
    from cdkd_ray.ray_adapters.pipeline import shuffle_seed

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg = experiment(1, 1)
    chunks = (build_instances(rows, cfg.data, True, p) for p in range(passes)
              for rows in iter_shard_rows(shards, "train", cfg.data.images_per_block, labelled_only=True))
    first, rate = timed_stream(torch_batches(chunks, cfg.train.batch_size, cfg.data.shuffle_buffer,
                                             shuffle_seed(cfg.data.seed, 1, 0)))
    return {"startup_s": first, "steady": rate}


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


def tasks_running(task: str, since: float, until: float) -> float:
    """Mean number of tasks whose timeline category contains `task` running at once between two wall-clock times."""
    import ray

    spans = [(max(e["ts"] / 1e6, since), min((e["ts"] + e["dur"]) / 1e6, until)) for e in ray.timeline()
             if e.get("ph") == "X" and task in str(e.get("cat", ""))]
    return sum(max(0.0, end - start) for start, end in spans) / max(until - since, 1e-9)


def plain_task_concurrency(task_s: float = 0.1, tasks: int = 48) -> float:
    """Tasks running at once for plain Ray tasks of a decode task's length, CORES in flight (no Ray Data)."""
    import ray

    def _busy_task(seconds: float) -> bytes:  # local, so Ray ships it by value whoever imports this file
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            pass
        return b"x" * (4 << 20)  # about one decoded block

    busy = ray.remote(num_cpus=0.5)(_busy_task)
    ray.get([busy.remote(0.01) for _ in range(2 * CORES)])  # warm the workers
    since, pending, submitted = time.time(), [], 0
    while pending or submitted < tasks:
        while len(pending) < CORES and submitted < tasks:
            pending.append(busy.remote(task_s))
            submitted += 1
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)
    return tasks_running("task::_busy_task", since, time.time())


def ray_data_rate(shards: str, passes: int, overrides: list[str] = ()) -> dict:
    """Ray Data's training stream alone (build_dataset + train_batches) over the parts read `passes` times."""
    import dataclasses

    from cdkd_ray.ray_adapters.pipeline import build_dataset, train_batches

    cfg = experiment(1, 1)
    cfg = dataclasses.replace(cfg, data=load_config(ExperimentConfig, "synth-cpu", [*BASE, *overrides]).data)
    stream = lambda epoch: train_batches(build_dataset(shards, "train", cfg.data, shuffle_files=True,  # noqa: E731
                                                       passes=passes), cfg, epoch)
    timed_stream(stream(0))  # warms the workers
    since = time.time()
    first, rate = timed_stream(stream(1))
    decode = tasks_running("_instances_udf", since, time.time())  # the decode tasks, fused with the read or not
    return {"startup_s": first, "steady": rate, "tasks_running": decode}


@contextlib.contextmanager
def ray_data_settings(**settings):
    """Ray Data's DataContext with these attributes for the datasets made (and run) inside, restored after."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    before = {key: getattr(ctx, key) for key in settings}
    try:
        for key, value in settings.items():
            setattr(ctx, key, value)
        yield
    finally:
        for key, value in before.items():
            setattr(ctx, key, value)


def big_parts_both_ways(big_parts: str, passes: int, rounds: int = 3) -> dict:
    """The large parts' stream as shipped (no per-operator reservation) and with Ray Data's default, and the
    one-process paths over the same parts (build_instances alone and the whole path), alternating: the
    per-core ratios compare runs seconds apart (this machine's speed drifts by up to 2x within a day, and
    ~20% within minutes)."""
    runs: dict[str, list[dict]] = {"single_process_big_parts": [], "single_process_whole_path_big_parts": [],
                                   "ray_data_big_parts": [], "ray_data_big_parts_reserved": []}
    for _ in range(rounds):
        runs["single_process_big_parts"].append(single_process_rate(big_parts, passes))
        runs["single_process_whole_path_big_parts"].append(single_process_whole_path_rate(big_parts, passes))
        for key, reserved in (("ray_data_big_parts_reserved", True), ("ray_data_big_parts", False)):
            with ray_data_settings(op_resource_reservation_enabled=reserved):
                runs[key].append(ray_data_rate(big_parts, passes))
    return {key: {**{k: statistics.mean(r[k] for r in rs) for k in rs[0]}, "runs": [r["steady"] for r in rs]}
            for key, rs in runs.items()}


def epoch_timing(metrics: dict) -> dict:
    """One epoch's rates from fit_epoch's metrics: whole epoch, and from its first batch on (start-up apart)."""
    images = metrics["images_per_s"] * metrics["epoch_seconds"]
    after_first = metrics["epoch_seconds"] - metrics["first_batch_seconds"]
    return {"images_per_s": metrics["images_per_s"], "after_first_batch": images / max(after_first, 1e-9),
            "first_batch_s": metrics["first_batch_seconds"], "data_wait_s": metrics["data_wait_seconds"],
            "epoch_s": metrics["epoch_seconds"]}


def ray_train_rates(shards: str, storage: str, workers: int, epochs: int, name: str) -> list[dict]:
    """Per-epoch timings of a new Ray Train run called `name` (a name that exists would resume that run)."""
    from cdkd_ray.core.experiment import RunKind
    from cdkd_ray.ray_adapters.train_driver import run_training

    summary = run_training(experiment(workers, epochs), RunKind.BASELINE, shards, storage, name, write_outputs=True)
    with open(os.path.join(summary["run_dir"], "metrics.jsonl")) as f:
        return [epoch_timing(json.loads(line)) for line in f if line.strip()]


# ------------------------------------------------------------------ the comparison

def measure(shards: str, storage: str, epochs: int, passes: int, rounds: int, big_parts: str | None = None) -> dict:
    """Every rate in one run: the data paths ({startup_s, steady}), then `rounds` of training per side.

    The training runs alternate (torchrun w1, Ray w1, torchrun w2, Ray w2, again), so a drift of this
    machine's speed over the run falls on both sides; Ray is shut down while torchrun runs.
    """
    import ray

    from cdkd_ray.ray_adapters.runtime import ensure_ray

    data = {"single_process": single_process_rate(shards, passes),
            "single_process_whole_path": single_process_whole_path_rate(shards, passes),
            "dataloader": torchrun_rates(shards, 1, 1, passes=passes)}
    ensure_ray()
    data["ray_data"] = ray_data_rate(shards, passes)
    data["ray_data_no_shuffle"] = ray_data_rate(shards, passes, ["data.shuffle_buffer=0"])
    data["ray_data_part_a_task"] = ray_data_rate(shards, passes, ["data.images_per_task=1"])
    with ray_data_settings(downstream_capacity_backpressure_ratio=RAYS_BACKPRESSURE_RATIO):
        data["ray_data_rays_ratio"] = ray_data_rate(shards, passes)
    if big_parts:  # the same images in fewer, larger parts: fewer, longer decode tasks
        data.update(big_parts_both_ways(big_parts, passes))
    data["plain_ray_tasks_running"] = plain_task_concurrency()
    if rounds == 0:
        ray.shutdown()
        return {"data": data, "train": {}}
    train: dict[str, list[list[dict]]] = {f"{side}_w{w}": [] for w in (1, 2) for side in ("torchrun", "ray_train")}
    for r in range(rounds):
        for w in (1, 2):
            ray.shutdown()
            train[f"torchrun_w{w}"].append(torchrun_rates(shards, w, epochs))
            ensure_ray()
            train[f"ray_train_w{w}"].append(ray_train_rates(shards, storage, w, epochs, f"ray-w{w}-round{r}"))
    ray.shutdown()
    return {"data": data, "train": train}


def steady_rates(runs: list[list[dict]]) -> dict:
    """A side's rates over its runs: epochs 2.. whole, the same from each epoch's first batch on, and start-ups."""
    later = [e for run in runs for e in run[1:]] or [e for run in runs for e in run]
    return {"whole_epoch": statistics.mean(e["images_per_s"] for e in later),
            "after_first_batch": statistics.mean(e["after_first_batch"] for e in later),
            "per_run": [statistics.mean(e["images_per_s"] for e in run[1:] or run) for run in runs],
            "first_batch_s": statistics.mean(e["first_batch_s"] for e in later),
            "epoch1_first_batch_s": statistics.mean(run[0]["first_batch_s"] for run in runs)}


def report(measured: dict) -> dict:
    data, train = measured["data"], measured["train"]
    s = {key: steady_rates(runs) for key, runs in train.items()}
    one = data["single_process"]["steady"]
    result = {"cores": CORES, "data_path": data, "train_per_epoch": train, "train_steady": s,
              "ray_data_per_core_vs_single_process": data["ray_data"]["steady"] / CORES / one,
              "dataloader_per_core_vs_single_process": data["dataloader"]["steady"] / CORES / one,
              "ray_data_per_core_vs_single_process_whole_path": (data["ray_data"]["steady"] / CORES
                                                                 / data["single_process_whole_path"]["steady"]),
              "shuffle_buffer_cost": 1 - data["ray_data"]["steady"] / data["ray_data_no_shuffle"]["steady"],
              "grouped_parts_vs_part_a_task": data["ray_data"]["steady"] / data["ray_data_part_a_task"]["steady"],
              "local_ratio_vs_rays_ratio": data["ray_data"]["steady"] / data["ray_data_rays_ratio"]["steady"]}
    if "ray_data_big_parts" in data:
        result["big_parts_per_core_vs_single_process"] = (data["ray_data_big_parts"]["steady"] / CORES
                                                          / data["single_process_big_parts"]["steady"])
        result["big_parts_per_core_vs_single_process_whole_path"] = (
            data["ray_data_big_parts"]["steady"] / CORES / data["single_process_whole_path_big_parts"]["steady"])
        result["big_parts_vs_small_parts"] = data["ray_data_big_parts"]["steady"] / data["ray_data"]["steady"]
        result["big_parts_unreserved_vs_reserved"] = (data["ray_data_big_parts"]["steady"]
                                                      / data["ray_data_big_parts_reserved"]["steady"])
    for w in (1, 2) if train else ():
        ray_side, torch_side = s[f"ray_train_w{w}"], s[f"torchrun_w{w}"]
        result[f"ray_train_vs_torchrun_w{w}"] = ray_side["after_first_batch"] / torch_side["after_first_batch"]
        result[f"ray_train_vs_torchrun_w{w}_whole_epoch"] = ray_side["whole_epoch"] / torch_side["whole_epoch"]
    result["table"] = "\n".join(data_lines(data, one) + (train_lines(s, result) if train else []))
    return result


def data_lines(data: dict, one: float) -> list[str]:
    """The data-path table: each row per core against build_instances alone in one process, and against the
    whole path (reads, shuffle buffer, batches) in one process; the large parts against their own runs."""
    lines = [f"{'data path alone (one long stream, start-up included)':<52}{'samples/s':>10}{'per core':>10}"
             f"{'vs whole':>10}{'start-up':>10}{'tasks at once':>15}"]
    from cdkd_ray.ray_adapters.runtime import local_backpressure_ratio

    whole = data["single_process_whole_path"]["steady"]
    big = data.get("single_process_big_parts", {}).get("steady", one)  # the large parts' own references
    big_whole = data.get("single_process_whole_path_big_parts", {}).get("steady", whole)
    for label, key, cores, (reference, whole_reference) in (
            ("one process, one core (reference)", "single_process", 1, (one, whole)),
            ("one process, whole path (read, shuffle, batches)", "single_process_whole_path", 1, (one, whole)),
            (f"DataLoader shuffle=True, {CORES} workers", "dataloader", CORES, (one, whole)),
            ("Ray Data + instance shuffle buffer", "ray_data", CORES, (one, whole)),
            ("Ray Data, no shuffle buffer", "ray_data_no_shuffle", CORES, (one, whole)),
            ("Ray Data, one part a task (images_per_task=1)", "ray_data_part_a_task", CORES, (one, whole)),
            (f"Ray Data, Ray's backpressure ratio ({RAYS_BACKPRESSURE_RATIO:g})", "ray_data_rays_ratio", CORES,
             (one, whole)),
            ("large parts, one process (reference beside them)", "single_process_big_parts", 1, (big, big_whole)),
            ("large parts, one process, whole path", "single_process_whole_path_big_parts", 1, (big, big_whole)),
            ("large parts, Ray Data's per-operator reservation", "ray_data_big_parts_reserved", CORES,
             (big, big_whole)),
            ("Ray Data + shuffle buffer, large parts", "ray_data_big_parts", CORES, (big, big_whole))):
        d = data.get(key)
        if d:
            running = f"{d['tasks_running']:>12.2f}/{CORES}" if "tasks_running" in d else ""
            lines.append(f"{label:<52}{d['steady']:>10.1f}{d['steady'] / cores / reference:>9.2f}x"
                         f"{d['steady'] / cores / whole_reference:>9.2f}x{d['startup_s']:>9.2f}s{running}")
    if "ray_data_big_parts_reserved" in data:
        unreserved, reserved = data["ray_data_big_parts"], data["ray_data_big_parts_reserved"]
        lines.append(f"large parts without the per-operator reservation (as shipped) / with it: "
                     f"{unreserved['steady'] / reserved['steady']:.2f}x (runs, alternating: "
                     f"{'/'.join(f'{v:.0f}' for v in unreserved['runs'])} against "
                     f"{'/'.join(f'{v:.0f}' for v in reserved['runs'])})")
    shipped = data["ray_data"]["steady"]
    lines.append(f"parts grouped / one part a task: {shipped / data['ray_data_part_a_task']['steady']:.2f}x; "
                 f"backpressure ratio {local_backpressure_ratio():g} (as shipped) / Ray's {RAYS_BACKPRESSURE_RATIO:g}: "
                 f"{shipped / data['ray_data_rays_ratio']['steady']:.2f}x")
    if "plain_ray_tasks_running" in data:
        lines.append(f"{'plain Ray tasks of 0.1 s, as many in flight as cores':<82}"
                     f"{data['plain_ray_tasks_running']:>12.2f}/{CORES}")
    return lines


def train_lines(s: dict, result: dict) -> list[str]:
    lines = [f"{'training, samples/s (epochs 2..; mean of the runs)':<44}{'from 1st batch':>15}{'whole epoch':>12}"
             f"{'1st batch':>10}{'epoch 1':>9}"]
    for w in (1, 2):
        for side in ("torchrun", "ray_train"):
            r = s[f"{side}_w{w}"]
            label = f"{'torchrun + DataLoader' if side == 'torchrun' else 'Ray Train + Ray Data'}, {w} worker(s)"
            runs = "/".join(f"{v:.1f}" for v in r["per_run"])
            lines.append(f"{label:<44}{r['after_first_batch']:>15.1f}{r['whole_epoch']:>12.1f}"
                         f"{r['first_batch_s']:>9.2f}s{r['epoch1_first_batch_s']:>8.1f}s   runs {runs}")
        lines.append(f"{'':<8}ratio {result[f'ray_train_vs_torchrun_w{w}']:.2f}x from the first batch, "
                     f"{result[f'ray_train_vs_torchrun_w{w}_whole_epoch']:.2f}x whole epochs")
    lines.append(f"the shuffle buffer costs {result['shuffle_buffer_cost']:.1%} of Ray Data's steady rate")
    return lines


def coco_shards(coco: str, root: str) -> str:
    """A COCO folder's photos sharded as the train split, `cdkd-ray shard`'s 1,000 images a part (a few photos:
    one part); its labelled people are the stream's instances."""
    from cdkd_ray.core.shards import shard_coco

    annotations = sorted(glob.glob(os.path.join(coco, "person_keypoints_*.json")))[0]
    shard_coco(annotations, os.path.join(coco, "images"), root, split="train", show_progress=False)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--shards", help="existing shard root (default: synthesise --images)")
    parser.add_argument("--coco", help="COCO folder (person_keypoints_*.json + images/): stream its photos instead "
                                       "of synthetic images, the data path only (with --rounds 0; a few photos "
                                       "need many --passes)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one torchrun rank
    parser.add_argument("--passes", type=int, default=32, help="passes over the parts in one data-path stream")
    parser.add_argument("--input-size", type=input_size, default=(96, 64), help="crop size HxW (heatmaps a quarter)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating training runs per side and worker count (0: the data path only)")
    parser.add_argument("--rows-per-file", type=int, default=50, help="images per part of the shards")
    parser.add_argument("--big-part-rows", type=int, default=0,
                        help="also stream the images re-sharded with this many per part (0: skip)")
    args = parser.parse_args()
    if args.rounds < 0 or args.rows_per_file < 1 or args.big_part_rows < 0:
        parser.error("--rounds and --big-part-rows must be >= 0, --rows-per-file >= 1")
    if args.coco and (args.shards or args.big_part_rows or args.rounds):
        parser.error("--coco measures the data path over its own photos: add --rounds 0, and leave out --shards "
                     "and --big-part-rows")
    if args.coco and not (glob.glob(os.path.join(args.coco, "person_keypoints_*.json"))
                          and os.path.isdir(os.path.join(args.coco, "images"))):
        parser.error(f"--coco {args.coco}: no person_keypoints_*.json and images/ folder there")
    use_input_size(args.input_size)
    if args.worker:
        return torchrun_worker(args)
    from cdkd_ray.apps.recipes import make_synthetic, shard_coco_dir

    work = scratch_folder("cdkd-torchrun-bench-")
    synth = os.path.join(work, "synth")
    if args.coco:
        shards = coco_shards(args.coco, os.path.join(work, "coco"))
    else:
        shards = args.shards or shard_coco_dir(make_synthetic(synth, args.images, 8, seed=0),
                                               os.path.join(work, "shards"), rows_per_file=args.rows_per_file)
    big = shard_coco_dir(synth, os.path.join(work, "big-parts"), rows_per_file=args.big_part_rows) \
        if args.big_part_rows and not args.shards else None
    result = report(measure(shards, os.path.join(work, "runs"), args.epochs, args.passes, args.rounds, big))
    print(result["table"])
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "table"}))


if __name__ == "__main__":
    main()
