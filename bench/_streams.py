"""What the benchmarks share: the data-path command line, synthetic shards and scratch folders."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import tempfile
from typing import Callable


def stream_arguments(doc: str, passes: int, rounds: int,
                     more: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """--images, --rows-per-file, --passes, --rounds and --json, checked; `more` adds a benchmark's own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if more:
        more(parser)
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--rows-per-file", type=int, default=300, help="images per part (one task per part)")
    parser.add_argument("--passes", type=int, default=passes, help="reads of the parts per stream")
    parser.add_argument("--rounds", type=int, default=rounds, help="times the sides alternate")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if min(args.images, args.rows_per_file, args.passes, args.rounds) < 1:
        parser.error("--images, --rows-per-file, --passes and --rounds must be >= 1")
    return args


def input_size(text: str) -> tuple[int, int]:
    """'256x192' -> (256, 192): a crop's height and width, multiples of 32 as the models need (argparse type)."""
    hw = text.split("x")
    if len(hw) != 2 or not all(v.isdigit() and int(v) > 0 and int(v) % 32 == 0 for v in hw):
        raise argparse.ArgumentTypeError(f"{text!r}: give HxW, both multiples of 32 (256x192)")
    return int(hw[0]), int(hw[1])


def input_sizes(text: str) -> list[tuple[int, int]]:
    """'256x192,96x64' -> [(256, 192), (96, 64)] (argparse type)."""
    return [input_size(size) for size in text.split(",")]


def size_overrides(size: tuple[int, int]) -> list[str]:
    """The data.* overrides of a crop size: the model's heatmap size for it, sigma 2 (1.5 below 128 px high)."""
    from cdkd_ray.core.models.strides import heatmap_size_for

    (h, w), (hh, hw) = size, heatmap_size_for(size)
    return [f"data.input_size=[{h},{w}]", f"data.heatmap_size=[{hh},{hw}]", f"data.sigma={2.0 if h >= 128 else 1.5}"]


def scratch_folder(prefix: str) -> str:
    """A new temp folder, removed when the benchmark's process exits (shards, runs and teachers: up to GBs)."""
    work = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work


def synthetic_shards(images: int, rows_per_file: int, prefix: str) -> str:
    """A new synthetic set of `images` images, sharded `rows_per_file` to a part, in a scratch folder."""
    from cdkd_ray.apps.recipes import make_synthetic, shard_coco_dir

    work = scratch_folder(prefix)
    return shard_coco_dir(make_synthetic(os.path.join(work, "synth"), images, 8, seed=0),
                          os.path.join(work, "shards"), rows_per_file=rows_per_file)


def run_means(results: dict[str, dict[str, list[dict]]], keys: tuple[str, ...]) -> dict[str, dict[str, dict]]:
    """{group: {side: [run, ...]}} -> {group: {side: {key: mean over the runs}}}."""
    return {group: {side: {k: statistics.mean(run[k] for run in runs) for k in keys} for side, runs in sides.items()}
            for group, sides in results.items()}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, as the README carries the benchmarks' results."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def print_report(results: dict[str, dict[str, list[dict]]], keys: tuple[str, ...], header: list[str],
                 row: Callable[[str, str, dict, dict], list[str]], as_json: bool) -> None:
    """The mean of each side's runs as a Markdown table (`row(group, side, mean, the group's means)`), then the
    runs and means as one JSON line with --json."""
    mean = run_means(results, keys)
    print(markdown_table(header, [row(group, side, m, sides) for group, sides in mean.items() for side, m in sides.items()]))
    if as_json:
        print(json.dumps({"runs": results, "mean": mean}))
