"""Serving benchmark, side by side in one run: the HTTP endpoint vs the bare model on this machine.

    python bench/serve_throughput.py [--requests 48] [--backends torch onnxruntime] [--json]

For each pose backend (torch, onnxruntime): the bare model, as one replica runs it, one crop per forward
(unbatched) and batches of 16 (batched); then the endpoint, POST /v1/keypoints with one person box per
request at concurrency 1, 8 and 32 (bounded request counts, loopback only). Prints requests/s, p50/p99,
the p50 overhead over the bare unbatched model and the throughput against the bare batched model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._streams import scratch_folder  # noqa: E402

from cdkd_ray.ray_adapters.serve.loadgen import drive_load, latency_stats  # noqa: E402


def make_student(folder: str, input_size=(128, 96)) -> str:
    import torch

    from cdkd_ray.core.losses import DistillStudent
    from cdkd_ray.core.models.export import export_student
    from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet
    from cdkd_ray.core.models.strides import heatmap_size_for
    from cdkd_ray.core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    module = DistillStudent(PoseResNet(ModelConfig()), None)
    save_checkpoint(os.path.join(folder, "ckpt"), module.state_dict(), None, {
        "epoch": 0, "config": {"data": {"input_size": list(input_size),
                                        "heatmap_size": list(heatmap_size_for(input_size))}}})
    export_student(os.path.join(folder, "ckpt"), os.path.join(folder, "student"))
    return os.path.join(folder, "student")


def bare(student: str, backend: str, image_bgr: np.ndarray, box: np.ndarray, n: int) -> dict:
    """The model alone, as one replica runs it (1 thread): a crop at a time, and batches of 16."""
    import torch

    from cdkd_ray.core.serving.runtime import StudentRuntime

    torch.set_num_threads(1)
    rt = StudentRuntime(student, backend)

    def run(boxes: np.ndarray, rounds: int) -> tuple[list[float], float]:
        lat, start = [], time.perf_counter()
        for _ in range(rounds):
            t = time.perf_counter()
            crops, c, s = rt.crops(image_bgr, boxes)
            rt.keypoints(rt.heatmaps(crops, False), c, s, boxes)
            lat.append(time.perf_counter() - t)
        return lat, time.perf_counter() - start

    run(box, 3)  # warm-up
    lat, seconds = run(box, n)
    out = {"unbatched": latency_stats(lat, seconds)}
    lat, seconds = run(np.repeat(box, 16, 0), max(2, n // 16))
    out["batched16"] = {"rps": 16 * len(lat) / seconds, "p50_ms": float(np.percentile(np.array(lat) * 1000, 50))}
    return out


def endpoint(student: str, backend: str, port: int, data: bytes, box: list, n: int, replicas: int) -> dict:
    from ray import serve

    from cdkd_ray.ray_adapters.serve.app import ServeConfig
    from cdkd_ray.ray_adapters.serve.deploy import APP_NAME, run_serve

    url = run_serve(ServeConfig(model_uri=student, min_replicas=replicas, max_replicas=replicas, max_batch_size=16,
                                num_cpus=1, backend=backend), "127.0.0.1", port)
    asyncio.run(drive_load(url, data, [box], 4, 8, max_seconds=300))  # warm-up
    results = {c: asyncio.run(drive_load(url, data, [box], c, n, max_seconds=600)) for c in (1, 8, 32)}
    serve.delete(APP_NAME)
    return results


def report(backend: str, bare_stats: dict, results: dict) -> dict:
    unb, bat = bare_stats["unbatched"], bare_stats["batched16"]
    print(f"[{backend}] bare model, unbatched     {unb['rps']:7.1f} crops/s  p50 {unb['p50_ms']:6.1f} ms  "
          f"p99 {unb['p99_ms']:6.1f} ms")
    print(f"[{backend}] bare model, batches of 16 {bat['rps']:7.1f} crops/s  (per batch p50 {bat['p50_ms']:.1f} ms)")
    ratios = {}
    for c, r in results.items():
        ratios[c] = {"vs_unbatched": r["rps"] / unb["rps"], "vs_batched": r["rps"] / bat["rps"],
                     "p50_overhead_ms": r["p50_ms"] - unb["p50_ms"]}
        print(f"[{backend}] endpoint, concurrency {c:>2} {r['rps']:7.1f} req/s    p50 {r['p50_ms']:6.1f} ms  "
              f"p99 {r['p99_ms']:6.1f} ms   p50 overhead {ratios[c]['p50_overhead_ms']:+6.1f} ms, "
              f"vs bare batched {ratios[c]['vs_batched']:.2f}x   failures {r['failed']}")
    return {"bare": bare_stats, "endpoint": results, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import cv2

    folder = scratch_folder("cdkd-serve-bench-")
    student = make_student(folder)
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    box = [200.0, 60.0, 180.0, 360.0, 1.0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = {}
    for backend in args.backends:
        bare_stats = bare(student, backend, image, np.asarray([box], np.float32), args.requests)
        out[backend] = report(backend, bare_stats, endpoint(student, backend, port, data, box, args.requests,
                                                            args.replicas))
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
