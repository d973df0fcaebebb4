"""The report of a comparison study: per variant AP over seeds, paired differences to the baseline, costs.

Input: every finished run's summary (summary.json) with its per-epoch history (metrics.jsonl). Output: one
JSON-friendly dict, a Markdown page and two pictures (AP per epoch with a band; the paired differences).
"""

from __future__ import annotations

import statistics

from cdkd_ray.core.experiment import distill_kind
from cdkd_ray.core.stats import mean_std, paired_difference
from cdkd_ray.core.study import StudyConfig, run_name, variant_config


def eval_epochs(history: list[dict]) -> list[dict]:
    """The epochs that were evaluated (they carry AP50; other epochs carry AP forward)."""
    return [h for h in history if "AP50" in h]


def seconds_per_step(history: list[dict]) -> float:
    """Median training seconds per step over the epochs (the first epoch's warm-up excluded when there are more)."""
    epochs = [h for h in history if h.get("steps")]
    timed = epochs[1:] if len(epochs) > 1 else epochs
    return statistics.median(h["epoch_seconds"] / h["steps"] for h in timed) if timed else float("nan")


def _last(history: list[dict], key: str) -> float:
    values = [h[key] for h in history if key in h]
    return values[-1] if values else float("nan")


def variant_stats(study: StudyConfig, variant: str, runs: list[dict], baseline: list[dict]) -> dict:
    """One variant's numbers over the seeds, and its paired differences to the baseline variant."""
    best, final = [r["best_ap"] for r in runs], [r["final_ap"] for r in runs]
    diff = {key: paired_difference([r[key] for r in runs], [b[key] for b in baseline], study.ci_level,
                                   study.ci_method).to_dict() for key in ("best_ap", "final_ap")}
    step = [seconds_per_step(r["history"]) for r in runs]
    return {
        "variant": variant, "kind": runs[0]["kind"], "seeds": list(study.seeds),
        "best_ap": best, "best_ap_mean": mean_std(best)[0], "best_ap_std": mean_std(best)[1],
        "final_ap": final, "final_ap_mean": mean_std(final)[0], "final_ap_std": mean_std(final)[1],
        "vs_baseline": diff,
        "train_loss_gt_first": statistics.mean(r["history"][0].get("loss_gt", float("nan")) for r in runs),
        "train_loss_gt_last": statistics.mean(_last(r["history"], "loss_gt") for r in runs),
        "val_loss_gt_last": statistics.mean(_last(r["history"], "val_loss_gt") for r in runs),
        "seconds_per_step": statistics.mean(step),
    }


def build_report(study: StudyConfig, name: str, runs: dict[str, list[dict]], costs: dict[str, dict]) -> dict:
    """The whole report: variants in study order, each with its stats, costs and step-cost ratio."""
    base_runs = runs[study.baseline]
    rows = []
    for variant in study.variants:
        row = variant_stats(study, variant, runs[variant], base_runs)
        row.update(costs[variant])
        rows.append(row)
    base_step = next(r["seconds_per_step"] for r in rows if r["variant"] == study.baseline)
    for row in rows:
        row["step_cost_vs_baseline"] = row["seconds_per_step"] / base_step
    contrasts = [{"variant": v, "reference": ref, "best_ap": paired_difference(
        [r["best_ap"] for r in runs[v]], [r["best_ap"] for r in runs[ref]], study.ci_level, study.ci_method).to_dict()}
        for v, ref in study.contrasts]
    return {"study": name, "baseline": study.baseline, "seeds": list(study.seeds), "ci_method": study.ci_method,
            "ci_level": study.ci_level, "variants": rows, "contrasts": contrasts}


def verdict(diff: dict, level: float) -> str:
    """Plain words for a paired difference."""
    if diff["n"] < 2:
        return "one seed: no interval"
    if diff["within_noise"]:
        return f"within noise ({level:.0%} CI holds 0)"
    return "better than baseline" if diff["low"] > 0 else "worse than baseline"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} +- {std:.4f}"


def markdown_table(report: dict) -> str:
    """The report's main table (also printed by the CLI)."""
    level = report["ci_level"]
    lines = [f"| variant | best AP (mean +- std) | per seed | final AP | best AP - baseline [{level:.0%} CI] | "
             "verdict | train GT loss first -> last | val GT loss | step cost vs baseline (FLOPs expect) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["variants"]:
        d = r["vs_baseline"]["best_ap"]
        is_base = r["variant"] == report["baseline"]
        ci = "-" if is_base else f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
        lines.append(
            f"| {r['variant']} | {_pm(r['best_ap_mean'], r['best_ap_std'])} | "
            f"{', '.join(f'{v:.4f}' for v in r['best_ap'])} | {_pm(r['final_ap_mean'], r['final_ap_std'])} | {ci} | "
            f"{'(baseline)' if is_base else verdict(d, level)} | "
            f"{r['train_loss_gt_first']:.5f} -> {r['train_loss_gt_last']:.5f} | {r['val_loss_gt_last']:.5f} | "
            f"{r['step_cost_vs_baseline']:.2f}x ({r['flops_step_ratio']:.2f}x) |")
    return "\n".join(lines)


def contrasts_table(report: dict) -> str:
    """The extra paired comparisons (variant against a reference variant), if the study names any."""
    if not report.get("contrasts"):
        return ""
    level = report["ci_level"]
    lines = [f"| variant | against | best AP difference [{level:.0%} CI] | verdict |", "| --- | --- | --- | --- |"]
    for c in report["contrasts"]:
        d = c["best_ap"]
        words = verdict(d, level).replace("baseline", c["reference"])
        lines.append(f"| {c['variant']} | {c['reference']} | {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] | "
                     f"{words} |")
    return "\n".join(lines)


def markdown_report(report: dict, header: dict) -> str:
    """report.md: what was compared, the table, how to read it, the deployed model's costs."""
    method = ("paired Student t over seeds (n-1 degrees of freedom)" if report["ci_method"] == "paired_t"
              else "percentile bootstrap of the mean per-seed difference (10,000 resamples)")
    costs = sorted({(r["arch"], r["parameters"], r["gflops"]) for r in report["variants"]})
    parts = [
        f"# Study `{report['study']}`: {len(report['variants'])} variants x {len(report['seeds'])} seeds",
        "", *(f"- {key}: {value}" for key, value in header.items()),
        f"- seeds: {', '.join(map(str, report['seeds']))}; within a seed every variant has the same data order, "
        "augmentation and initial weights",
        f"- interval: {method}; a difference whose interval holds 0 is within noise", "",
        markdown_table(report), "", contrasts_table(report), "",
        "Deployed student (train-only modules dropped): "
        + "; ".join(f"{arch}: {params:,} parameters, {gflops:.3f} GFLOPs" for arch, params, gflops in costs),
        "", "Step cost: median seconds per training step against the baseline's, as measured (trials may share "
        "CPUs); in brackets what FLOPs predict (student forward + backward, plus the teacher's forward when "
        "distilling).", "", "![AP per epoch](ap_per_epoch.png)", "", "![paired differences](paired_diff.png)", ""]
    return "\n".join(parts)


def plot_ap_per_epoch(report: dict, runs: dict[str, list[dict]]) -> bytes:
    """Left: val AP per evaluated epoch (mean over seeds, band min..max). Right: train and val GT loss."""
    from cdkd_ray.core.plots import subplots, to_png

    fig, (ax_ap, ax_loss) = subplots(1, 2, figsize=(11, 4))
    for i, row in enumerate(report["variants"]):
        color = f"C{i}"
        curves = [[(h["epoch"] + 1, h["AP"]) for h in eval_epochs(r["history"])] for r in runs[row["variant"]]]
        length = min(len(c) for c in curves)
        epochs = [curves[0][j][0] for j in range(length)]
        values = [[c[j][1] for c in curves] for j in range(length)]
        ax_ap.plot(epochs, [statistics.mean(v) for v in values], color=color, lw=2, marker="o", ms=3,
                   label=row["variant"])
        ax_ap.fill_between(epochs, [min(v) for v in values], [max(v) for v in values], color=color, alpha=0.15)
        for key, style in (("loss_gt", "-"), ("val_loss_gt", "--")):
            points = [[(h["epoch"] + 1, h[key]) for h in r["history"] if key in h] for r in runs[row["variant"]]]
            if points and all(points):
                n = min(len(p) for p in points)
                ax_loss.plot([points[0][j][0] for j in range(n)], [statistics.mean(p[j][1] for p in points)
                             for j in range(n)], color=color, ls=style, lw=1.5)
    ax_ap.set(xlabel="epoch", ylabel="val AP", title="val AP (mean over seeds, band: min..max)")
    ax_loss.set(xlabel="epoch", ylabel="GT heatmap MSE", title="GT loss: train (solid), val (dashed)")
    for ax in (ax_ap, ax_loss):
        ax.grid(alpha=0.3)
    ax_ap.legend(fontsize=8)
    return to_png(fig)


def plot_paired_differences(report: dict) -> bytes:
    """Each variant's best-AP difference to the baseline: per-seed points, the mean and its interval."""
    from cdkd_ray.core.plots import subplots, to_png

    others = [r for r in report["variants"] if r["variant"] != report["baseline"]]
    fig, ax = subplots(figsize=(max(6.0, 1.6 * len(others) + 3), 3.8))
    base = next(r for r in report["variants"] if r["variant"] == report["baseline"])
    for x, row in enumerate(others):
        d = row["vs_baseline"]["best_ap"]
        ax.scatter([x] * len(row["best_ap"]), [a - b for a, b in zip(row["best_ap"], base["best_ap"])],
                   color="tab:gray", s=14, zorder=2)
        if d["n"] > 1:
            ax.errorbar([x], [d["mean"]], yerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]], fmt="o",
                        color="tab:red" if not d["within_noise"] else "tab:blue", capsize=5, zorder=3)
    ax.axhline(0, color="black", lw=1)
    ax.set_xticks(range(len(others)), [r["variant"] for r in others], rotation=20)
    ax.set_ylabel(f"best AP - {report['baseline']}")
    ax.set_title(f"best AP minus {report['baseline']} per seed (gray), mean and {report['ci_level']:.0%} CI "
                 f"({report['ci_method']})\nred: the interval excludes 0; blue: within noise", fontsize=9)
    ax.grid(alpha=0.3)
    return to_png(fig)


def runs_in_study_order(study: StudyConfig, read) -> dict[str, list[dict]]:
    """{variant: [run of each seed, in study order]} via `read(run_name)`."""
    return {variant: [read(run_name(variant, seed)) for seed in study.seeds] for variant in study.variants}



def variant_costs(study: StudyConfig, teacher_checkpoint: str | None) -> dict[str, dict]:
    """Per variant: the deployed student's parameters and GFLOPs, and the step cost FLOPs predict vs the baseline.

    A training step costs about 3x the student's forward (forward + backward); distilling adds the teacher's
    forward. The ratio is against the baseline variant's step.
    """
    from cdkd_ray.core.models.pose_resnet import PoseResNet, count_flops, count_parameters

    teacher = None
    if teacher_checkpoint:
        from cdkd_ray.core.models.loading import load_pose_model

        teacher = load_pose_model(teacher_checkpoint).model
    step_flops, costs = {}, {}
    for variant in study.variants:
        cfg = variant_config(study, variant, study.seeds[0])
        student = PoseResNet(cfg.model)
        flops = count_flops(student, cfg.data.input_size)
        extra = count_flops(teacher, cfg.data.input_size) if teacher is not None and distill_kind(cfg).distills else 0
        step_flops[variant] = 3 * flops + extra
        costs[variant] = {"arch": cfg.model.arch, "parameters": count_parameters(student), "gflops": flops / 1e9}
    for variant, cost in costs.items():
        cost["flops_step_ratio"] = step_flops[variant] / step_flops[study.baseline]
    return costs
