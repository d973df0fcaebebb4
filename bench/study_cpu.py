"""Where the CPU of a tiny `cdkd-ray compare` study goes, process by process (the test suite's slowest kind of test).

    python bench/study_cpu.py [--seeds 2] [--concurrent 2] [--json]

Runs a 2-variant (baseline, CDKD) x --seeds study of tiny 1-worker runs (2 epochs x 2 steps, 128x96,
random ResNet-18 teacher) on a fresh embedded Ray, exactly as the compare test does, while sampling every
process's CPU time in /proc every 0.2 s. Prints the CPU-seconds of each kind of process (Ray's process
titles: ray::TrainController, ray::RayTrainWorker, ...; a task worker shows the task it ran last, or
ray::IDLE), its
share of all CPU used, and per Train run. The shares are the measurement: they say what a run's fixed
cost is made of, and which of it is ours.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import threading
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench._streams import scratch_folder, synthetic_shards  # noqa: E402


class CpuSampler(threading.Thread):
    """The last seen CPU time (user + system) and title of every process on the machine but this one."""

    def __init__(self, interval_s: float = 0.2):
        super().__init__(daemon=True)
        self.interval_s, self.stopped, self.seen = interval_s, threading.Event(), {}
        self.tick = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stopped.is_set():
            for entry in os.scandir("/proc"):
                if entry.name.isdigit() and int(entry.name) != os.getpid():
                    self._sample(int(entry.name))
            time.sleep(self.interval_s)

    def _sample(self, pid: int) -> None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            return
        # read anew each time (a child shows its parent's command until it execs, a Ray worker its actor's
        # name once it has one), except while a process exits: its command line is empty by then
        title = kind_of(command) if command else self.seen.get(pid, ("other processes on the machine", 0.0))[0]
        self.seen[pid] = (title, (int(fields[11]) + int(fields[12])) / self.tick)

    def totals(self) -> dict[str, tuple[int, float]]:
        by_kind = collections.defaultdict(lambda: [0, 0.0])
        for title, cpu in self.seen.values():
            if cpu >= 0.05:
                by_kind[title][0] += 1
                by_kind[title][1] += cpu
        return {k: (n, round(c, 1)) for k, (n, c) in sorted(by_kind.items(), key=lambda kv: -kv[1][1])}


def kind_of(command: str) -> str:
    """A process's kind from its command line: Ray's title, or the program it runs."""
    if command.startswith("ray::"):
        return command.split()[0]
    for marker, kind in (("cdkd_ray compare", "the cdkd-ray compare driver"), ("gcs_server", "Ray: GCS"),
                         ("raylet", "Ray: raylet"), ("dashboard", "Ray: dashboard"), ("log_monitor", "Ray: log monitor"),
                         ("default_worker.py", "Ray: worker starting"), ("setup_worker.py", "Ray: worker starting")):
        if marker in command:
            return kind
    return "other processes on the machine"


def study_file(folder: str, seeds: int, concurrent: int) -> str:
    path = os.path.join(folder, "study.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"experiment": "tiny", "experiment_overrides": [
            "train.epochs=2", "train.max_steps_per_epoch=2", "teacher.placement=worker", "train.num_workers=1"],
            "variants": {"baseline": {"distill.enabled": False}, "cdkd": {"distill.dropout_p": 0.3}},
            "seeds": list(range(seeds)), "max_concurrent_trials": concurrent}, f)
    return path


def random_teacher(folder: str) -> str:
    import torch

    from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet

    path = os.path.join(folder, "teacher.pth")
    torch.manual_seed(2)
    torch.save(PoseResNet(ModelConfig(arch="resnet18")).state_dict(), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--concurrent", type=int, default=2, help="max_concurrent_trials (default 2, as the test)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if min(args.seeds, args.concurrent) < 1:
        parser.error("--seeds and --concurrent must be >= 1")
    work = scratch_folder("study-cpu-")
    shards, teacher = synthetic_shards(24, 10, "study-cpu-data-"), random_teacher(work)
    command = [sys.executable, "-m", "cdkd_ray", "compare", "--config", study_file(work, args.seeds, args.concurrent),
               "--data", shards, "--storage", os.path.join(work, "out"), "--teacher", teacher, "--json"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    sampler = CpuSampler()
    sampler.start()
    start = time.time()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - start
    sampler.stopped.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"the study failed:\n{proc.stderr[-3000:]}")
    report(sampler.totals(), wall, 2 * args.seeds, args.json)


def report(totals: dict[str, tuple[int, float]], wall: float, runs: int, as_json: bool) -> None:
    used = sum(cpu for _, cpu in totals.values())
    print(f"{runs} Train runs in {wall:.1f} s; {used:.1f} CPU-s used on the machine ({used / wall:.2f} cores busy)")
    print(f"{'process kind':44s} {'processes':>9s} {'CPU-s':>7s} {'share':>6s} {'CPU-s a run':>11s}")
    for kind, (count, cpu) in totals.items():
        print(f"{kind[:44]:44s} {count:9d} {cpu:7.1f} {cpu / used:6.1%} {cpu / runs:11.2f}")
    if as_json:
        print(json.dumps({"runs": runs, "wall_s": round(wall, 1), "cpu_s": round(used, 1),
                          "by_kind": {k: {"processes": n, "cpu_s": c, "share": round(c / used, 4)}
                                      for k, (n, c) in totals.items()}}))


if __name__ == "__main__":
    main()
