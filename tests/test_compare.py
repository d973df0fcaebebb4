"""`cdkd-ray compare`: the statistics, the study file, and a 2-variant x 2-seed study end to end with a resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cdkd_ray.core.errors import ConfigError
from cdkd_ray.core.stats import paired_difference, t_quantile
from cdkd_ray.core.study import StudyConfig, load_study, study_changes, study_identity, variant_config


@pytest.mark.parametrize("df,expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)])
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-4)


def test_paired_difference_t_and_bootstrap():
    base, variant = [0.10, 0.20, 0.15, 0.12], [0.13, 0.22, 0.19, 0.13]
    d = paired_difference(variant, base)
    diffs = [v - b for v, b in zip(variant, base)]
    sd = (sum((x - sum(diffs) / 4) ** 2 for x in diffs) / 3) ** 0.5
    half = t_quantile(0.975, 3) * sd / 2
    assert d.mean == pytest.approx(0.025) and d.low == pytest.approx(0.025 - half) and d.high == pytest.approx(0.025 + half)
    assert not d.within_noise  # every seed gained: the interval excludes 0
    noisy = paired_difference([0.1, 0.3], [0.2, 0.2])
    assert noisy.within_noise and noisy.low < 0 < noisy.high
    boot = paired_difference(variant, base, method="bootstrap")
    assert min(diffs) <= boot.low <= boot.mean <= boot.high <= max(diffs)
    assert paired_difference([0.3], [0.2]).within_noise  # one seed: no interval, never "significant"


def test_study_file_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="baseline 'plain' is not one of the variants"):
        StudyConfig(baseline="plain").validate()
    with pytest.raises(ConfigError, match="distinct"):
        StudyConfig(seeds=[0, 0]).validate()
    with pytest.raises(ConfigError, match="mapping of config keys"):
        StudyConfig(variants={"baseline": {}, "b": 3}).validate()
    with pytest.raises(ConfigError, match="not a valid name"):
        StudyConfig(variants={"baseline": {}, "a/b": {}}).validate()
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"experiment": "tiny", "variants": {"baseline": ["distill.enabled=false"],
                                                                       "typo": {"distill.dropuot_p": 0.1}}}))
    study = load_study(str(path))
    with pytest.raises(ConfigError, match="did you mean 'dropout_p'"):
        variant_config(study, "typo", 0)


def test_study_identity_refuses_changes_but_not_resources():
    study = StudyConfig(experiment="tiny", variants={"baseline": {"distill.enabled": False}, "p3": {"distill.dropout_p": 0.3}},
                        seeds=[0, 1])
    same_but_wider = StudyConfig(**{**study.__dict__, "max_concurrent_trials": 4, "trial_cpus_per_worker": 2.0})
    changed = StudyConfig(**{**study.__dict__, "variants": {"baseline": {"distill.enabled": False},
                                                            "p3": {"distill.dropout_p": 0.4}}})
    identity = study_identity(study, "d", None)
    assert study_changes(identity, study_identity(same_but_wider, "d", None)) == []
    assert any("dropout_p: 0.3 -> 0.4" in line for line in study_changes(identity, study_identity(changed, "d", None)))
    assert any(line.startswith("data_digest") for line in study_changes(identity, study_identity(study, "e", None)))


def test_a_resumed_study_says_its_concurrency_stays_what_it_was(tmp_path, capsys):
    """Tune keeps max_concurrent_trials in its saved state: a resume asking for more must say it does not apply."""
    from cdkd_ray.core.storage import resolve
    from cdkd_ray.ray_adapters.compare import _claim_study

    study = StudyConfig(experiment="tiny", variants={"a": {}, "b": {"distill.dropout_p": 0.3}}, seeds=[0])
    wider = StudyConfig(**{**study.__dict__, "max_concurrent_trials": study.max_concurrent_trials + 2})
    study_dir, identity = resolve(str(tmp_path / "st")), study_identity(study, "d", None)
    assert _claim_study(study, study_dir, identity, False, {}) is False
    assert _claim_study(study, study_dir, identity, True, {}) is True
    assert capsys.readouterr().err == ""
    assert _claim_study(wider, study_dir, study_identity(wider, "d", None), True, {}) is True
    assert f"max_concurrent_trials stays {study.max_concurrent_trials}" in capsys.readouterr().err


def _compare(args: list[str], env: dict, **kw):
    return subprocess.run([sys.executable, "-m", "cdkd_ray", "compare", *args], env=env, capture_output=True,
                          text=True, **kw)


def _interrupt_after_runs(args: list[str], env: dict, runs, count: int) -> list:
    """Start the study, Ctrl-C it once `count` runs have finished; returns the finished runs."""
    first = subprocess.Popen([sys.executable, "-m", "cdkd_ray", "compare", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline, finished = time.time() + 300, []
    while time.time() < deadline and len(finished) < count:
        finished = [d for d in runs.glob("*-seed*") if (d / "summary.json").exists()] if runs.exists() else []
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    # Tune returns from fit() on Ctrl-C: the study must say so, not report on half its runs
    assert first.returncode == 130 and "--resume" in stderr, stderr[-3000:]
    return finished


@pytest.mark.timeout(600)
def test_two_by_two_study_resumes_and_reports_paired_intervals(synth_shards, teacher_file, tmp_path):
    study_file = tmp_path / "mini.yaml"
    study_file.write_text(yaml.safe_dump({
        # one train worker a run: the study's mechanics do not depend on DDP (tested in test_training)
        "experiment": "tiny", "experiment_overrides": ["train.epochs=2", "train.max_steps_per_epoch=2",
                                                       "teacher.placement=worker", "train.num_workers=1"],
        "variants": {"baseline": {"distill.enabled": False}, "cdkd-p0.3": {"distill.dropout_p": 0.3}},
        "seeds": [0, 1], "max_concurrent_trials": 2}))
    out = tmp_path / "out"
    args = ["--config", str(study_file), "--data", synth_shards, "--storage", str(out), "--teacher", teacher_file]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the CLI starts its own Ray, as on a laptop
    # the first two runs start together and end close together: Ctrl-C once both have finished, so the
    # interrupt does not throw away a nearly finished run for the resume to start again (~30 s here)
    finished = _interrupt_after_runs(args, env, out / "mini" / "runs", count=2)
    assert len(finished) == 2, "two runs did not finish before the interrupt"
    assert not (out / "mini" / "report.md").exists()
    kept = {p: p.stat().st_mtime_ns for run in finished for p in run.rglob("trainer_state.json")}

    changed = _compare([*args, "--resume", "seeds=[0,2]"], env, timeout=120)  # a changed study is refused
    assert changed.returncode == 2 and "seeds" in changed.stderr and "other settings" in changed.stderr
    fresh = _compare(args, env, timeout=120)  # so is starting it again over the old results
    assert fresh.returncode == 2 and "--resume" in fresh.stderr

    proc = _compare([*args, "--resume", "--json"], env, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Failed to fetch metrics" not in proc.stderr  # a run without results is said in one line of ours
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for path, mtime in kept.items():  # finished runs were not trained again
        assert path.stat().st_mtime_ns == mtime
    _check_report(report, out / "mini")
    rebuilt = _compare(["--config", str(study_file), "--storage", str(out), "--report-only", "--json"], env, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]  # the teacher (for the FLOP ratio) comes from study.json
    again = json.loads(rebuilt.stdout.strip().splitlines()[-1])
    assert again["variants"][1]["vs_baseline"] == report["variants"][1]["vs_baseline"]
    assert again["variants"][1]["flops_step_ratio"] == report["variants"][1]["flops_step_ratio"] > 1


def _check_report(report: dict, study_dir) -> None:
    assert [r["variant"] for r in report["variants"]] == ["baseline", "cdkd-p0.3"]
    for name in ("report.md", "report.json", "ap_per_epoch.png", "paired_diff.png", "study.json"):
        assert (study_dir / name).stat().st_size > 200, name
    base, cdkd = report["variants"]
    diffs = [c - b for c, b in zip(cdkd["best_ap"], base["best_ap"])]  # the interval comes from the per-seed values
    mean, sd = sum(diffs) / 2, abs(diffs[0] - diffs[1]) / math.sqrt(2)
    d = cdkd["vs_baseline"]["best_ap"]
    assert d["mean"] == pytest.approx(mean, abs=1e-12) and d["method"] == "paired_t" and d["n"] == 2
    assert d["high"] - d["mean"] == pytest.approx(12.7062 * sd / math.sqrt(2), abs=1e-6)
    assert cdkd["kind"] == "cdkd" and base["kind"] == "baseline" and cdkd["flops_step_ratio"] > 1
    assert cdkd["parameters"] == base["parameters"]  # the deployed student is the same network
    for seed in (0, 1):  # within a seed both variants trained on the same batches
        digests = [[json.loads(line)["data_digest"] for line in open(study_dir / "runs" / f"{v}-seed{seed}" /
                                                                      "metrics.jsonl")] for v in ("baseline", "cdkd-p0.3")]
        assert digests[0] == digests[1]
    md = (study_dir / "report.md").read_text()
    assert "paired Student t" in md and "cdkd-p0.3" in md and ("within noise" in md or "than baseline" in md)


def _fake_run(kind: str, best: float, step_s: float, seed: int) -> dict:
    history = [{"epoch": e, "steps": 10, "epoch_seconds": 10 * step_s, "loss_gt": 0.006 - 0.001 * e,
                "val_loss_gt": 0.0065 - 0.001 * e, "AP": best * (e + 1) / 2, "AP50": 0.0} for e in range(2)]
    return {"kind": kind, "best_ap": best, "final_ap": best, "history": history, "seed": seed}


def test_report_pairs_seeds_and_computes_contrasts_and_costs():
    from cdkd_ray.core.study_report import build_report, contrasts_table, markdown_table

    study = StudyConfig(experiment="tiny", seeds=[0, 1, 2], contrasts=[["p5", "p0"]],
                        variants={"baseline": {"distill.enabled": False}, "p0": {"distill.dropout_p": 0},
                                  "p5": {"distill.dropout_p": 0.5}})
    runs = {"baseline": [_fake_run("baseline", a, 1.0, s) for s, a in enumerate((0.10, 0.20, 0.30))],
            "p0": [_fake_run("cdkd", a, 1.5, s) for s, a in enumerate((0.15, 0.26, 0.34))],
            "p5": [_fake_run("cdkd", a, 1.5, s) for s, a in enumerate((0.14, 0.27, 0.33))]}
    costs = {v: {"arch": "resnet18", "parameters": 1, "gflops": 1.0, "flops_step_ratio": 1.0 if v == "baseline" else 1.4}
             for v in study.variants}
    report = build_report(study, "s", runs, costs)
    p0 = report["variants"][1]
    assert p0["best_ap_mean"] == pytest.approx(0.25) and p0["step_cost_vs_baseline"] == pytest.approx(1.5)
    assert not p0["vs_baseline"]["best_ap"]["within_noise"]  # +0.05, +0.06, +0.04: every seed gained
    contrast = report["contrasts"][0]["best_ap"]
    assert contrast["mean"] == pytest.approx(-0.0033333, abs=1e-6) and contrast["within_noise"]
    assert "within noise" in contrasts_table(report) and "| p5 | p0 |" in contrasts_table(report)
    assert "better than baseline" in markdown_table(report)
    with pytest.raises(ConfigError, match="contrasts"):
        StudyConfig(contrasts=[["cdkd", "nope"]]).validate()
