"""The core trains and evaluates without Ray: the step a GPU check (PyTorch, no Ray) relies on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = r"""
import json, math, os, sys
import torch
from cdkd_ray.core.config import load_config
from cdkd_ray.core.experiment import ExperimentConfig, RunKind, experiment_for
from cdkd_ray.core.instances import build_instances
from cdkd_ray.core.models.pose_resnet import ModelConfig, PoseResNet
from cdkd_ray.core.shard_reader import iter_shard_rows, load_split_annotations
from cdkd_ray.core.training import close_epoch, evaluate, fit_epoch, new_session, torch_batches

shards, teacher_file, kind = sys.argv[1], sys.argv[2], RunKind(sys.argv[3])
torch.manual_seed(1)
torch.save({"state_dict": PoseResNet(ModelConfig(arch="resnet18")).state_dict()}, teacher_file)
cfg = experiment_for(kind, load_config(ExperimentConfig, "tiny", ["teacher.placement=worker", "train.epochs=2"]))
batches = lambda split, train: torch_batches(
    (build_instances(rows, cfg.data, train) for rows in iter_shard_rows(shards, split, 8)), 8)
session = new_session(cfg, kind, "cpu", teacher_file, "resnet18")
before = {k: v.clone() for k, v in session.module.student.state_dict().items()}
metrics = close_epoch(session, fit_epoch(session, batches("train", True), epoch=0))
metrics.update(evaluate(session.module.student, cfg, batches("val", False), load_split_annotations(shards, "val")))
changed = any(not torch.equal(before[k], v) for k, v in session.module.student.state_dict().items())
print(json.dumps({"metrics": metrics, "changed": changed, "ray_imported": "ray" in sys.modules}))
"""


@pytest.mark.parametrize("kind", ["cdkd", "baseline"])
def test_core_training_step_and_evaluation_run_without_ray(synth_shards, tmp_path, kind):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, synth_shards, str(tmp_path / "teacher.pth"), kind],
                          capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ray_imported"] is False
    assert out["changed"], "the training step did not update the student"
    m = out["metrics"]
    assert m["steps"] == 4 and m["loss_gt"] > 0 and m["loss_gt_zeros"] > 0
    assert ("loss_inter" in m and m["loss"] > m["loss_gt"]) if kind == "cdkd" else "loss_inter" not in m
    assert 0.0 <= m["AP"] <= 1.0 and "AR" in m and "score" in m
    # val GT loss: the training loss's measure on val crops, so over-fitting shows as a gap
    assert 0 < m["val_loss_gt"] < 10 * m["loss_gt_zeros"]


def test_an_epoch_reports_how_long_it_waited_for_data(synth_shards):
    """fit_epoch times the waits for batches apart from the steps: the first one (the pipeline's start-up)
    and all of them, so a user sees when training is input-bound."""
    import time

    from cdkd_ray.core.config import load_config
    from cdkd_ray.core.experiment import ExperimentConfig, RunKind, experiment_for
    from cdkd_ray.core.instances import build_instances
    from cdkd_ray.core.shard_reader import iter_shard_rows
    from cdkd_ray.core.training import fit_epoch, new_session, torch_batches

    cfg = experiment_for(RunKind.BASELINE, load_config(ExperimentConfig, "tiny", ["train.max_steps_per_epoch=3"]))
    ready = list(torch_batches((build_instances(r, cfg.data, True) for r in iter_shard_rows(synth_shards, "train", 8)), 8))

    def slow_batches():
        for i, batch in enumerate(ready[:3]):
            time.sleep(0.4 if i == 0 else 0.2)
            yield batch

    m = fit_epoch(new_session(cfg, RunKind.BASELINE), slow_batches(), epoch=0)
    assert m["steps"] == 3
    assert m["first_batch_seconds"] >= 0.4  # the first wait alone, not all of them:
    assert m["data_wait_seconds"] >= m["first_batch_seconds"] + 0.4 and m["data_wait_seconds"] < m["epoch_seconds"]
