"""The per-worker training loop (Ray Train V2): CDKD or supervised, DDP, per-epoch COCO AP, checkpoints."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
import time

import numpy as np
import torch

from cdkd_ray.core.config import from_dict, to_dict
from cdkd_ray.core.geometry import normalize_images
from cdkd_ray.core.losses import CDKDLoss, DistillStudent, heatmap_mse
from cdkd_ray.core.models.inference import predict_keypoints
from cdkd_ray.core.models.pose_resnet import PoseResNet
from cdkd_ray.core.checkpoint import load_checkpoint, save_checkpoint
from cdkd_ray.core.evaluation import evaluate_keypoints, predictions_to_results
from cdkd_ray.core.experiment import ExperimentConfig

TRAINER_STATE_VERSION = 1
LOSS_TERMS = ("loss", "loss_gt", "loss_gt_zeros", "loss_inter", "loss_final")


def learning_rate(cfg, step: int, epoch: int) -> float:
    """Adam schedule of the field: linear warm-up over iterations, then step decay by epoch."""
    t = cfg.train
    warm = 1.0 if step >= t.warmup_iters else t.warmup_ratio + (1 - t.warmup_ratio) * step / max(1, t.warmup_iters)
    decay = t.lr_factor ** sum(epoch >= m for m in t.lr_steps)
    return t.lr * warm * decay


def batch_digest(digest, batch: dict) -> None:
    """Fold a batch's identity (image ids, crop centres/scales) into a running hash."""
    for key in ("image_id", "center", "scale"):
        digest.update(np.ascontiguousarray(batch[key].cpu().numpy()).tobytes())


def build_module(cfg: ExperimentConfig, mode: str, teacher_arch: str | None, teacher_deconv: int = 256) -> DistillStudent:
    torch.manual_seed(cfg.train.seed)  # the student starts identically for baseline and CDKD runs
    student = PoseResNet(cfg.model)
    distill = None
    if mode == "distill" and cfg.distill.enabled:
        distill = CDKDLoss(cfg.distill, cfg.model.arch, teacher_arch, cfg.model.deconv_channels, teacher_deconv)
    return DistillStudent(student, distill)


def evaluate(model: torch.nn.Module, cfg: ExperimentConfig, val_iter, gt: dict, device) -> dict:
    """COCO keypoint AP of the model over a whole val stream (rank 0)."""
    model.eval()
    parts: dict[str, list] = {k: [] for k in ("keypoints", "scores", "image_id", "box_score", "area")}
    for batch in val_iter:
        if len(batch["image_id"]) == 0:
            continue
        kpts, scores = predict_keypoints(model, batch["image"].to(device), batch["center"].numpy(),
                                         batch["scale"].numpy(), cfg.data.input_size, cfg.model.channel_order,
                                         cfg.data.flip_test, cfg.data.decode)
        for key, value in (("keypoints", kpts), ("scores", scores), ("image_id", batch["image_id"].numpy()),
                           ("box_score", batch["score"].numpy()), ("area", batch["area"].numpy())):
            parts[key].append(value)
    if not parts["image_id"]:
        return evaluate_keypoints(gt, [])
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    results = predictions_to_results(cat["keypoints"], cat["scores"], cat["image_id"], cat["box_score"], cat["area"])
    return evaluate_keypoints(gt, results)


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    cfg: ExperimentConfig = from_dict(ExperimentConfig, config["experiment"])
    mode: str = config["mode"]  # teacher | distill
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    if config.get("pid_dir"):  # lets fault-tolerance tests find (and kill) a worker process
        with open(os.path.join(config["pid_dir"], f"rank{rank}.pid"), "w") as f:
            f.write(str(os.getpid()))
    device = ray.train.torch.get_device()
    use_cuda = device.type == "cuda"

    teacher = None
    teacher_arch, teacher_deconv = config.get("teacher_arch"), config.get("teacher_deconv", 256)
    distilling = mode == "distill" and cfg.distill.enabled
    if distilling and cfg.teacher.placement == "worker":
        from cdkd_ray.core.teacher import Teacher

        teacher = Teacher(config["teacher_checkpoint"], cfg.distill.teacher_tap, str(device), cfg.teacher.channel_order)

    module = build_module(cfg, mode, teacher_arch, teacher_deconv)
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    start_epoch, step, history = 0, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            model_state, optimizer_state, trainer_state = load_checkpoint(directory)
        module.load_state_dict(model_state)
        if optimizer_state:
            optimizer.load_state_dict(optimizer_state)
        start_epoch, step = trainer_state["epoch"] + 1, trainer_state["step"]
        history = trainer_state.get("history", [])
    model = ray.train.torch.prepare_model(module) if world > 1 or use_cuda else module
    scaler = torch.amp.GradScaler("cuda") if use_cuda and cfg.train.amp else None
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if scaler else contextlib.nullcontext

    gt = None
    if rank == 0:
        from cdkd_ray.core.shard_reader import load_split_annotations

        gt = load_split_annotations(config["data_uri"], "val", config.get("s3_endpoint"))
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if rank == 0 else None

    for epoch in range(start_epoch, cfg.train.epochs):
        model.train()
        if teacher is not None:
            teacher.model.eval()
        sums = {k: 0.0 for k in LOSS_TERMS}
        steps, images_seen, started = 0, 0, time.perf_counter()
        digest = hashlib.sha1()
        progress = epoch / cfg.train.epochs
        for batch in train_shard.iter_torch_batches(batch_size=cfg.train.batch_size, drop_last=True):
            if cfg.train.max_steps_per_epoch and steps >= cfg.train.max_steps_per_epoch:
                break
            batch_digest(digest, batch)
            images = batch["image"].to(device)
            target, weight = batch["target"].to(device), batch["target_weight"].to(device)
            t_heat = t_feat = None
            if distilling:
                if teacher is not None:
                    t_heat, t_feat = teacher.infer(images)
                else:
                    t_heat, t_feat = batch["teacher_heatmaps"].to(device), batch["teacher_features"].to(device)
            lr = learning_rate(cfg, step, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast():
                loss, terms, _ = model(normalize_images(images, cfg.model.channel_order), target, weight,
                                       t_heat, t_feat, progress)
            optimizer.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, step {steps}")
            terms["loss_gt_zeros"] = heatmap_mse(torch.zeros_like(target), target, weight)  # predicting nothing
            for key in LOSS_TERMS:
                if key in terms:
                    sums[key] += float(terms[key])
            steps += 1
            step += 1
            images_seen += len(images)
        seconds = time.perf_counter() - started
        metrics = {"epoch": epoch, "step": step, "lr": lr if steps else learning_rate(cfg, step, epoch),
                   "steps": steps, "images_per_s": images_seen * world / max(seconds, 1e-9),
                   "epoch_seconds": seconds, "data_digest": digest.hexdigest(),
                   "node_id": ray.get_runtime_context().get_node_id()}
        metrics.update({k: sums[k] / steps for k in LOSS_TERMS if steps and (k in ("loss", "loss_gt", "loss_gt_zeros") or distilling)})
        is_eval_epoch = (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs
        if rank == 0 and is_eval_epoch:
            raw = model.module.student if hasattr(model, "module") else model.student
            metrics.update(evaluate(raw, cfg, val_shard.iter_torch_batches(batch_size=64), gt, device))
        metrics.setdefault("AP", history[-1].get("AP", 0.0) if history else 0.0)
        # What schedulers rank: val AP, ties (common early in training) broken by the lower GT loss.
        metrics["score"] = metrics["AP"] - 1e-3 * metrics.get("loss_gt", 0.0)
        if rank == 0:
            history.append(dict(metrics))
            unwrapped = model.module if hasattr(model, "module") else model
            state = {"version": TRAINER_STATE_VERSION, "epoch": epoch, "step": step, "mode": mode,
                     "metrics": metrics, "history": history, "config": to_dict(cfg),
                     "teacher": config.get("teacher_checkpoint")}
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, unwrapped.state_dict(), optimizer.state_dict(), state)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"checkpoint_epoch{epoch:04d}")
        else:
            ray.train.report(metrics)
