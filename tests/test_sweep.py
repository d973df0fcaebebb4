"""Ray Tune sweeps on tiny synthetic data: ASHA, outputs, refusing reruns, interrupt and resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cdkd_ray.ray_adapters.sweep_config import SweepConfig
from cdkd_ray.ray_adapters.sweep import run_sweep
from cdkd_ray.core.errors import CdkdError

SEARCH = {"distill.dropout_p": {"grid": [0.0, 0.2, 0.4, 0.6]}}


def sweep_config(**kw) -> SweepConfig:
    values = dict(experiment="tiny", experiment_overrides=["train.epochs=3", "train.max_steps_per_epoch=2"],
                  search=SEARCH, search_alg="grid", max_concurrent_trials=2, trial_workers=1)
    values.update(kw)
    return SweepConfig(**values)


def _cli_sweep_args(tmp_path, name: str, teacher_file: str, synth_shards: str) -> list[str]:
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": "tiny", "experiment_overrides": ["train.epochs=3", "train.max_steps_per_epoch=2"],
        "search": SEARCH, "search_alg": "grid", "max_concurrent_trials": 2, "trial_workers": 1}))
    return [sys.executable, "-m", "cdkd_ray", "sweep", "--config", str(config), "--data", synth_shards,
            "--storage", str(tmp_path / "out"), "--name", name, "--teacher", teacher_file]


def _interrupt_after_first_checkpoint(args: list[str], env: dict, train_runs) -> list:
    """Start a sweep, Ctrl-C it once a trial has checkpointed an epoch; the trials with a checkpoint."""
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    deadline = time.time() + 400
    started = []
    while time.time() < deadline and not started:
        time.sleep(1)
        started = [d for d in train_runs.glob("trial_*") if (d / "checkpoint_epoch0000").exists()] if train_runs.exists() else []
    time.sleep(3)
    os.killpg(first.pid, signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    # Tune returns from fit() on Ctrl-C: the sweep must say so, not write a table of half its trials
    assert first.returncode == 130 and "--resume" in stderr, stderr[-3000:]
    return started


def _check_sweep_outputs(result: dict, sweep_dir) -> None:
    rows = result["trials"]
    assert len(rows) == 4 and result["stopped_early"] >= 1
    assert any(r["epochs"] < 3 for r in rows) and any(r["epochs"] == 3 for r in rows)
    table = list(csv.DictReader(open(sweep_dir / "sweep.csv")))
    # best first by the one definition of "best" (val AP, ties broken by the lower GT loss)
    assert [float(r["score"]) for r in table] == sorted((float(r["score"]) for r in table), reverse=True)
    assert os.path.getsize(sweep_dir / "ap_vs_params.png") > 5000
    best = yaml.safe_load(open(sweep_dir / "best_config.yaml"))
    assert best["distill"]["dropout_p"] == rows[0]["distill.dropout_p"]
    card = json.load(open(sweep_dir / "best_student" / "model_card.json"))
    assert card["training_config"]["distill"]["dropout_p"] == rows[0]["distill.dropout_p"]
    assert card["metrics"]["AP"] == pytest.approx(rows[0]["AP"])
    assert card["metrics"]["score"] == pytest.approx(rows[0]["score"])  # the exported epoch is the best one


@pytest.mark.timeout(700)
def test_asha_sweep_interrupted_and_resumed_keeps_finished_work_and_writes_outputs(synth_shards, teacher_file, tmp_path):
    """One 4-trial ASHA sweep, Ctrl-C'd after a first checkpoint and resumed: one run shows both."""
    args = _cli_sweep_args(tmp_path, "s2", teacher_file, synth_shards)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    started = _interrupt_after_first_checkpoint(args, env, tmp_path / "out" / "s2" / "train_runs")
    assert started, "no trial checkpointed before the interrupt"
    assert not (tmp_path / "out" / "s2" / "sweep.csv").exists()  # the interrupt came before the sweep ended
    snapshot = {state: (state.read_bytes(), state.stat().st_mtime_ns)
                for run in started for state in run.glob("checkpoint_epoch*/trainer_state.json")}
    proc = subprocess.run(args + ["--resume", "--json"], env=env, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for state, (data, mtime) in snapshot.items():  # checkpointed epochs were not trained again
        assert state.read_bytes() == data and state.stat().st_mtime_ns == mtime
    _check_sweep_outputs(summary, tmp_path / "out" / "s2")
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr


def test_trial_count_is_the_grid_times_the_samples():
    assert sweep_config().trial_count() == 4
    mixed = {"distill.dropout_p": {"grid": [0.1, 0.2]}, "distill.alpha": {"uniform": [0.0, 1.0]}}
    assert sweep_config(search=mixed, search_alg="random", num_samples=3).trial_count() == 6
    assert sweep_config(search={"distill.alpha": {"uniform": [0.0, 1.0]}}, search_alg="random",
                        num_samples=5).trial_count() == 5


def test_trials_stopped_by_an_interrupt_do_not_count_as_finished():
    """Tune marks the trials it stops on Ctrl-C TERMINATED too; only `done` (or an error) means finished."""
    from types import SimpleNamespace

    from cdkd_ray.core.errors import InterruptedRun
    from cdkd_ray.ray_adapters.tune_outcome import finished_trials, refuse_unfinished

    returned = SimpleNamespace(error=None, metrics={"AP": 0.1, "done": True})
    cut_off = SimpleNamespace(error=None, metrics={"AP": 0.0, "done": False})
    failed = SimpleNamespace(error=RuntimeError("boom"), metrics={})
    never_started = SimpleNamespace(error=None, metrics=None)
    assert finished_trials([returned, cut_off, failed, never_started]) == 2
    refuse_unfinished([returned, failed], 2, "sweep 's'")
    with pytest.raises(InterruptedRun, match=r"sweep 's' stopped before it ended \(1 of 2 runs.*--resume"):
        refuse_unfinished([returned, cut_off], 2, "sweep 's'")


def test_a_sweep_name_in_use_is_refused_before_ray_starts(synth_shards, teacher_file, tmp_path):
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "tuner.pkl").write_bytes(b"")
    with pytest.raises(CdkdError, match="already exists"):
        run_sweep(sweep_config(), synth_shards, str(tmp_path), "s1", teacher_file)
    with pytest.raises(CdkdError, match="nothing to resume"):
        run_sweep(sweep_config(), synth_shards, str(tmp_path), "s3", teacher_file, resume=True)
