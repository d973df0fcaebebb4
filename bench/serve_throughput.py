"""Serving benchmark, side by side in one run: the HTTP endpoint vs the bare model on this machine.

    python bench/serve_throughput.py [--requests 48] [--json]

Bare model: one crop per forward (unbatched) and batches of 16 (batched). Endpoint: POST
/v1/keypoints with one person box per request at concurrency 1, 8 and 32 (bounded request counts,
loopback only). Prints requests/s, p50/p99 latency and the endpoint/bare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdkd_ray.ray_adapters.serve.loadgen import drive_load, latency_stats  # noqa: E402


def make_student(folder: str, input_size=(128, 96)) -> str:
    import torch

    from cdkd_ray.core.losses import DistillStudent
    from cdkd_ray.core.models.export import export_student
    from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet, heatmap_size_for
    from cdkd_ray.core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    module = DistillStudent(PoseResNet(ModelConfig()), None)
    save_checkpoint(os.path.join(folder, "ckpt"), module.state_dict(), None, {
        "epoch": 0, "config": {"data": {"input_size": list(input_size),
                                        "heatmap_size": list(heatmap_size_for(input_size))}}})
    export_student(os.path.join(folder, "ckpt"), os.path.join(folder, "student"))
    return os.path.join(folder, "student")


def bare(student: str, image_bgr: np.ndarray, box: np.ndarray, n: int) -> dict:
    import torch

    from cdkd_ray.core.serving.runtime import StudentRuntime

    torch.set_num_threads(1)  # the same as one Serve replica
    rt = StudentRuntime(student)
    out = {}
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        crops, c, s = rt.crops(image_bgr, box)
        rt.keypoints(rt.heatmaps(crops, False), c, s, box)
        lat.append(time.perf_counter() - t)
    out["unbatched"] = latency_stats(lat, time.perf_counter() - start)
    boxes = np.repeat(box, 16, 0)
    start = time.perf_counter()
    lat = []
    for _ in range(max(1, n // 16)):
        t = time.perf_counter()
        crops, c, s = rt.crops(image_bgr, boxes)
        rt.keypoints(rt.heatmaps(crops, False), c, s, boxes)
        lat.append(time.perf_counter() - t)
    seconds = time.perf_counter() - start
    out["batched16"] = {"rps": 16 * len(lat) / seconds, "p50_ms": float(np.percentile(np.array(lat) * 1000, 50)),
                        "p99_ms": float(np.percentile(np.array(lat) * 1000, 99))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import cv2

    folder = tempfile.mkdtemp(prefix="cdkd-serve-bench-")
    student = make_student(folder)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), np.uint8)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    box = [200.0, 60.0, 180.0, 360.0, 1.0]
    bare_stats = bare(student, image, np.asarray([box], np.float32), args.requests)

    from ray import serve

    from cdkd_ray.ray_adapters.serve.app import ServeConfig
    from cdkd_ray.ray_adapters.serve.deploy import APP_NAME, run_serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = run_serve(ServeConfig(model_uri=student, min_replicas=args.replicas, max_replicas=args.replicas,
                                max_batch_size=16, batch_wait_timeout_s=0.01, num_cpus=1), "127.0.0.1", port)
    asyncio.run(drive_load(url, data, [box], 4, 8, max_seconds=300))  # warm-up
    results = {c: asyncio.run(drive_load(url, data, [box], c, args.requests, max_seconds=600)) for c in (1, 8, 32)}
    serve.delete(APP_NAME)

    unb, bat = bare_stats["unbatched"], bare_stats["batched16"]
    print(f"bare model, unbatched         {unb['rps']:7.1f} crops/s  p50 {unb['p50_ms']:6.1f} ms  p99 {unb['p99_ms']:6.1f} ms")
    print(f"bare model, batches of 16     {bat['rps']:7.1f} crops/s  (per batch p50 {bat['p50_ms']:.1f} ms)")
    for c, r in results.items():
        print(f"endpoint, concurrency {c:>2}     {r['rps']:7.1f} req/s    p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms"
              f"   vs bare unbatched {r['rps'] / unb['rps']:.2f}x, vs bare batched {r['rps'] / bat['rps']:.2f}x"
              f"   failures {r['failed']}")
    if args.json:
        print(json.dumps({"bare": bare_stats, "endpoint": results,
                          "ratios": {c: {"vs_unbatched": r["rps"] / unb["rps"], "vs_batched": r["rps"] / bat["rps"]}
                                     for c, r in results.items()}}))


if __name__ == "__main__":
    main()
