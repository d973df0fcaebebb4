"""CI: the quickstart's summary names every stage's output, each output exists, and the numbers are numbers."""

from __future__ import annotations

import json
import math
import os
import sys


def main(path: str) -> None:
    with open(path) as f:
        summary = json.load(f)
    problems = []
    for key in ("train_crops_png", "student_export", "onnx", "rendered_png", "shards", "synthetic_data"):
        if not summary.get(key) or not os.path.exists(summary[key]):
            problems.append(f"{key}: {summary.get(key)!r} does not exist")
    for run in ("teacher", "baseline", "cdkd"):
        entry = summary.get(run, {})
        for key in ("checkpoint", "curves"):
            if not entry.get(key) or not os.path.exists(entry[key]):
                problems.append(f"{run}.{key}: {entry.get(key)!r} does not exist")
        for key in ("ap", "loss_gt_first", "loss_gt_last", "loss_gt_vs_zeros"):
            if not isinstance(entry.get(key), (int, float)) or not math.isfinite(entry[key]):
                problems.append(f"{run}.{key}: {entry.get(key)!r} is not a finite number")
    scaling = summary.get("serve_autoscaling", {})
    if not scaling.get("plot") or not os.path.exists(scaling["plot"]):
        problems.append("serve_autoscaling.plot does not exist")
    if problems:
        sys.exit("quickstart summary check failed:\n" + "\n".join(f"  - {p}" for p in problems))
    print(f"quickstart summary OK: {len(summary)} entries, {summary['seconds']} s")


if __name__ == "__main__":
    main(sys.argv[1])
