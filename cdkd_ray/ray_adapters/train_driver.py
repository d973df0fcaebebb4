"""Driver of one training run: datasets (+ teacher actor pool), TorchTrainer, run outputs."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

from cdkd_ray.core.config import to_dict
from cdkd_ray.core.storage import absolute_uri, pyarrow_filesystem, resolve
from cdkd_ray.core.errors import CdkdError
from cdkd_ray.core.experiment import ExperimentConfig

Mode = Literal["teacher", "distill"]


def teacher_stage_dataset(train_ds, cfg: ExperimentConfig, teacher_checkpoint: str):
    """Attach the frozen teacher as a Ray Data actor-pool stage (fp16 heatmaps and features)."""
    import ray.data

    from cdkd_ray.core.teacher import TeacherStage

    t = cfg.teacher
    return train_ds.map_batches(
        TeacherStage,
        fn_constructor_kwargs={"checkpoint": teacher_checkpoint, "tap": cfg.distill.teacher_tap,
                               "num_threads": max(1, int(t.num_cpus)), "channel_order": t.channel_order},
        compute=ray.data.ActorPoolStrategy(min_size=t.pool_min, max_size=t.pool_max),
        batch_size=t.batch_size, batch_format="numpy", num_cpus=t.num_cpus, num_gpus=t.num_gpus or None,
    )


def experiment_for_mode(cfg: ExperimentConfig, mode: Mode) -> ExperimentConfig:
    """train-teacher trains teacher.arch with the supervised loss only."""
    if mode == "teacher":
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=cfg.teacher.arch),
                                   distill=dataclasses.replace(cfg.distill, enabled=False))
    return cfg


def run_training(cfg: ExperimentConfig, mode: Mode, data_uri: str, storage_uri: str, name: str,
                 teacher_checkpoint: str | None = None, s3_endpoint: str | None = None,
                 ray_address: str | None = None, pid_dir: str | None = None, callbacks=None,
                 write_outputs: bool = True) -> dict:
    """Train (or resume) one run; returns its summary (best checkpoint and AP, output paths)."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from cdkd_ray.ray_adapters.pipeline import build_dataset
    from cdkd_ray.ray_adapters.runtime import ensure_ray

    cfg = experiment_for_mode(cfg, mode)
    data_uri = absolute_uri(data_uri)
    distilling = mode == "distill" and cfg.distill.enabled
    teacher_checkpoint = teacher_checkpoint or cfg.teacher.checkpoint
    teacher_checkpoint = absolute_uri(teacher_checkpoint) if teacher_checkpoint else None
    teacher_arch, teacher_deconv = None, 256
    if distilling:
        if not teacher_checkpoint:
            raise CdkdError("distillation needs a teacher: pass --teacher CKPT or teacher.checkpoint=... "
                            "(or distill.enabled=false for the plain baseline)")
        from cdkd_ray.core.models.loading import load_pose_model

        loaded = load_pose_model(teacher_checkpoint)  # fail fast, on the driver, with a clear message
        teacher_arch, teacher_deconv = loaded.model_cfg.arch, loaded.model_cfg.deconv_channels
    ensure_ray(ray_address)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # same seed -> same batches, run after run
    ctx.enable_progress_bars = False
    train_ds = build_dataset(data_uri, "train", cfg.data, s3_endpoint=s3_endpoint, shuffle_files=True)
    if distilling and cfg.teacher.placement == "pool":
        train_ds = teacher_stage_dataset(train_ds, cfg, teacher_checkpoint)
    val_ds = build_dataset(data_uri, "val", cfg.data, s3_endpoint=s3_endpoint)

    storage = resolve(storage_uri, s3_endpoint)
    storage.makedirs()
    run_config = ray.train.RunConfig(
        name=name,
        storage_path=storage.uri if not storage.is_remote else storage.path,
        storage_filesystem=pyarrow_filesystem(storage) if storage.is_remote else None,
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints,
                                                     checkpoint_score_attribute="AP", checkpoint_score_order="max"),
        failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
        callbacks=callbacks,
    )
    trainer = TorchTrainer(
        _train_fn,
        train_loop_config={"experiment": to_dict(cfg), "mode": mode, "data_uri": data_uri,
                           "s3_endpoint": s3_endpoint, "teacher_checkpoint": teacher_checkpoint,
                           "teacher_arch": teacher_arch, "teacher_deconv": teacher_deconv, "pid_dir": pid_dir},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if cfg.train.use_gpu else {})}),
        run_config=run_config,
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    if result.error:
        raise CdkdError(f"training run '{name}' failed: {result.error}")
    return summarize_run(result, storage.join(name), cfg, mode, name, write_outputs)


def _train_fn(config: dict) -> None:
    from cdkd_ray.ray_adapters.train_worker import train_loop_per_worker

    train_loop_per_worker(config)


def summarize_run(result, run_dir, cfg: ExperimentConfig, mode: Mode, name: str, write_outputs: bool = True) -> dict:
    """Write metrics.jsonl, TensorBoard events, curves.png and summary.json; return the summary."""
    from cdkd_ray.core.checkpoint import STATE_FILE
    from cdkd_ray.core.run_outputs import write_run_outputs

    best = result.get_best_checkpoint(metric="AP", mode="max") if result.best_checkpoints else result.checkpoint
    latest = result.checkpoint
    if latest is None:
        raise CdkdError(f"run '{name}' produced no checkpoint")
    fs = latest.filesystem
    with fs.open_input_file(f"{latest.path}/{STATE_FILE}") as f:
        state = json.loads(f.read())
    history = state["history"]
    best_path = best.path if best else latest.path
    with fs.open_input_file(f"{best_path}/{STATE_FILE}") as f:
        best_state = json.loads(f.read())
    outputs = write_run_outputs(history, run_dir, f"{name} ({mode}, {cfg.model.arch})") if write_outputs else {}
    as_uri = lambda path: f"s3://{path}" if run_dir.is_remote and not path.startswith("s3://") else path  # noqa: E731
    summary = {
        "name": name, "mode": "teacher" if mode == "teacher" else ("cdkd" if cfg.distill.enabled else "baseline"),
        "arch": cfg.model.arch, "epochs": len(history),
        "best_ap": best_state["metrics"].get("AP", 0.0), "best_epoch": best_state["epoch"],
        "best_checkpoint": as_uri(best_path), "latest_checkpoint": as_uri(latest.path),
        "final_ap": history[-1].get("AP", 0.0), "run_dir": run_dir.uri, **gt_loss_progress(history), **outputs,
    }
    run_dir.join("summary.json").write_bytes(json.dumps(summary, indent=1).encode())
    return summary


def gt_loss_progress(history: list[dict]) -> dict:
    """GT heatmap loss of the first and last epoch, and the last against predicting all-zero heatmaps."""
    first, last = history[0].get("loss_gt", float("nan")), history[-1].get("loss_gt", float("nan"))
    zeros = history[-1].get("loss_gt_zeros") or float("nan")
    return {"loss_gt_first": first, "loss_gt_last": last, "loss_gt_vs_zeros": last / zeros}


def summary_line(summary: dict) -> str:
    return (f"{summary['name']} [{summary['mode']}, {summary['arch']}]: best AP {summary['best_ap']:.4f} "
            f"at epoch {summary['best_epoch'] + 1}/{summary['epochs']} -> {summary['best_checkpoint']}")


def default_run_name(mode: str, cfg: ExperimentConfig) -> str:
    return {"teacher": "teacher"}.get(mode, "cdkd" if cfg.distill.enabled else "baseline")

