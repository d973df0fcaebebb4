"""What the embedded Ray's fixes save per Ray Train run, side by side in one run.

    python bench/train_run_overhead.py [--runs 2] [--rounds 2] [--sides unsplit,now] [--json]

Each side is a fresh Python process with its own embedded Ray, whose Ray temp dir holds the record of a
`ray start` head that has gone (as /tmp/ray/ray_current_cluster does after one). The sides, each the
one before plus one fix:
- "2026-12-02": Ray started as cdkd-ray did until 2026-12-03 (no dashboard, no setup hook), a lone
  worker's training set split through a split coordinator, Ray Train's preemption watcher on;
- "state-api": with `ensure_ray` (the state API of the workers points at this Ray);
- "unsplit": a lone worker reads its training set unsplit, no preemption watcher on the embedded Ray;
- "now": the controller polls its workers every 0.5 s, not every 2 s.
Each process trains --runs tiny 1-worker, 1-epoch baseline runs back to back; the sides alternate
--rounds times. Printed: seconds per run (the first of a process apart: it pays the cold start), the
wait at each run's end between the worker group's shutdown and the placement group cleaner's exit
(from the controller log), the wait between a run's last report and its controller seeing the workers
done (from the worker and controller logs), and each side's ratio to the first. `--sides` picks sides.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench._streams import scratch_folder  # noqa: E402

_SIDE = r"""
import glob, json, logging, sys, time
from datetime import datetime
import ray
from cdkd_ray.core.config import load_config
from cdkd_ray.core.experiment import ExperimentConfig, RunKind
from cdkd_ray.ray_adapters.runtime import DATA_ENV, ensure_ray, quiet_ray_data
from cdkd_ray.ray_adapters.train_driver import run_training

import ray.train
from cdkd_ray.ray_adapters import runtime, train_driver
side, shards, storage, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if side != "now":  # as before: the controller's poll every 2 s (Ray Train's default)
    runtime.LOCAL_RUNTIME_ENV["env_vars"].pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
if side not in ("now", "unsplit"):  # as before: a split for one worker too, and the preemption watcher
    train_driver.data_config = lambda workers: ray.train.DataConfig(datasets_to_split=["train"])
    runtime.LOCAL_RUNTIME_ENV["env_vars"].pop("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER")
if side != "2026-12-02":
    ensure_ray()
else:
    ray.init(address="local", num_cpus=8, include_dashboard=False, object_store_memory=768 * 1024 ** 2,
             _node_ip_address="127.0.0.1", logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": DATA_ENV})
    quiet_ray_data()
cfg = load_config(ExperimentConfig, "tiny", ["train.epochs=1", "train.max_steps_per_epoch=2", "train.num_workers=1"])
seconds = []
for i in range(runs):
    started = time.perf_counter()
    run_training(cfg, RunKind.BASELINE, shards, storage, f"{side}-{i}", write_outputs=False)
    seconds.append(time.perf_counter() - started)
stamp = lambda d: datetime.strptime(d["asctime"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
logs = ray._private.worker.global_worker.node.get_logs_dir_path() + "/train/"
waits, downs, reports = [], [], []
for path in glob.glob(logs + "ray-train-sys-controller-*"):
    lines = [json.loads(line) for line in open(path)]
    down = [stamp(d) for d in lines if d.get("message", "").startswith("Shutting down")]
    waits += [stamp(lines[-1]) - down[-1]] if down else []
    downs += down[-1:]
for path in glob.glob(logs + "ray-train-app-worker-*"):
    reports += [stamp(d) for d in map(json.loads, open(path)) if d.get("message", "").startswith("Reporting training result")]
end_waits = [d - max(r for r in reports if r < d) for d in sorted(downs) if any(r < d for r in reports)]
print("SIDE " + json.dumps({"seconds": seconds, "shutdown_waits": waits, "end_waits": end_waits}))
"""


SIDES = ("2026-12-02", "state-api", "unsplit", "now")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_side(side: str, shards: str, storage: str, runs: int) -> dict:
    """One fresh process of `side`, with a Ray temp dir that records a gone head."""
    temp = tempfile.mkdtemp(prefix="cdkd-ov-", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        os.makedirs(os.path.join(temp, "ray"))
        with open(os.path.join(temp, "ray", "ray_current_cluster"), "w") as f:
            f.write(f"127.0.0.1:{_free_port()}")
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": temp}
        proc = subprocess.run([sys.executable, "-c", _SIDE, side, shards, storage, str(runs)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=900)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("SIDE ")]
        if proc.returncode or not lines:
            raise RuntimeError(f"the {side} side failed:\n{proc.stderr[-3000:]}")
        return json.loads(lines[-1][len("SIDE "):])
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="tiny runs per process (>= 2: the first is cold)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating processes per side")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of {', '.join(SIDES)}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    chosen = [side.strip() for side in args.sides.split(",") if side.strip()]
    if args.runs < 2 or args.rounds < 1:
        parser.error("--runs must be >= 2 and --rounds >= 1")
    if not chosen or any(side not in SIDES for side in chosen):
        parser.error(f"--sides must name some of {', '.join(SIDES)}, not {args.sides!r}")
    from cdkd_ray.apps.recipes import make_synthetic, shard_coco_dir

    work = scratch_folder("cdkd-overhead-bench-")
    shards = shard_coco_dir(make_synthetic(os.path.join(work, "synth"), 24, 12, seed=3), os.path.join(work, "shards"),
                            rows_per_file=10)
    sides: dict[str, list[dict]] = {side: [] for side in chosen}
    for r in range(args.rounds):
        for side in sides:
            sides[side].append(run_side(side, shards, os.path.join(work, f"runs-{side}-{r}"), args.runs))
    summary = {side: {"first_run_s": statistics.mean(p["seconds"][0] for p in procs),
                      "later_runs_s": statistics.mean(s for p in procs for s in p["seconds"][1:]),
                      "shutdown_wait_s": statistics.mean(w for p in procs for w in p["shutdown_waits"]),
                      "end_wait_s": statistics.mean(w for p in procs for w in p["end_waits"])}
               for side, procs in sides.items()}
    first = chosen[0]
    base = summary[first]
    ratios = {side: {"first_run": s["first_run_s"] / base["first_run_s"], "later_runs": s["later_runs_s"] / base["later_runs_s"]}
              for side, s in summary.items()}
    print(f"| side | first run of a process, s | later runs, s | later runs vs {first} | last report to workers seen "
          "done, s | cleaner's wait at a run's end, s |\n| --- | --- | --- | --- | --- | --- |")
    for side, s in summary.items():
        print(f"| {side} | {s['first_run_s']:.1f} | {s['later_runs_s']:.1f} | {ratios[side]['later_runs']:.2f}x "
              f"| {s['end_wait_s']:.2f} | {s['shutdown_wait_s']:.1f} |")
    if args.json:
        print(json.dumps({"sides": sides, "summary": summary, "ratios_to_first": ratios}))


if __name__ == "__main__":
    main()
