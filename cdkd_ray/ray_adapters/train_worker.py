"""The Ray Train V2 worker: take this worker's shard, run the core's epochs, report metrics and checkpoints."""

from __future__ import annotations

import os
import sys
import tempfile

import torch

from cdkd_ray.core.checkpoint import (
    RecoveredCheckpoint, checkpoint_dir_name, save_checkpoint, unrecorded_checkpoints,
)
from cdkd_ray.core.config import from_dict
from cdkd_ray.core.experiment import ExperimentConfig, RunKind
from cdkd_ray.core.shard_reader import load_split_annotations
from cdkd_ray.core.storage import resolve
from cdkd_ray.ray_adapters.pipeline import train_batches
from cdkd_ray.ray_adapters.teacher_servers import labelled_batches
from cdkd_ray.core.training import (
    apply_checkpoint, close_epoch, evaluate, fit_epoch, is_eval_epoch, new_session, restore_session, trainer_state,
)


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg, kind = from_dict(ExperimentConfig, config["experiment"]), RunKind(config["kind"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    if config.get("pid_dir"):  # lets fault-tolerance tests find (and kill) a worker process
        with open(os.path.join(config["pid_dir"], f"rank{rank}.pid"), "w") as f:
            f.write(str(os.getpid()))
    device = ray.train.torch.get_device()
    session = new_session(cfg, kind, device, config.get("teacher_checkpoint"), config.get("teacher_arch"),
                          config.get("teacher_deconv", 256))
    recovered = _restore(session, config, rank)
    if world > 1 or device.type == "cuda":
        session.model = ray.train.torch.prepare_model(session.module)
    gt = load_split_annotations(config["data_uri"], "val", config.get("s3_endpoint")) if rank == 0 else None
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if rank == 0 else None
    if recovered:  # what the interrupted run did not record is recorded now, before the next epoch
        _report_recovered(recovered, rank)
        recovered = None  # its files and decoded states (a checkpoint's size twice) are not kept for the run
    elif session.start_epoch >= cfg.train.epochs and session.history:
        _report_finished(session)
    for epoch in range(session.start_epoch, cfg.train.epochs):
        batches = train_batches(train_shard, cfg, epoch, rank)
        if config.get("teacher_actors"):  # the run's persistent teacher pool labels each batch a few batches ahead
            batches = labelled_batches(batches, config["teacher_actors"], cfg.teacher.batch_size,
                                       cfg.train.resource_wait_s)
        metrics = fit_epoch(session, batches, epoch, world)
        metrics["node_id"] = ray.get_runtime_context().get_node_id()
        metrics["bad_images_skipped"] = config["bad_images"].total()  # undecodable images skipped so far
        if rank == 0 and is_eval_epoch(cfg, epoch):
            metrics.update(evaluate(session.module.student, cfg, val_shard.iter_torch_batches(batch_size=64), gt,
                                    device))
        metrics = close_epoch(session, metrics)
        if rank != 0:
            ray.train.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(tmp, session.module.state_dict(), session.optimizer.state_dict(),
                            trainer_state(session, metrics, config.get("teacher_checkpoint")))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=checkpoint_dir_name(epoch))


def _restore(session, config: dict, rank: int) -> RecoveredCheckpoint | None:
    """Continue from Ray Train's latest recorded checkpoint, or from a newer one the run wrote but never
    recorded (returned: it must be reported again, or Train and Tune would not know that epoch). Rank 0
    removes the partly written checkpoints an interrupted run left above it."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            restore_session(session, directory)
    if not config.get("run_dir"):
        return None
    run_dir = resolve(config["run_dir"], config.get("s3_endpoint"))
    found = unrecorded_checkpoints(run_dir, session.start_epoch - 1)
    if found.newest:
        apply_checkpoint(session, found.newest.model, found.newest.optimizer, found.newest.state)
    if rank == 0:
        for name in found.incomplete:
            run_dir.join(name).remove()
            print(f"removed {name}: the interrupted run stopped while writing it", file=sys.stderr, flush=True)
        if found.newest:
            print(f"resuming from {found.newest.name}: the interrupted run wrote it but stopped before recording "
                  "it, so its epoch is kept, not trained again", file=sys.stderr, flush=True)
    return found.newest


def _report_finished(session) -> None:
    """A resumed run with nothing left to train says its last epoch again, with its checkpoint's path.

    A sweep stopped after a trial's last report reached Ray Train but before Tune recorded it resumes that
    trial with nothing to train; without this report Tune would keep it at an earlier epoch (stopped early
    in the sweep's table, the wrong last checkpoint). The checkpoint is not reported again: Train holds it.
    """
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    ray.train.report({**session.history[-1], **({"checkpoint_path": checkpoint.path} if checkpoint else {})})


def _report_recovered(recovered: RecoveredCheckpoint, rank: int) -> None:
    """Report a recovered epoch as it was: the same metrics, the same checkpoint files under the same name."""
    import ray.train

    if rank != 0:
        ray.train.report(recovered.state["metrics"])
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in recovered.files.items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        ray.train.report(recovered.state["metrics"], checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=recovered.name)
