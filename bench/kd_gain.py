"""Does CDKD beat the baseline, and does channel dropout help? Data, a teacher, then `cdkd-ray compare` studies.

    python bench/kd_gain.py --workdir /root/study [--teacher CKPT] [--studies bench/studies/underfit.yaml ...]

A thin wrapper: synthesises the benchmark set (600 train / 150 val images, seed 1234) and a small train
split (its first 120 train images, same val), shards both, trains the ResNet-34 teacher (30 epochs at
96x64, unless --teacher names one), then runs each study with `cdkd-ray compare` (the under-fitting one on
the full split, the over-fitting one on the small split) and copies each report to bench/results/<study>/.
Interrupted? Run the same command again: finished runs are kept (`compare --resume`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from cdkd_ray.apps.recipes import make_synthetic, shard_coco_dir  # noqa: E402

TEACHER = ["train.epochs=30", "train.lr_steps=[21,27]", "train.seed=0", "data.seed=0", "teacher.arch=resnet34",
           "data.input_size=[96,64]", "data.heatmap_size=[24,16]", "data.sigma=1.5", "train.val_every=2"]
SPLITS = {"full": (600, 150), "small": (120, 150)}  # the small split's images are the first 120 of the full one


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cdkd_ray", *args], check=True)


def prepare(work: str) -> dict[str, str]:
    """Synthetic data and shards of both splits (kept when present); {split name: shard root}."""
    roots = {}
    for name, (train, val) in SPLITS.items():
        roots[name] = os.path.join(work, f"shards-{name}")
        if not os.path.exists(os.path.join(roots[name], "val", "manifest.json")):
            shard_coco_dir(make_synthetic(os.path.join(work, f"synth-{name}"), train, val, seed=1234), roots[name])
    return roots


def teacher_checkpoint(work: str, shards: str) -> str:
    """Train (or resume) the teacher run and return its best checkpoint."""
    import json

    cli("train-teacher", "--config", "synth-cpu", "--data", shards, "--storage", os.path.join(work, "runs"),
        "--name", "teacher", "teacher.placement=worker", *TEACHER)
    with open(os.path.join(work, "runs", "teacher", "summary.json")) as f:
        return json.load(f)["best_checkpoint"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="kd-gain")
    parser.add_argument("--teacher", help="reuse a trained teacher checkpoint instead of training one")
    parser.add_argument("--studies", nargs="+", default=[os.path.join(REPO, "bench", "studies", f"{s}.yaml")
                                                          for s in ("underfit", "overfit")])
    parser.add_argument("--results", default=os.path.join(REPO, "bench", "results"),
                        help="where each study's report is copied")
    args = parser.parse_args()
    work = os.path.abspath(args.workdir)
    roots = prepare(work)
    teacher = args.teacher or teacher_checkpoint(work, roots["full"])
    for study in args.studies:
        name = os.path.splitext(os.path.basename(study))[0]
        data = roots["small"] if name == "overfit" else roots["full"]
        resume = ["--resume"] if os.path.exists(os.path.join(work, "studies", name, "study.json")) else []
        cli("compare", "--config", study, "--data", data, "--storage", os.path.join(work, "studies"),
            "--teacher", teacher, *resume)
        out = os.path.join(args.results, name)
        os.makedirs(out, exist_ok=True)
        for fname in ("report.md", "report.json", "ap_per_epoch.png", "paired_diff.png"):
            shutil.copy(os.path.join(work, "studies", name, fname), out)
        print(f"{name}: report in {out}")


if __name__ == "__main__":
    main()
