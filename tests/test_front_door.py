"""The front door: the base install has what the main command needs, and the quickstart refuses early."""

from __future__ import annotations

import re
import socket
import tomllib

import pytest

from cdkd_ray.apps.environment_check import BASE_MODULES, DiskNeed, check_run_environment, claim_workdir
from cdkd_ray.core.errors import CdkdError, ConfigError
from tests.conftest import REPO
from tests.helpers import run_cli


def _base_requirements() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {re.split(r"[<>=\[ ;]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}


def test_every_base_dependency_is_checked_and_export_needs_no_extra():
    checked = {re.split(r"[\[]", req)[0].lower() for req in BASE_MODULES.values()}
    assert _base_requirements() <= checked
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # the quickstart exports ONNX and serving may run onnxruntime: both are base dependencies
    assert {"onnx", "onnxruntime"} <= _base_requirements()
    assert "export" not in project.get("optional-dependencies", {})


def test_missing_package_disk_and_port_are_all_named_with_their_fix(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CdkdError) as err:
            check_run_environment(str(tmp_path / "work"), DiskNeed(workdir_gib=1e9), port,
                                  modules={"cdkd_no_such_module": "cdkd-no-such-package", "numpy": "numpy"})
    message = str(err.value)
    assert "cdkd-no-such-package" in message and "pip install -e ." in message
    assert "needs about 1e+09 GiB" in message
    assert f"port {port}" in message and "--serve-port" in message
    assert "numpy" not in message.split("missing package(s)")[1].split(":")[0]


def test_a_workdir_of_another_preset_is_refused(tmp_path):
    claim_workdir(str(tmp_path), ".quickstart.json", {"preset": "tiny"})
    claim_workdir(str(tmp_path), ".quickstart.json", {"preset": "tiny"})  # the same preset may run again
    with pytest.raises(CdkdError, match="already holds a run of"):
        claim_workdir(str(tmp_path), ".quickstart.json", {"preset": "small"})


def test_quickstart_with_a_busy_port_fails_before_any_work(tmp_path):
    workdir = tmp_path / "qs"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = run_cli("quickstart", "--preset", "tiny", "--workdir", workdir,
                       "--serve-port", busy.getsockname()[1], timeout=120)
    assert proc.returncode == 2
    assert "is in use" in proc.stderr and "--serve-port" in proc.stderr
    assert not (workdir / "synth").exists() and not (workdir / "runs").exists()


def test_resuming_a_run_with_other_settings_is_refused_with_a_diff(synth_shards, tmp_path):
    """The check runs before Ray starts: an existing run of the name with another lr and teacher is refused."""
    import json

    import torch

    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.experiment import ExperimentConfig, RunKind, experiment_for
    from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet
    from cdkd_ray.core.run_identity import IDENTITY_FILE, RunConflict, run_identity
    from cdkd_ray.core.shards import verified_manifests
    from cdkd_ray.ray_adapters.train_driver import free_run_name, run_training
    from cdkd_ray.core.storage import resolve

    teacher = tmp_path / "teacher.pth"
    torch.save(PoseResNet(ModelConfig()).state_dict(), teacher)
    cfg = experiment_for(RunKind.CDKD, load_config(ExperimentConfig, "tiny"))
    manifests = verified_manifests(synth_shards, ("train", "val"))
    run_dir = tmp_path / "runs" / "cdkd"
    run_dir.mkdir(parents=True)
    old = run_identity(cfg, RunKind.CDKD, synth_shards, manifests, str(teacher))
    old["config"]["train"]["lr"] = 0.01
    old["teacher_digest"] = "0" * 64
    (run_dir / IDENTITY_FILE).write_text(json.dumps(old))
    with pytest.raises(RunConflict) as err:
        run_training(load_config(ExperimentConfig, "tiny", ["train.epochs=9"]), RunKind.CDKD, synth_shards,
                     str(tmp_path / "runs"), "cdkd", teacher_checkpoint=str(teacher))
    message = str(err.value)
    assert "config.train.lr: 0.01 -> 0.001" in message and "teacher_digest" in message
    assert "train.epochs" not in message.split("\n    ")[1:]  # more epochs alone may resume
    assert free_run_name(resolve(str(tmp_path / "runs")), "cdkd") == "cdkd-2"
    with pytest.raises(ConfigError, match="not a valid name"):
        run_training(cfg, RunKind.CDKD, synth_shards, str(tmp_path / "runs"), "../escape", str(teacher))


def test_a_corrupt_part_fails_the_run_before_it_starts_naming_the_file(synth_dir, tmp_path):
    from cdkd_ray.apps.recipes import shard_coco_dir
    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.errors import DataValidationError
    from cdkd_ray.core.experiment import ExperimentConfig, RunKind
    from cdkd_ray.ray_adapters.train_driver import run_training
    from tests.helpers import split_file

    shards = shard_coco_dir(str(synth_dir), str(tmp_path / "shards"), rows_per_file=10)
    part = split_file(shards, "train", "part")
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0x01  # one flipped bit: still valid Parquet, wrong pixels
    part.write_bytes(bytes(data))
    with pytest.raises(DataValidationError) as err:
        run_training(load_config(ExperimentConfig, "tiny"), RunKind.BASELINE, shards, str(tmp_path / "runs"), "b")
    assert part.name in str(err.value) and "checksum mismatch" in str(err.value)
    assert not (tmp_path / "runs" / "b").exists()


def test_every_quickstart_preset_is_a_valid_experiment_and_the_cli_offers_them():
    from cdkd_ray.apps.cli import parse_args
    from cdkd_ray.apps.quickstart_presets import DEFAULT_PRESET, PRESETS
    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.experiment import ExperimentConfig

    for name, preset in PRESETS.items():
        teacher = load_config(ExperimentConfig, preset.experiment, preset.teacher_overrides)
        student = load_config(ExperimentConfig, preset.experiment, preset.student_overrides)
        assert preset.train_images > preset.val_images > 0 and teacher.train.epochs >= student.train.epochs >= 2, name
        assert parse_args(["quickstart", "--preset", name]).preset == name
    default = load_config(ExperimentConfig, PRESETS[DEFAULT_PRESET].experiment)
    assert parse_args(["quickstart"]).preset == DEFAULT_PRESET and default.teacher.arch != default.model.arch


def test_the_results_verdict_names_a_model_that_did_not_pass_the_all_zeros_loss():
    """A CDKD row whose GT loss barely fell and ended above the all-zeros loss is not reported as learning."""
    from cdkd_ray.apps.quickstart import learning_verdict

    run = lambda first, last, vs_zeros: {"loss_gt_first": first, "loss_gt_last": last, "loss_gt_vs_zeros": vs_zeros}
    results = {"teacher": run(0.00585, 0.00537, 0.852), "baseline": run(0.00583, 0.00546, 0.916),
               "CDKD": run(0.006704, 0.006698, 1.123)}
    verdict = learning_verdict(results)
    assert verdict.startswith("GT loss fell for teacher, baseline, CDKD; CDKD did not end below the all-zeros loss")
    assert "teacher's heatmaps" in verdict
    assert "did not" not in learning_verdict({**results, "CDKD": run(0.0059, 0.0054, 0.900)})
    baseline_only = learning_verdict({**results, "CDKD": run(0.0059, 0.0054, 0.900), "baseline": run(0.0059, 0.0058, 1.01)})
    assert "baseline did not end below" in baseline_only and "teacher's heatmaps" not in baseline_only
    assert learning_verdict({"baseline": run(0.0058, 0.0059, 1.01)}).startswith("no model's GT loss fell")


def test_a_second_quickstart_in_a_busy_work_folder_is_refused_and_a_gone_ones_lease_taken_over(tmp_path):
    """Two quickstarts in one folder would write the same data, shards and checkpoints at once (it happened:
    a second started while the first ran). The second is refused before any work, naming the first; a lease
    left by a process on this host that is gone, or cut off while written, is taken over at once, one of
    another host only once it expires; the lease goes with its run."""
    import json
    import os
    import subprocess
    import sys
    import time

    from cdkd_ray.apps.environment_check import WORKDIR_LEASE, hold_workdir

    workdir, lease = tmp_path / "qs", tmp_path / "qs" / WORKDIR_LEASE
    host = socket.gethostname()
    with hold_workdir(str(workdir), "quickstart"):
        proc = run_cli("quickstart", "--preset", "tiny", "--workdir", workdir, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"is in use by another quickstart (held by {host}:{os.getpid()} since" in proc.stderr
        assert not (workdir / "synth").exists() and "Traceback" not in proc.stderr
        with pytest.raises(CdkdError, match="in use by another sweep"):
            with hold_workdir(str(workdir), "sweep"):
                pass
        assert json.loads(lease.read_text())["holder"] == f"{host}:{os.getpid()}"  # the refused left it as it was
    assert not lease.exists()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    now = time.time()
    for left in (json.dumps({"holder": f"{host}:{gone.pid}", "token": "t", "since": now, "expires": now + 600}),
                 '{"holder": "'):
        lease.write_text(left)
        os.utime(lease, (now - 60, now - 60))  # an unreadable lease is waited for a moment first
        with hold_workdir(str(workdir), "quickstart"):
            assert json.loads(lease.read_text())["holder"] == f"{host}:{os.getpid()}"
        assert not lease.exists()
    elsewhere = {"holder": f"another-machine:{os.getpid()}", "token": "t", "since": now, "expires": now + 600}
    lease.write_text(json.dumps(elsewhere))
    with pytest.raises(CdkdError, match="held by another-machine"):
        with hold_workdir(str(workdir), "quickstart"):
            pass
    lease.write_text(json.dumps({**elsewhere, "expires": now - 1}))
    with hold_workdir(str(workdir), "quickstart"):
        pass


def test_a_run_being_trained_by_another_driver_is_refused_before_ray_starts(synth_shards, tmp_path):
    """The same command started twice (a job submitted twice) made two drivers train one run and write its
    checkpoints in turn, both exiting 0. The second is refused, naming the first, before Ray starts."""
    import os

    from cdkd_ray.core.lease import acquire_lease, kept
    from cdkd_ray.core.storage import resolve
    from cdkd_ray.ray_adapters.train_driver import RUN_LEASE, RUN_LEASE_S

    runs = tmp_path / "runs"
    with kept(acquire_lease(resolve(str(runs)).join("t", RUN_LEASE), RUN_LEASE_S)):
        proc = run_cli("train-teacher", "--config", "tiny", "--data", synth_shards, "--storage", runs, "--name", "t",
                       timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (f"run 't' in {runs} is being trained by another driver (held by {socket.gethostname()}:{os.getpid()}"
            in proc.stderr) and "--new-run" in proc.stderr
    assert "embedded Ray" not in proc.stderr and "Traceback" not in proc.stderr
    assert os.listdir(runs / "t") == []  # nothing of the refused run, and the holder's lease went with it
