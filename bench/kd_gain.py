"""Does CDKD beat the baseline? Teacher, then baseline and CDKD students with identical budgets over seeds.

    python bench/kd_gain.py --workdir /tmp/kd --seeds 0 1 2 [--json] [KEY=VALUE ...]

Synthesises a dataset (cdkd-ray synth), shards it, trains a teacher (`teacher.arch`, ResNet-50 in
synth-cpu), then for each seed the plain ResNet-18 baseline (distill.enabled=false) and the CDKD
student with the very same data, schedule and seed. Prints the table (teacher AP, baseline mean +- std,
CDKD mean +- std) and writes kd_gain.md, kd_gain.png (val AP per epoch) and kd_gain.json to --workdir;
`--report-only` rebuilds them from the finished runs. The README's table comes from:

    python bench/kd_gain.py --workdir kd --teacher-epochs 30 --student-epochs 10 --seeds 0 1 2 \
        teacher.arch=resnet34 data.input_size=[96,64] data.heatmap_size=[24,16] data.sigma=1.5 \
        teacher.placement=worker train.val_every=2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cdkd_ray.apps.recipes import KdPlan, make_synthetic, run_kd_plan, shard_coco_dir  # noqa: E402


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
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: rebuild the table and plot from the finished runs in --workdir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = os.path.abspath(args.workdir)
    data, shards, runs = os.path.join(work, "synth"), os.path.join(work, "shards"), os.path.join(work, "runs")
    started = time.perf_counter()
    if not os.path.exists(os.path.join(shards, "val", "manifest.json")):
        shard_coco_dir(make_synthetic(data, args.train_images, args.val_images, seed=1234), shards)

    def schedule(epochs: int) -> list[str]:
        return [f"train.epochs={epochs}", f"train.lr_steps={[max(1, int(epochs * 0.7)), max(2, int(epochs * 0.9))]}"]

    plan = KdPlan(args.config, [*schedule(args.teacher_epochs), "train.seed=0", "data.seed=0", *args.overrides],
                  [*schedule(args.student_epochs), *args.overrides], tuple(args.seeds), seed_in_names=True)
    if not args.report_only:
        def report_run(run: dict) -> None:
            print(f"{run['name']}: best AP {run['best_ap']:.4f}, final AP {run['final_ap']:.4f} "
                  f"({run['best_checkpoint']})", flush=True)

        run_kd_plan(plan, shards, runs, teacher_checkpoint=args.teacher, after_run=report_run)

    label = (f"{plan.teacher_config().teacher.arch} ({args.teacher_epochs} epochs)" if not args.teacher
             else f"given ({args.teacher})")

    report = write_report(runs, args.seeds, work, label, args.student_epochs, args.teacher)
    print("\n" + report["table"])
    print(f"\nCDKD - baseline: {report['gain']:+.4f} AP, CDKD / baseline: {report['ratio']:.2f}x (means over seeds); "
          f"{time.perf_counter() - started:.0f}s in all")
    print(f"table {report['markdown']}\nplot  {report['plot']}")
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "table"}))


def read_run(runs: str, name: str) -> dict:
    """A finished run's summary and its per-epoch history (metrics.jsonl)."""
    with open(os.path.join(runs, name, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(runs, name, "metrics.jsonl")) as f:
        summary["history"] = [json.loads(line) for line in f if line.strip()]
    return summary


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def read_teacher(runs: str, given: str | None) -> dict:
    """The teacher run of this workdir, or the AP recorded in a given cdkd-ray checkpoint (nan if none)."""
    if not given:
        return read_run(runs, "teacher")
    state = os.path.join(given, "trainer_state.json")
    ap = json.load(open(state))["metrics"].get("AP", float("nan")) if os.path.exists(state) else float("nan")
    return {"best_ap": ap, "final_ap": ap, "best_checkpoint": given}


def write_report(runs: str, seeds: list[int], work: str, teacher_label: str, student_epochs: int,
                 given_teacher: str | None = None) -> dict:
    """kd_gain.md (the table), kd_gain.png (val AP per epoch) and kd_gain.json from the finished runs."""
    teacher = read_teacher(runs, given_teacher)
    students = {kind: [read_run(runs, f"{kind}-seed{seed}") for seed in seeds] for kind in ("baseline", "cdkd")}
    stats = {kind: {key: mean_std([r[key] for r in rs]) for key in ("best_ap", "final_ap")}
             for kind, rs in students.items()}
    fmt = lambda m: f"{m[0]:.4f} +- {m[1]:.4f}"  # noqa: E731
    table = "\n".join([
        "| model | val AP (best epoch) | val AP (final epoch) |", "| --- | --- | --- |",
        f"| teacher {teacher_label} | {teacher['best_ap']:.4f} | {teacher['final_ap']:.4f} |",
        f"| baseline ResNet-18 ({student_epochs} epochs, seeds {' '.join(map(str, seeds))}) | "
        f"{fmt(stats['baseline']['best_ap'])} | {fmt(stats['baseline']['final_ap'])} |",
        f"| CDKD ResNet-18 (same data, schedule, seeds) | {fmt(stats['cdkd']['best_ap'])} | "
        f"{fmt(stats['cdkd']['final_ap'])} |",
        "", "per seed (best AP): " + "; ".join(
            f"seed {s}: baseline {b['best_ap']:.4f}, CDKD {c['best_ap']:.4f}"
            for s, b, c in zip(seeds, students["baseline"], students["cdkd"]))])
    gain = stats["cdkd"]["best_ap"][0] - stats["baseline"]["best_ap"][0]
    paths = {"markdown": os.path.join(work, "kd_gain.md"), "plot": os.path.join(work, "kd_gain.png"),
             "json": os.path.join(work, "kd_gain.json")}
    with open(paths["markdown"], "w") as f:
        f.write(table + "\n")
    with open(paths["plot"], "wb") as f:
        f.write(plot_ap(teacher, students))
    result = {"teacher_ap": teacher["best_ap"], "teacher_checkpoint": teacher["best_checkpoint"],
              "runs": [{"kind": k, "seed": s, "ap": r["best_ap"], "final_ap": r["final_ap"]}
                       for k, rs in students.items() for s, r in zip(seeds, rs)],
              "baseline_mean": stats["baseline"]["best_ap"][0], "baseline_std": stats["baseline"]["best_ap"][1],
              "cdkd_mean": stats["cdkd"]["best_ap"][0], "cdkd_std": stats["cdkd"]["best_ap"][1],
              "gain": gain, "ratio": stats["cdkd"]["best_ap"][0] / max(stats["baseline"]["best_ap"][0], 1e-12),
              "table": table, **paths}
    with open(paths["json"], "w") as f:
        json.dump({k: v for k, v in result.items() if k != "table"}, f, indent=1)
    return result


def plot_ap(teacher: dict, students: dict[str, list[dict]]) -> bytes:
    """Val AP at every evaluated epoch: each seed thin, the seed mean thick, the teacher's best dashed."""
    from cdkd_ray.core.plots import subplots, to_png

    fig, ax = subplots(figsize=(7, 4))
    for (kind, rs), color in zip(students.items(), ("tab:gray", "tab:red")):
        curves = [[(h["epoch"] + 1, h["AP"]) for h in r["history"] if "AP50" in h] for r in rs]
        for curve in curves:
            ax.plot(*zip(*curve), color=color, alpha=0.35, lw=1)
        epochs = [e for e, _ in curves[0]]
        mean = [statistics.mean(c[i][1] for c in curves) for i in range(len(epochs))]
        ax.plot(epochs, mean, color=color, lw=2.5, marker="o", label=f"{kind} (mean of {len(rs)} seeds)")
    ax.axhline(teacher["best_ap"], color="tab:blue", ls="--", label="teacher (best)")
    ax.set_xlabel("student epoch")
    ax.set_ylabel("val AP (COCOeval, GT boxes)")
    ax.set_title("CDKD vs the plain baseline: same data, schedule and seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)


if __name__ == "__main__":
    main()
