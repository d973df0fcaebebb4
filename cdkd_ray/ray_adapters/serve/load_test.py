"""`cdkd-ray load-test`: drive a deployed endpoint until its replicas scale up, stop, watch them scale down.

Samples the running replica count (serve.status) and the alive worker nodes once a second, and writes
replicas.csv, replicas.png and load_test.json.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import threading
import time
from dataclasses import dataclass

from cdkd_ray.core.errors import CdkdError
from cdkd_ray.ray_adapters.serve.deploy import APP_NAME
from cdkd_ray.ray_adapters.serve.loadgen import check_loopback, drive_load


@dataclass
class LoadPlan:
    concurrency: int = 16
    max_requests: int = 5000
    max_seconds: float = 180.0  # load phase cap
    until_replicas: int = 3  # stop the load once this many replicas run (and `hold_seconds` passed)
    hold_seconds: float = 5.0
    cooldown_seconds: float = 180.0  # how long to wait for the replicas to come back down
    wait_nodes: bool = False  # also wait for the autoscaler to remove the extra worker nodes


def running_replicas(app: str = APP_NAME, deployment: str = "PoseModel") -> int:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        raise CdkdError(f"no Serve application '{app}' on this cluster: deploy one first "
                        "(cdkd-ray serve STUDENT --detach --address ...)")
    dep = status.deployments.get(deployment)
    if dep is None:
        raise CdkdError(f"application '{app}' has no deployment '{deployment}' (it has {sorted(status.deployments)})")
    return int(dep.replica_states.get("RUNNING", 0))


def alive_worker_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"])


class _Timeline:
    """A background sampler: (seconds, phase, replicas, worker nodes, requests answered) once a second."""

    def __init__(self, app: str, deployment: str):
        self.app, self.deployment = app, deployment
        self.rows: list[dict] = []
        self.phase = "idle"
        self.answered = 0
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict:
        row = {"t": round(time.perf_counter() - self.started, 2), "phase": self.phase,
               "replicas": running_replicas(self.app, self.deployment), "worker_nodes": alive_worker_nodes(),
               "requests": self.answered}
        self.rows.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.sample()

    def __enter__(self) -> "_Timeline":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def replicas(self) -> int:
        return self.rows[-1]["replicas"]


def run_load_test(url: str, body: bytes, boxes: list[list[float]], plan: LoadPlan, out_dir: str,
                  address: str | None = None, app: str = APP_NAME, deployment: str = "PoseModel") -> dict:
    """Load until `until_replicas` run (or the caps), then no load until replicas return to the start count."""
    from cdkd_ray.ray_adapters.runtime import ensure_ray

    check_loopback(url)
    ensure_ray(address)
    os.makedirs(out_dir, exist_ok=True)
    with _Timeline(app, deployment) as timeline:
        start_replicas, start_nodes = timeline.replicas, timeline.rows[-1]["worker_nodes"]
        reached_at: list[float] = []

        def enough() -> bool:
            if timeline.replicas >= plan.until_replicas and not reached_at:
                reached_at.append(time.perf_counter())
            return bool(reached_at) and time.perf_counter() - reached_at[0] >= plan.hold_seconds

        timeline.phase = "load"
        load = asyncio.run(_load(url, body, boxes, plan, enough, timeline))
        timeline.phase = "cooldown"
        load_ended = time.perf_counter() - timeline.started
        deadline = time.perf_counter() + plan.cooldown_seconds
        while time.perf_counter() < deadline and (timeline.replicas > start_replicas or (
                plan.wait_nodes and timeline.rows[-1]["worker_nodes"] > start_nodes)):
            time.sleep(1.0)
        time.sleep(1.0)
    rows = timeline.rows
    peak = max(r["replicas"] for r in rows)
    up_at = next((r["t"] for r in rows if r["replicas"] > start_replicas), None)
    down_at = next((r["t"] for r in rows if r["t"] > load_ended and r["replicas"] <= start_replicas), None)
    summary = {"url": url, "start_replicas": start_replicas, "peak_replicas": peak,
               "end_replicas": rows[-1]["replicas"], "scaled_up_after_s": up_at, "load_stopped_at_s": round(load_ended, 2),
               "scaled_down_after_s": round(down_at - load_ended, 2) if down_at is not None else None,
               "peak_worker_nodes": max(r["worker_nodes"] for r in rows), "end_worker_nodes": rows[-1]["worker_nodes"],
               "load": load, "csv": os.path.join(out_dir, "replicas.csv"), "plot": os.path.join(out_dir, "replicas.png")}
    _write_outputs(rows, summary, out_dir)
    return summary


async def _load(url, body, boxes, plan: LoadPlan, enough, timeline: _Timeline) -> dict:
    def answered() -> None:
        timeline.answered += 1

    content_type = "image/png" if body[:4] == b"\x89PNG" else "image/jpeg"
    return await drive_load(url, body, boxes, plan.concurrency, plan.max_requests, plan.max_seconds,
                            stop=enough, on_response=answered, content_type=content_type)


def _write_outputs(rows: list[dict], summary: dict, out_dir: str) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(summary["csv"], buf.getvalue().encode())
    _atomic_write(summary["plot"], plot_timeline(rows))
    _atomic_write(os.path.join(out_dir, "load_test.json"), json.dumps(summary, indent=1).encode())


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def plot_timeline(rows: list[dict]) -> bytes:
    from cdkd_ray.core.plots import subplots, to_png

    t = [r["t"] for r in rows]
    fig, ax = subplots(figsize=(7.5, 3.4))
    load = [r["t"] for r in rows if r["phase"] == "load"]
    if load:
        ax.axvspan(min(load), max(load), color="tab:orange", alpha=0.15, label="load on")
    ax.step(t, [r["replicas"] for r in rows], where="post", color="tab:blue", lw=2, label="running replicas")
    if any(r["worker_nodes"] for r in rows):  # an autoscaling cluster (the embedded Ray has none)
        ax.step(t, [r["worker_nodes"] for r in rows], where="post", color="tab:green", ls="--", label="worker nodes")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("seconds")
    ax.set_ylabel("count")
    ax.set_ylim(0, max(max(r["replicas"] for r in rows), max(r["worker_nodes"] for r in rows)) + 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Serve autoscaling under load")
    return to_png(fig)
