"""Sharding from S3 (moto on loopback), images read one by one vs by a bounded thread pool; and the cost of
verifying parts against the manifest. Side by side in one run; prints images/s and the ratio.

    python bench/shard_throughput.py [--images 300] [--workers 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._streams import scratch_folder  # noqa: E402

from _moto import start_moto_s3  # noqa: E402

from cdkd_ray.apps.recipes import make_synthetic  # noqa: E402
from cdkd_ray.core.shards import read_manifest, shard_coco, verify_split  # noqa: E402
from cdkd_ray.core.storage import resolve  # noqa: E402


def upload(folder: str, prefix: str) -> None:
    target = resolve(prefix)
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            target.join(name).write_bytes(f.read())


def shard_rate(ann: str, images: str, out: str, workers: int) -> float:
    start = time.perf_counter()
    manifest = shard_coco(ann, images, out, split="train", rows_per_file=100, show_progress=False,
                          read_workers=workers)
    return manifest["num_images"] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = scratch_folder("cdkd-shard-bench-")
    make_synthetic(work, args.images, 1, seed=0)
    server = start_moto_s3("bench")
    try:
        upload(os.path.join(work, "train"), "s3://bench/images")
        ann = os.path.join(work, "annotations", "person_keypoints_train.json")
        seq, par = [], []
        for round_ in range(2):  # interleaved, best of two
            seq.append(shard_rate(ann, "s3://bench/images", f"s3://bench/seq{round_}", 1))
            par.append(shard_rate(ann, "s3://bench/images", f"s3://bench/par{round_}", args.workers))
        split = resolve("s3://bench/par0").join("train")
        manifest = read_manifest(split)
        start = time.perf_counter()
        assert not verify_split(split, manifest)
        verify_s = time.perf_counter() - start
    finally:
        server.stop()
    mb = manifest["total_bytes"] / 1e6
    result = {"images": args.images, "sequential_images_per_s": max(seq), "parallel_images_per_s": max(par),
              "parallel_over_sequential": max(par) / max(seq), "workers": args.workers,
              "verify_seconds": verify_s, "verify_mb": mb, "verify_mb_per_s": mb / verify_s,
              "verify_seconds_per_part": verify_s / len(manifest["files"]), "parts": len(manifest["files"])}
    print(f"shard from S3, images read one by one      {max(seq):8.1f} images/s")
    print(f"shard from S3, {args.workers} reader threads            {max(par):8.1f} images/s   "
          f"parallel/sequential = {max(par) / max(seq):.2f}")
    print(f"verify {len(manifest['files'])} parts ({mb:.1f} MB) against the manifest: {verify_s:.2f} s "
          f"({mb / verify_s:.0f} MB/s, {verify_s / len(manifest['files']) * 1000:.0f} ms per part)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
