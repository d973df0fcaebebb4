"""Does CDKD beat the baseline? Teacher, then baseline and CDKD students with identical budgets over seeds.

    python bench/kd_gain.py --workdir /tmp/kd --seeds 0 1 2 [--json]

Synthesises a dataset (cdkd-ray synth), shards it, trains a ResNet-50 teacher, then for each seed
the plain ResNet-18 baseline (distill.enabled=false) and the CDKD student with the very same data,
schedule and seed, and prints the table: teacher AP, baseline mean +- std, CDKD mean +- std.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdkd_ray.coco.shard import shard_coco  # noqa: E402
from cdkd_ray.coco.synth import synth_split  # noqa: E402
from cdkd_ray.config import load_config  # noqa: E402
from cdkd_ray.train.config import ExperimentConfig  # noqa: E402
from cdkd_ray.train.run import run_training  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="kd-gain")
    parser.add_argument("--train-images", type=int, default=600)
    parser.add_argument("--val-images", type=int, default=150)
    parser.add_argument("--config", default="synth-cpu")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--student-epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher", help="reuse a trained teacher checkpoint instead of training one")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. distill.dropout_p=0.3")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = os.path.abspath(args.workdir)
    data, shards, runs = os.path.join(work, "synth"), os.path.join(work, "shards"), os.path.join(work, "runs")
    started = time.perf_counter()
    if not os.path.exists(os.path.join(shards, "val", "manifest.json")):
        for split, n in (("train", args.train_images), ("val", args.val_images)):
            synth_split(data, split, n, seed=1234)
            shard_coco(os.path.join(data, "annotations", f"person_keypoints_{split}.json"),
                       os.path.join(data, split), shards, split=split, show_progress=False)

    def cfg_for(epochs: int, seed: int, extra: list[str]) -> ExperimentConfig:
        steps = [max(1, int(epochs * 0.7)), max(2, int(epochs * 0.9))]
        return load_config(ExperimentConfig, args.config, [
            f"train.epochs={epochs}", f"train.seed={seed}", f"data.seed={seed}", f"train.lr_steps={steps}",
            *args.overrides, *extra])

    teacher_ckpt = args.teacher
    teacher_ap = None
    if not teacher_ckpt:
        summary = run_training(cfg_for(args.teacher_epochs, 0, []), "teacher", shards, runs, "teacher")
        teacher_ckpt, teacher_ap = summary["best_checkpoint"], summary["best_ap"]
        print(f"teacher: AP {teacher_ap:.4f} ({summary['best_checkpoint']})", flush=True)

    rows = []
    for seed in args.seeds:
        for kind, extra in (("baseline", ["distill.enabled=false"]), ("cdkd", [])):
            summary = run_training(cfg_for(args.student_epochs, seed, extra), "distill", shards, runs,
                                   f"{kind}-seed{seed}", teacher_checkpoint=teacher_ckpt)
            rows.append({"kind": kind, "seed": seed, "ap": summary["best_ap"], "final_ap": summary["final_ap"]})
            print(f"{kind} seed {seed}: best AP {summary['best_ap']:.4f}, final AP {summary['final_ap']:.4f}", flush=True)

    def stats(kind: str, key: str = "ap") -> tuple[float, float]:
        values = [r[key] for r in rows if r["kind"] == kind]
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    b, c = stats("baseline"), stats("cdkd")
    bf, cf = stats("baseline", "final_ap"), stats("cdkd", "final_ap")
    print("\n| model | AP (best epoch) | AP (final epoch) |\n| --- | --- | --- |")
    if teacher_ap is not None:
        print(f"| teacher ResNet-50 ({args.teacher_epochs} epochs) | {teacher_ap:.4f} | |")
    print(f"| baseline ResNet-18 ({args.student_epochs} epochs, {len(args.seeds)} seeds) | {b[0]:.4f} +- {b[1]:.4f} | {bf[0]:.4f} +- {bf[1]:.4f} |")
    print(f"| CDKD ResNet-18 (same budget and seeds) | {c[0]:.4f} +- {c[1]:.4f} | {cf[0]:.4f} +- {cf[1]:.4f} |")
    print(f"\nCDKD - baseline: {c[0] - b[0]:+.4f} AP (mean over seeds); {time.perf_counter() - started:.0f}s in all")
    if args.json:
        print(json.dumps({"teacher_ap": teacher_ap, "teacher_checkpoint": teacher_ckpt, "runs": rows,
                          "baseline_mean": b[0], "baseline_std": b[1], "cdkd_mean": c[0], "cdkd_std": c[1],
                          "gain": c[0] - b[0]}))


if __name__ == "__main__":
    main()
