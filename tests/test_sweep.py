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


@pytest.mark.timeout(400)
def test_four_trial_sweep_with_asha_and_outputs(ray_session, synth_shards, teacher_file, tmp_path):
    result = run_sweep(sweep_config(), synth_shards, str(tmp_path), "s1", teacher_file)
    rows = result["trials"]
    assert len(rows) == 4 and result["stopped_early"] >= 1
    assert any(r["epochs"] < 3 for r in rows) and any(r["epochs"] == 3 for r in rows)
    table = list(csv.DictReader(open(tmp_path / "s1" / "sweep.csv")))
    # best first by the one definition of "best" (val AP, ties broken by the lower GT loss)
    assert [float(r["score"]) for r in table] == sorted((float(r["score"]) for r in table), reverse=True)
    assert os.path.getsize(tmp_path / "s1" / "ap_vs_params.png") > 5000
    best = yaml.safe_load(open(tmp_path / "s1" / "best_config.yaml"))
    assert best["distill"]["dropout_p"] == rows[0]["distill.dropout_p"]
    card = json.load(open(tmp_path / "s1" / "best_student" / "model_card.json"))
    assert card["training_config"]["distill"]["dropout_p"] == rows[0]["distill.dropout_p"]
    assert card["metrics"]["AP"] == pytest.approx(rows[0]["AP"])
    assert card["metrics"]["score"] == pytest.approx(rows[0]["score"])  # the exported epoch is the best one
    with pytest.raises(CdkdError, match="already exists"):
        run_sweep(sweep_config(), synth_shards, str(tmp_path), "s1", teacher_file)


@pytest.mark.timeout(600)
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(synth_shards, teacher_file, tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": "tiny", "experiment_overrides": ["train.epochs=1", "train.max_steps_per_epoch=2"],
        "search": {"distill.dropout_p": {"grid": [0.0, 0.6]}}, "search_alg": "grid", "max_concurrent_trials": 1, "trial_workers": 1,
        "asha": {"enabled": False}}))
    args = [sys.executable, "-m", "cdkd_ray", "sweep", "--config", str(config), "--data", synth_shards,
            "--storage", str(tmp_path / "out"), "--name", "s2", "--teacher", teacher_file]
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    train_runs = tmp_path / "out" / "s2" / "train_runs"
    deadline = time.time() + 400
    finished = []
    while time.time() < deadline:
        finished = [d for d in train_runs.glob("trial_*") if (d / "checkpoint_epoch0000").exists()] if train_runs.exists() else []
        if finished:
            break
        time.sleep(1)
    assert finished, "no trial finished before the interrupt"
    time.sleep(3)
    os.killpg(first.pid, signal.SIGINT)
    first.wait(timeout=120)
    snapshot = {}
    for run in finished:
        for state in run.glob("checkpoint_epoch*/trainer_state.json"):
            snapshot[state] = (state.read_bytes(), state.stat().st_mtime_ns)
    proc = subprocess.run(args + ["--resume", "--json"], env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(summary["trials"]) == 2 and all(r["epochs"] == 1 for r in summary["trials"])
    for state, (data, mtime) in snapshot.items():  # finished trials were not trained again
        assert state.read_bytes() == data and state.stat().st_mtime_ns == mtime
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr
