"""Driver of one training run: datasets (+ teacher actor pool), TorchTrainer, run outputs."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Iterator

from cdkd_ray.core.bad_images import BadImageRecord
from cdkd_ray.core.checkpoint import STATE_FILE
from cdkd_ray.core.config import to_dict
from cdkd_ray.core.errors import CdkdError
from cdkd_ray.core.experiment import ExperimentConfig, RunKind, experiment_for, resolve_teacher_placement
from cdkd_ray.core.lease import LeaseHeld, acquire_lease, kept
from cdkd_ray.core.names import check_name
from cdkd_ray.core.run_identity import claim_run, run_identity
from cdkd_ray.core.run_outputs import write_run_outputs
from cdkd_ray.core.selection import SCORE_KEY
from cdkd_ray.core.shards import verified_manifests
from cdkd_ray.core.storage import Location, absolute_uri, pyarrow_filesystem, resolve
from cdkd_ray.ray_adapters.teacher_servers import start_teacher_servers, stop_teacher_servers

RUN_LEASE = ".writer-lease.json"  # in the run's folder while a driver trains it
RUN_LEASE_S = 60.0  # refreshed every 20 s; a driver killed on another host blocks the run this long


def _teacher_shape(kind: RunKind, teacher_checkpoint: str | None) -> tuple[str | None, int]:
    """(arch, deconv channels) of the teacher a CDKD run distils from; fails fast, on the driver."""
    if not kind.distills:
        return None, 256
    if not teacher_checkpoint:
        raise CdkdError("distillation needs a teacher: pass --teacher CKPT or teacher.checkpoint=... "
                        "(or distill.enabled=false for the plain baseline)")
    from cdkd_ray.core.models.loading import load_pose_model

    loaded = load_pose_model(teacher_checkpoint)
    return loaded.model_cfg.arch, loaded.model_cfg.deconv_channels


def _datasets(cfg: ExperimentConfig, kind: RunKind, data_uri: str, teacher_checkpoint: str | None,
              s3_endpoint: str | None, bad_images: BadImageRecord) -> dict:
    import ray.data

    from cdkd_ray.ray_adapters.pipeline import build_dataset, with_teacher_pool

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # same seed -> same batches, run after run
    ctx.enable_progress_bars = False
    train = build_dataset(data_uri, "train", cfg.data, s3_endpoint=s3_endpoint, shuffle_files=True,
                          bad_images=bad_images)
    if kind.distills and cfg.teacher.placement == "pool" and not cfg.teacher.persistent:
        train = with_teacher_pool(train, cfg, teacher_checkpoint)
    return {"train": train, "val": build_dataset(data_uri, "val", cfg.data, s3_endpoint=s3_endpoint,
                                                 bad_images=bad_images)}


def _run_config(cfg: ExperimentConfig, name: str, storage: Location, callbacks):
    import ray.train

    return ray.train.RunConfig(
        name=name,
        storage_path=storage.uri if not storage.is_remote else storage.path,
        storage_filesystem=pyarrow_filesystem(storage) if storage.is_remote else None,
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                                     checkpoint_score_attribute=SCORE_KEY,
                                                     checkpoint_score_order="max"),
        failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
        callbacks=callbacks,
    )


def free_run_name(storage: Location, name: str) -> str:
    """`name`, or `name-2`, `name-3`, ... : the first that no run in `storage` uses yet."""
    candidate, n = name, 1
    while storage.join(candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def _claim(cfg: ExperimentConfig, kind: RunKind, data_uri: str, storage: Location, name: str,
           teacher_checkpoint: str | None, s3_endpoint: str | None) -> None:
    """Check the shards against their manifests and that `name` is this run (new, or resumable); record it."""
    labelled_only = ("train",) if cfg.data.detections else ("train", "val")  # the parts the run will read
    manifests = verified_manifests(data_uri, ("train", "val"), s3_endpoint, hashes=cfg.data.verify_shards,
                                   labelled_only=labelled_only)
    claim_run(storage.join(name), name, run_identity(cfg, kind, data_uri, manifests, teacher_checkpoint))


def run_training(cfg: ExperimentConfig, kind: RunKind, data_uri: str, storage_uri: str, name: str,
                 teacher_checkpoint: str | None = None, s3_endpoint: str | None = None,
                 ray_address: str | None = None, pid_dir: str | None = None, callbacks=None,
                 write_outputs: bool = True, new_run: bool = False, lease_wait_s: float = 5.0) -> dict:
    """Train (or resume) one run of `kind`; returns its summary (best checkpoint and AP, output paths).

    Re-running a name resumes it only if the run is the same (see run_identity); `new_run` starts a fresh
    run beside it under the first free `name-N`. One driver trains a run at a time (see _run_lease).
    """
    cfg, data_uri = experiment_for(kind, cfg), absolute_uri(data_uri)
    teacher_checkpoint = teacher_checkpoint or cfg.teacher.checkpoint
    teacher_checkpoint = absolute_uri(teacher_checkpoint) if teacher_checkpoint and kind.distills else None
    teacher = (teacher_checkpoint, *_teacher_shape(kind, teacher_checkpoint))
    storage = resolve(storage_uri, s3_endpoint)
    storage.makedirs()
    name = free_run_name(storage, check_name(name, "run name")) if new_run else check_name(name, "run name")
    with _run_lease(storage, name, lease_wait_s):
        _claim(cfg, kind, data_uri, storage, name, teacher_checkpoint, s3_endpoint)
        return _train(cfg, kind, data_uri, storage, name, s3_endpoint, teacher, ray_address=ray_address,
                      pid_dir=pid_dir, callbacks=callbacks, write_outputs=write_outputs)


@contextmanager
def _run_lease(storage: Location, name: str, wait_s: float) -> Iterator[None]:
    """Hold the run's lease (RUN/.writer-lease.json) while training it, or refuse naming the driver that does.

    Two drivers of one run (a job submitted twice) both trained it and wrote its checkpoints in turn. A
    lease whose driver on this host is gone (killed) is taken over at once, another host's once it expires
    (RUN_LEASE_S); a resumed Tune trial waits that long, as its old driver may have run on another node.
    A run that fails before writing anything leaves no folder.
    """
    run_dir = storage.join(name)
    new = not run_dir.exists()
    try:
        lease = acquire_lease(run_dir.join(RUN_LEASE), RUN_LEASE_S, break_if_gone=True, wait_s=wait_s)
    except LeaseHeld as held:
        raise CdkdError(f"run '{name}' in {storage.uri} is being trained by another driver ({held}): wait for "
                        "it to end, or pass --new-run or another --name") from None
    try:
        with kept(lease):
            yield
    finally:
        if new and not run_dir.listdir_names():
            run_dir.remove()


def _train(cfg: ExperimentConfig, kind: RunKind, data_uri: str, storage: Location, name: str, s3_endpoint: str | None,
           teacher: tuple, *, ray_address: str | None, pid_dir: str | None, callbacks, write_outputs: bool) -> dict:
    """The claimed run's Train fit and its outputs; `teacher` is (checkpoint, arch, deconv width)."""
    from cdkd_ray.ray_adapters.runtime import ensure_ray

    teacher_checkpoint, teacher_arch, teacher_deconv = teacher
    ensure_ray(ray_address)
    cfg = _place_teacher(cfg, kind)
    loop_config = {"experiment": to_dict(cfg), "kind": kind.value, "data_uri": data_uri, "s3_endpoint": s3_endpoint,
                   "teacher_checkpoint": teacher_checkpoint, "teacher_arch": teacher_arch,
                   "teacher_deconv": teacher_deconv, "pid_dir": pid_dir, "run_dir": storage.join(name).uri,
                   "bad_images": BadImageRecord.in_run(storage.join(name), s3_endpoint)}
    if kind.distills and cfg.teacher.placement == "pool" and cfg.teacher.persistent:
        # not awaited: they start beside the workers, which send them each batch's crops
        loop_config["teacher_actors"] = start_teacher_servers(cfg, teacher_checkpoint)
        print(f"teacher pool: {len(loop_config['teacher_actors'])} persistent actor(s) (teacher.pool_max), kept for "
              "the whole run", file=sys.stderr, flush=True)
    try:
        result = _fit(cfg, kind, loop_config, storage, name, callbacks)
    finally:  # the teachers live for one run: a kept actor holds a process until Ray shuts down
        stop_teacher_servers(loop_config.get("teacher_actors", []))
    if result.error:
        raise CdkdError(f"training run '{name}' failed: {result.error}")
    return summarize_run(result, storage.join(name), cfg, kind, name, write_outputs)


def _fit(cfg: ExperimentConfig, kind: RunKind, loop_config: dict, storage: Location, name: str, callbacks):
    """TorchTrainer.fit() of one run, with its datasets, under the resource watch."""
    import ray.train
    from ray.train.torch import TorchTrainer

    datasets = _datasets(cfg, kind, loop_config["data_uri"], loop_config["teacher_checkpoint"],
                         loop_config["s3_endpoint"], loop_config["bad_images"])
    trainer = TorchTrainer(
        _train_fn,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})}),
        run_config=_run_config(cfg, name, storage, callbacks),
        datasets=datasets,
        dataset_config=data_config(cfg.train.num_workers),
    )
    return _fit_watched(trainer, name, cfg.train.resource_wait_s)


def data_config(num_workers: int):
    """The training set split across the workers; a lone worker reads it whole.

    A split runs the dataset in a split-coordinator actor of its own, which a single worker does not
    need: unsplit, its data executes in the worker's process and the run starts one process fewer.
    """
    import ray.train

    return ray.train.DataConfig(datasets_to_split=["train"] if num_workers > 1 else [])


def _place_teacher(cfg: ExperimentConfig, kind: RunKind) -> ExperimentConfig:
    """The config with teacher.placement resolved (auto -> pool or worker, from the cluster's GPUs), logged."""
    import dataclasses
    import logging

    import ray

    if not kind.distills:
        return cfg
    placement, why = resolve_teacher_placement(cfg, ray.cluster_resources().get("GPU", 0.0))
    logging.getLogger("cdkd_ray.train").info("teacher placement: %s (%s)", placement, why)
    print(f"teacher placement: {placement} ({why})", file=sys.stderr, flush=True)
    return dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, placement=placement))


def _fit_watched(trainer, name: str, limit_s: float | None):
    """trainer.fit(), failed with the missing bundles named if it waits longer than `limit_s` for resources.

    The watch interrupts the driver's main thread as Ctrl-C would; Ray Train then aborts the run.
    """
    from cdkd_ray.ray_adapters.resource_watch import ResourceWatch

    watch = ResourceWatch(limit_s)
    try:
        with watch:
            result = trainer.fit()
    except (KeyboardInterrupt, SystemExit):
        if not watch.missing:
            raise
        result = None
    if watch.missing:
        raise CdkdError(f"run '{name}' waited more than {limit_s:g} s for resources the cluster never gave: "
                        f"{'; '.join(watch.missing)}. Check the job with `cdkd-ray preflight`; raise "
                        "train.resource_wait_s if the autoscaler is just slow")
    return result


def _train_fn(config: dict) -> None:
    from cdkd_ray.ray_adapters.train_worker import train_loop_per_worker

    train_loop_per_worker(config)


def summarize_run(result, run_dir: Location, cfg: ExperimentConfig, kind: RunKind, name: str,
                  write_outputs: bool = True) -> dict:
    """Write metrics.jsonl, TensorBoard events, curves.png and summary.json; return the summary."""
    latest = result.checkpoint
    if latest is None:
        raise CdkdError(f"run '{name}' produced no checkpoint")
    best = result.get_best_checkpoint(metric=SCORE_KEY, mode="max") if result.best_checkpoints else None
    best_path = best.path if best else latest.path

    def state_of(path: str) -> dict:
        with latest.filesystem.open_input_file(f"{path}/{STATE_FILE}") as f:
            return json.loads(f.read())

    history, best_state = state_of(latest.path)["history"], state_of(best_path)
    outputs = write_run_outputs(history, run_dir, f"{name} ({kind.value}, {cfg.model.arch})") if write_outputs else {}
    as_uri = lambda path: f"s3://{path}" if run_dir.is_remote and not path.startswith("s3://") else path  # noqa: E731
    summary = {
        "name": name, "kind": kind.value, "arch": cfg.model.arch, "epochs": len(history),
        "best_ap": best_state["metrics"].get("AP", 0.0), "best_epoch": best_state["epoch"],
        "best_checkpoint": as_uri(best_path), "latest_checkpoint": as_uri(latest.path),
        "final_ap": history[-1].get("AP", 0.0), "run_dir": run_dir.uri, **gt_loss_progress(history),
        "teacher_placement": cfg.teacher.placement if kind.distills else None,
        "bad_images_skipped": max((h.get("bad_images_skipped", 0) for h in history), default=0), **outputs,
    }
    run_dir.join("summary.json").write_bytes(json.dumps(summary, indent=1).encode())
    return summary


def gt_loss_progress(history: list[dict]) -> dict:
    """GT heatmap loss of the first and last epoch, the last against predicting all-zero heatmaps, and the last val loss."""
    first, last = history[0].get("loss_gt", float("nan")), history[-1].get("loss_gt", float("nan"))
    zeros = history[-1].get("loss_gt_zeros") or float("nan")
    val = [h["val_loss_gt"] for h in history if "val_loss_gt" in h]
    return {"loss_gt_first": first, "loss_gt_last": last, "loss_gt_vs_zeros": last / zeros,
            "val_loss_gt_last": val[-1] if val else float("nan")}


def summary_line(summary: dict) -> str:
    return (f"{summary['name']} [{summary['kind']}, {summary['arch']}]: best AP {summary['best_ap']:.4f} "
            f"at epoch {summary['best_epoch'] + 1}/{summary['epochs']} -> {summary['best_checkpoint']}")
