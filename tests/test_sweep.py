"""Ray Tune sweeps on tiny synthetic data: ASHA, outputs, refusing reruns, interrupt and resume."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
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


def _whole(checkpoint) -> bool:
    """Whether a checkpoint directory's model, optimizer and trainer state all read back."""
    try:
        for name in ("model.pt", "optimizer.pt"):
            torch.load(checkpoint / name, map_location="cpu", weights_only=True)
        json.loads((checkpoint / "trainer_state.json").read_bytes())
    except Exception:  # missing, truncated, refused, not JSON
        return False
    return True


def _check_sweep_outputs(result: dict, sweep_dir) -> None:
    rows = result["trials"]
    assert len(rows) == 4 and result["stopped_early"] >= 1
    assert any(r["epochs"] < 3 for r in rows) and any(r["epochs"] == 3 for r in rows), rows
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
def test_asha_sweep_interrupted_and_resumed_keeps_finished_work_and_writes_outputs(ray_session, synth_shards, teacher_file, tmp_path):
    """One 4-trial ASHA sweep, Ctrl-C'd after a first checkpoint and resumed: one run shows both.

    The CLI drives the session's Ray as it would a cluster's (`--address`/$RAY_ADDRESS), which saves two
    Ray starts; the compare study's test covers Ctrl-C and resume on a CLI's own embedded Ray."""
    args = _cli_sweep_args(tmp_path, "s2", teacher_file, synth_shards)
    # the embedded Ray runs with Ray's token auth, kept out of os.environ (see runtime.py): a driver joining it asks for it
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "RAY_AUTH_MODE": "token"}
    started = _interrupt_after_first_checkpoint(args, env, tmp_path / "out" / "s2" / "train_runs")
    assert started, "no trial checkpointed before the interrupt"
    assert not (tmp_path / "out" / "s2" / "sweep.csv").exists()  # the interrupt came before the sweep ended
    # the checkpoints written whole before the Ctrl-C (one being copied then is partial: trained again)
    snapshot = {state: state.read_bytes()
                for run in started for state in run.glob("checkpoint_epoch*/trainer_state.json") if _whole(state.parent)}
    proc = subprocess.run(args + ["--resume", "--json"], env=env, capture_output=True, text=True, timeout=560)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Failed to fetch metrics" not in proc.stderr  # a trial without results is said in one line of ours
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # checkpointed epochs were not trained again (a retrained epoch records other times and losses), not even one
    # written but not yet recorded by Ray Train when the Ctrl-C came: that one is reported again as it was
    for state, data in snapshot.items():
        if state.exists():
            assert state.read_bytes() == data
        else:  # pruned since (train.keep_checkpoints keeps the best 2): the history still holds that epoch as it was
            saved = json.loads(data)
            latest = max(state.parent.parent.glob("checkpoint_epoch*/trainer_state.json"))
            assert json.loads(latest.read_bytes())["history"][saved["epoch"]] == saved["history"][-1]
    # and no partial checkpoint is left behind: each trial's resume removed what it could not use
    assert all(_whole(c) for c in (tmp_path / "out" / "s2" / "train_runs").glob("trial_*/checkpoint_epoch*"))
    _check_sweep_outputs(summary, tmp_path / "out" / "s2")
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr and "--resume" in again.stderr


@pytest.mark.timeout(180)
def test_only_an_interrupted_fit_is_refused_and_its_resume_is_reported(ray_session, tmp_path, capsys):
    """Whether fit() ended early comes from Tune's Ctrl-C handling, not from the trials' `done` flags: in
    the e2e study a resume once came back with the two runs that had finished before the interrupt
    TERMINATED but without `done`, and counting `done` refused the study forever ("2 of 4 runs finished:
    run --resume"). Here: Ctrl-C while two trials linger after their reports and a third has not reported
    yet, then the resume, which says in one line that the third runs from its start (Tune's own warning
    for it is a FileNotFoundError)."""
    import logging
    import threading

    from ray import tune

    from cdkd_ray.core.errors import InterruptedRun
    from cdkd_ray.core.storage import resolve
    from cdkd_ray.ray_adapters.tune_outcome import fit_or_refuse, restore_tuner

    def _trial(config: dict) -> None:  # local, so Ray ships it by value (workers cannot import tests)
        """Reports its epochs, then (first attempt) lingers as a run's shutdown does; a resume finds it done.
        At the interrupt n=1 is still starting: it has reported nothing."""
        marker, started = (os.path.join(config["dir"], f"{what}-{config['n']}") for what in ("done", "started"))
        first = not os.path.exists(started)
        open(started, "w").close()
        if os.path.exists(marker):
            return  # like run_training on a run that already finished: nothing left to train or report
        if config["n"] == 1 and first:
            time.sleep(60)
        for i in range(config["n"]):
            tune.report({"i": i})
        open(marker, "w").close()
        if first:
            time.sleep(60)

    def interrupt_once_both_reported():
        while len(list(tmp_path.glob("done-*"))) < 2 or not (tmp_path / "started-1").exists():
            time.sleep(0.2)
        time.sleep(2)
        os.kill(os.getpid(), signal.SIGINT)

    trainable = tune.with_resources(_trial, {"CPU": 0.01})
    space = {"n": tune.grid_search([2, 3, 1]), "dir": str(tmp_path)}
    tuner = tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(max_concurrent_trials=3),
                       run_config=tune.RunConfig(name="g", storage_path=str(tmp_path), verbose=0))
    interrupter = threading.Thread(target=interrupt_once_both_reported, daemon=True)
    interrupter.start()
    with pytest.raises(InterruptedRun, match=r"grid 'g' was interrupted.*--resume"):
        fit_or_refuse(tuner, "grid 'g'")
    interrupter.join(timeout=5)
    capsys.readouterr()
    # n=1 had started but not reported; a trial scheduled in the moment of the interrupt leaves its folder
    # without even an empty result.json (seen in the interrupted ASHA sweep), which Tune's restore warns about
    (unreported,) = (tmp_path / "g").glob("*_n=1_*/result.json")
    unreported.unlink()
    passed_on = []
    watcher = logging.Handler()
    watcher.emit = lambda record: passed_on.append(record.getMessage())
    logging.getLogger("ray.tune.analysis.experiment_analysis").addHandler(watcher)
    try:
        restored = restore_tuner(resolve(str(tmp_path / "g")), trainable, None, "grid 'g'")
    finally:
        logging.getLogger("ray.tune.analysis.experiment_analysis").removeHandler(watcher)
    assert not [m for m in passed_on if "Failed to fetch metrics" in m], passed_on
    said = capsys.readouterr().err
    assert "grid 'g': 1 trial(s) had not reported an epoch when interrupted (_trial_" in said
    assert f"({unreported.parent.name}); they run from the start." in said  # its folder names its parameters
    results = fit_or_refuse(restored, "grid 'g'")  # not interrupted: every trial ended
    assert sorted(r.metrics["i"] for r in results) == [0, 1, 2]  # two kept from the first fit, one run now
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works as before afterwards


def test_a_sweep_name_in_use_is_refused_before_ray_starts(synth_shards, teacher_file, tmp_path):
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "tuner.pkl").write_bytes(b"")
    with pytest.raises(CdkdError, match="already exists"):
        run_sweep(sweep_config(), synth_shards, str(tmp_path), "s1", teacher_file)
    with pytest.raises(CdkdError, match="nothing to resume"):
        run_sweep(sweep_config(), synth_shards, str(tmp_path), "s3", teacher_file, resume=True)


def test_a_resumed_sweep_refuses_other_settings_and_says_its_concurrency_stays(tmp_path, capsys):
    """Tune.restore runs the saved search, experiment and concurrency whatever the resume asks for; a sweep
    resumed with another config used to run the old one silently. sweep.json records what it started with."""
    from cdkd_ray.core.config import to_dict
    from cdkd_ray.core.storage import resolve
    from cdkd_ray.ray_adapters.sweep import SWEEP_FILE, claim_sweep

    sweep_dir = resolve(str(tmp_path / "s1"))
    sweep_dir.makedirs()
    base = {"data": "/d", "teacher": "/t.pt", "s3_endpoint": None}
    record = lambda **kw: {"sweep": to_dict(sweep_config(**kw)), **base}  # noqa: E731
    claim_sweep(sweep_dir, record(), resume=False)
    assert json.loads((tmp_path / "s1" / SWEEP_FILE).read_text())["sweep"]["max_concurrent_trials"] == 2
    with pytest.raises(CdkdError, match=r"sweep.num_samples: 4 -> 8"):
        claim_sweep(sweep_dir, record(num_samples=8), resume=True)
    with pytest.raises(CdkdError, match="teacher"):
        claim_sweep(sweep_dir, {**record(), "teacher": "/other.pt"}, resume=True)
    claim_sweep(sweep_dir, record(), resume=True)
    assert capsys.readouterr().err == ""
    claim_sweep(sweep_dir, {**record(max_concurrent_trials=4), "s3_endpoint": "http://x"}, resume=True)
    assert "max_concurrent_trials stays 2" in capsys.readouterr().err
    (tmp_path / "s1" / SWEEP_FILE).write_text('{"sweep": ')  # damaged by hand: a clear error, not a traceback
    with pytest.raises(CdkdError, match="sweep.json is not valid JSON"):
        claim_sweep(sweep_dir, record(), resume=True)


def test_a_trial_resumed_from_its_own_checkpoint_counts_the_epochs_it_trained_before_the_interrupt():
    """Tune's training_iteration restarts at 1 when a trial resumes from its Train run's checkpoint (Tune
    holds no checkpoint of its own); CI once saw every resumed trial listed as stopped early because the
    table (and ASHA's rungs) counted it. The count now comes from the run's own epochs."""
    from types import SimpleNamespace

    import pandas as pd

    from cdkd_ray.ray_adapters.sweep import trial_rows

    def report(epoch, iteration, ap):  # what close_epoch reports, plus Tune's iteration counter
        return {"epoch": epoch, "epochs_done": epoch + 1, "training_iteration": iteration, "AP": ap,
                "score": ap, "trial_id": f"t{ap}"}

    resumed = [report(0, 1, 0.5), report(1, 1, 0.2), report(2, 2, 0.3)]  # interrupted after epoch 0
    stopped = [report(0, 1, 0.1)]
    results = [SimpleNamespace(metrics=rows[-1], metrics_dataframe=pd.DataFrame(rows), config={"p": p})
               for rows, p in ((resumed, 0.2), (stopped, 0.4))]
    first, second = trial_rows(results, ["p"], epochs=3)
    assert (first["p"], first["epochs"], first["stopped_early"]) == (0.2, 3, False)
    assert (first["AP"], first["best_epoch"]) == (0.5, 0)  # its best epoch came before the interrupt
    assert (second["epochs"], second["stopped_early"]) == (1, True)


def test_a_checkpoint_cut_off_by_an_asha_stop_is_removed_before_the_best_is_chosen(tmp_path, capsys):
    """A trial trains on while Tune weighs its report; ASHA stopping it mid-copy of the next checkpoint leaves
    that one's trainer state (copied first) without a whole model. The best-checkpoint search read any trainer
    state, so such a leftover with a better score was chosen for export (and could not be loaded)."""
    from cdkd_ray.core.checkpoint import save_checkpoint
    from cdkd_ray.ray_adapters.sweep import best_checkpoint_of, remove_partial_checkpoints

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1).state_dict()
    runs = tmp_path / "train_runs"
    for trial, epochs in (("trial_a", 3), ("trial_b", 2)):
        for epoch in range(epochs):
            save_checkpoint(str(runs / trial / f"checkpoint_epoch{epoch:04d}"), {"w": torch.ones(3)}, optimizer,
                            {"epoch": epoch, "metrics": {"AP": 0.1 * epoch, "loss_gt": 1e-3}, "history": []})
    cut = runs / "trial_a" / "checkpoint_epoch0002" / "model.pt"
    cut.write_bytes(cut.read_bytes()[:100])  # trial_a reported epoch 1, then was stopped copying epoch 2
    rows = [{"last_checkpoint": str(runs / "trial_a" / "checkpoint_epoch0001")},
            {"last_checkpoint": str(runs / "trial_b" / "checkpoint_epoch0001")}, {"last_checkpoint": ""}]
    assert best_checkpoint_of(rows[0]["last_checkpoint"], remote=False).endswith("trial_a/checkpoint_epoch0002")
    remove_partial_checkpoints(rows, remote=False)
    assert sorted(p.name for p in (runs / "trial_a").iterdir()) == ["checkpoint_epoch0000", "checkpoint_epoch0001"]
    assert len(list((runs / "trial_b").iterdir())) == 2
    assert best_checkpoint_of(rows[0]["last_checkpoint"], remote=False).endswith("trial_a/checkpoint_epoch0001")
    assert "trial_a/checkpoint_epoch0002: its trial was stopped while writing it" in capsys.readouterr().err
