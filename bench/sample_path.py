"""The per-sample decode path on real photos, step by step and whole, side by side in one run.

    python bench/sample_path.py --coco DIR [--input-size 256x192] [--rounds 3] [--repeat 30]
                                [--against CHECKOUT] [--json]

--coco is a COCO keypoints folder (`person_keypoints_*.json` and `images/`), e.g. COCO's val2017. Every
step below runs in this process on one core (OpenCV single-threaded), the sides alternating --rounds
times, each side timed over --repeat passes of the photos:
1. the JPEG completeness check: the rule read from the front (find the last scan, then an end-of-image
   marker after it) against the shipped search from the end, microseconds per photo;
2. the crops of the photos' labelled people at --input-size: the RGB copy of each photo, one warp per
   crop and the [N,H,W,3] -> [N,3,H,W] transpose, against the shipped `warp_crops` (BGR photo, each
   crop warped once and its channels written into their planes), microseconds per crop;
3. the decode of a photo no instance comes from (COCO lists every image in its train annotations;
   about half have no labelled person): what the shipped path no longer spends per such image;
4. the whole path, `build_instances` (train, augmented) over the photos twice, once with their
   people and once with nobody labelled: instances/s. With --against CHECKOUT the same is timed with
   that checkout's code (e.g. a `git worktree` of an earlier commit), each side in a fresh process,
   alternating, and the ratio printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELLED, HALF = "the labelled photos", "+ as many with nobody labelled"
SETS = (LABELLED, HALF)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco", type=Path, required=True, help="COCO folder: person_keypoints_*.json + images/")
    parser.add_argument("--input-size", default="256x192", help="crop size HxW")
    parser.add_argument("--rounds", type=int, default=3, help="times the sides alternate")
    parser.add_argument("--repeat", type=int, default=30, help="passes over the photos per timing")
    parser.add_argument("--against", type=Path, help="another checkout whose build_instances is timed too")
    parser.add_argument("--whole-only", action="store_true", help=argparse.SUPPRESS)  # one side of --against
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    files = sorted(args.coco.glob("person_keypoints_*.json")) if args.coco.is_dir() else []
    if not files or not (args.coco / "images").is_dir():
        parser.error(f"--coco {args.coco}: no person_keypoints_*.json and images/ folder there")
    if args.against and not (args.against / "cdkd_ray" / "core" / "instances.py").is_file():
        parser.error(f"--against {args.against}: not a cdkd-ray checkout (no cdkd_ray/core/instances.py)")
    if min(args.rounds, args.repeat) < 1:
        parser.error("--rounds and --repeat must be >= 1")
    hw = args.input_size.split("x")
    if len(hw) != 2 or not all(v.isdigit() and int(v) > 0 for v in hw):
        parser.error(f"--input-size {args.input_size!r}: give HxW (256x192)")
    args.size, args.annotations = (int(hw[0]), int(hw[1])), files[0]
    return args


def shard_rows(coco: Path, annotations: Path) -> dict:
    """The photos as shard rows (columns as lists), each twice: with its people, then with nobody labelled."""
    data = json.loads(annotations.read_text())
    persons: dict[int, list] = {}
    for ann in data["annotations"]:
        persons.setdefault(ann["image_id"], []).append(
            {"bbox": ann["bbox"], "keypoints": ann["keypoints"], "num_keypoints": ann["num_keypoints"],
             "iscrowd": ann["iscrowd"]})
    images = [im for im in data["images"] if (coco / "images" / im["file_name"]).is_file()]
    rows = {"image_id": [], "image": [], "persons": [], "width": [], "height": []}
    for nobody in (False, True):
        for im in images:
            rows["image_id"].append(im["id"] + (10**9 if nobody else 0))
            rows["image"].append((coco / "images" / im["file_name"]).read_bytes())
            rows["persons"].append([] if nobody else persons.get(im["id"], []))
            rows["width"].append(im["width"])
            rows["height"].append(im["height"])
    return rows


def timed(fn, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def whole_path_rates(root: str, coco: Path, annotations: Path, size: tuple[int, int], repeat: int) -> dict:
    """Instances/s of `build_instances` from the checkout at `root` (imported in this fresh process), over the
    labelled photos alone and over them plus as many photos with nobody labelled."""
    sys.path.insert(0, root)
    import cv2

    from cdkd_ray.core.data_config import DataConfig
    from cdkd_ray.core.instances import build_instances

    import cdkd_ray

    if not Path(cdkd_ray.__file__).resolve().is_relative_to(Path(root).resolve()):
        raise SystemExit(f"imported {cdkd_ray.__file__}, not the checkout at {root}")
    cv2.setNumThreads(1)
    both, cfg = shard_rows(coco, annotations), DataConfig(input_size=size, heatmap_size=(size[0] // 4, size[1] // 4))
    labelled = {key: column[:len(column) // 2] for key, column in both.items()}
    epochs, rates = iter(range(1, 10**9)), {}
    for name, rows in ((LABELLED, labelled), (HALF, both)):
        count = len(build_instances(rows, cfg, True, 0)["image"])
        rates[name] = count / timed(lambda: build_instances(rows, cfg, True, next(epochs)), repeat)
    return rates


def whole_path_sides(args) -> dict[str, list[dict]]:
    """Instances/s per round (both sets of rows), this checkout and --against's, each timing in a fresh process."""
    sides = {"this checkout": REPO, **({f"--against {args.against}": str(args.against)} if args.against else {})}
    rates: dict[str, list[dict]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, root in sides.items():
            out = subprocess.run([sys.executable, __file__, "--whole-only", "--coco", str(args.coco), "--input-size",
                                  args.input_size, "--repeat", str(args.repeat), "--against", root],
                                 capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": root})
            rates[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rates


def completeness_from_the_front(data: bytes) -> bool:
    """The rule as stated, read from the front: the last start-of-scan, then an end-of-image marker after it."""
    from cdkd_ray.core.coco.images import JPEG_EOI, JPEG_SOS

    last_scan = data.rfind(JPEG_SOS)
    return last_scan >= 0 and data.find(JPEG_EOI, last_scan) >= 0


def crops_plain_way(images_bgr, image_index, mat, size):
    """Before: an RGB copy of each photo, one warp per crop into a new image, then the layout transpose."""
    import cv2
    import numpy as np

    rgb = [cv2.cvtColor(image, cv2.COLOR_BGR2RGB) for image in images_bgr]
    crops = np.empty((len(mat), size[0], size[1], 3), np.uint8)
    for i, (src, m) in enumerate(zip(image_index, mat)):
        crops[i] = cv2.warpAffine(rgb[src], m, (size[1], size[0]), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2))


def step_sides(rows: dict, size: tuple[int, int]) -> dict[str, tuple]:
    """step -> (before, shipped, unit, what one 'unit' is): the callables each side of a step times."""
    import numpy as np

    from cdkd_ray.core.coco.images import decode_bgr, jpeg_is_complete
    from cdkd_ray.core.geometry import box_to_center_scale, crop_affine, warp_crops
    from cdkd_ray.core.keypoints import is_labelled_person

    labelled = len(rows["image"]) // 2
    photos = rows["image"][:labelled]
    bgr = [decode_bgr(data) for data in photos]
    people = [(i, p["bbox"]) for i, persons in enumerate(rows["persons"][:labelled])
              for p in persons if is_labelled_person(p)]
    index = np.array([i for i, _ in people])
    center, scale = box_to_center_scale(np.array([b for _, b in people], np.float32), size[1] / size[0])
    mat = crop_affine(center, scale, np.zeros(len(people)), size)
    assert np.array_equal(crops_plain_way(bgr, index, mat, size), warp_crops(bgr, index, mat, size, True))
    return {
        "JPEG completeness check": (lambda: [completeness_from_the_front(d) for d in photos],
                                    lambda: [jpeg_is_complete(d) for d in photos], len(photos), "photo"),
        "crops of the labelled people": (lambda: crops_plain_way(bgr, index, mat, size),
                                         lambda: warp_crops(bgr, index, mat, size, True), len(people), "crop"),
        "a photo nobody is labelled in": (lambda: [decode_bgr(d) for d in photos], None, len(photos), "photo"),
    }


def measure_steps(rows: dict, size: tuple[int, int], rounds: int, repeat: int) -> dict[str, dict]:
    """Microseconds per unit of each step, before and shipped, alternating `rounds` times (median)."""
    out = {}
    for step, (before, shipped, units, unit) in step_sides(rows, size).items():
        times: dict[str, list[float]] = {"before": [], "shipped": []}
        for _ in range(rounds):
            times["before"].append(timed(before, repeat) / units * 1e6)
            times["shipped"].append(timed(shipped, repeat) / units * 1e6 if shipped else 0.0)
        out[step] = {"unit": unit, **{side: statistics.median(v) for side, v in times.items()}}
    return out


def report(args, steps: dict, whole: dict[str, list[float]]) -> None:
    print(f"{args.coco}: {len(shard_rows(args.coco, args.annotations)['image']) // 2} photos; crops "
          f"{args.input_size}; one process, one core; median of {args.rounds} rounds")
    print("| step | before, us | shipped, us | per | saved |\n| --- | --- | --- | --- | --- |")
    for step, s in steps.items():
        ratio = f"{s['before'] / s['shipped']:.1f}x" if s["shipped"] else "not decoded"
        print(f"| {step} | {s['before']:.1f} | {s['shipped']:.1f} | {s['unit']} | "
              f"{s['before'] - s['shipped']:.1f} us ({ratio}) |")
    print("\nthe whole path, build_instances (train), instances/s (median; the rounds in brackets):")
    print("| code | " + " | ".join(SETS) + " |\n| --- | " + " | ".join("---" for _ in SETS) + " |")
    median = {side: {name: statistics.median(r[name] for r in runs) for name in SETS} for side, runs in whole.items()}
    for side, runs in whole.items():
        cells = [f"{median[side][name]:.1f} ({', '.join(f'{r[name]:.0f}' for r in runs)})" for name in SETS]
        print(f"| {side} | " + " | ".join(cells) + " |")
    for side in list(whole)[1:]:
        print(f"this checkout / {side}: " + "; ".join(
            f"{median['this checkout'][name] / median[side][name]:.2f}x ({name})" for name in SETS))


def main() -> None:
    args = arguments()
    if args.whole_only:
        print(json.dumps(whole_path_rates(str(args.against), args.coco, args.annotations, args.size, args.repeat)))
        return
    sys.path.insert(0, REPO)
    import cv2

    cv2.setNumThreads(1)
    steps = measure_steps(shard_rows(args.coco, args.annotations), args.size, args.rounds, args.repeat)
    whole = whole_path_sides(args)
    report(args, steps, whole)
    if args.json:
        print(json.dumps({"input_size": args.size, "steps_us": steps, "whole_instances_per_s": whole}))


if __name__ == "__main__":
    main()
