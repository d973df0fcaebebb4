"""The training step, epoch and evaluation, on any iterable of batches, on CPU or CUDA, with AMP. No Ray.

A batch is a dict of tensors per the training-batch contract: `image` uint8 [N,3,H,W] RGB, `joints`
[N,K,3] (x, y in crop pixels, labelled flag; the step renders the heatmap targets from them on its
device), and for distillation with the teacher outside the step `teacher_heatmaps`/`teacher_features`;
`image_id`, `center`, `scale` identify the crops. The Ray Train worker feeds it Ray Data shards;
benchmarks and tests feed it plain iterables.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from cdkd_ray.core.checkpoint import load_checkpoint
from cdkd_ray.core.config import to_dict
from cdkd_ray.core.experiment import ExperimentConfig, RunKind
from cdkd_ray.core.losses import CDKDLoss, DistillStudent, heatmap_mse
from cdkd_ray.core.codec import heatmaps_to_keypoints
from cdkd_ray.core.models.inference import normalize_images, predict_heatmaps
from cdkd_ray.core.models.pose_resnet import PoseResNet
from cdkd_ray.core.selection import EPOCHS_KEY, SCORE_KEY, selection_score
from cdkd_ray.core.shuffle_buffer import shuffled_batches
from cdkd_ray.core.targets import batch_targets
from cdkd_ray.core.teacher import Teacher

TRAINER_STATE_VERSION = 1
LOSS_TERMS = ("loss", "loss_gt", "loss_gt_zeros", "loss_inter", "loss_final")
SUPERVISED_TERMS = ("loss", "loss_gt", "loss_gt_zeros")


def learning_rate(cfg: ExperimentConfig, step: int, epoch: int) -> float:
    """Adam schedule of the field: linear warm-up over iterations, then step decay by epoch."""
    t = cfg.train
    warm = 1.0 if step >= t.warmup_iters else t.warmup_ratio + (1 - t.warmup_ratio) * step / max(1, t.warmup_iters)
    decay = t.lr_factor ** sum(epoch >= m for m in t.lr_steps)
    return t.lr * warm * decay


def build_module(cfg: ExperimentConfig, kind: RunKind, teacher_arch: str | None = None,
                 teacher_deconv: int = 256) -> DistillStudent:
    """The unit trained (student + train-only CDKD modules); seeded, so baseline and CDKD start alike."""
    torch.manual_seed(cfg.train.seed)
    student = PoseResNet(cfg.model)
    distill = None
    if kind.distills:
        distill = CDKDLoss(cfg.distill, cfg.model.arch, teacher_arch, cfg.model.deconv_channels, teacher_deconv)
    return DistillStudent(student, distill)


def amp_for(device: torch.device, cfg: ExperimentConfig) -> tuple[Callable, torch.amp.GradScaler | None]:
    """(autocast context factory, gradient scaler or None): mixed precision on CUDA when train.amp."""
    if device.type != "cuda" or not cfg.train.amp:
        return contextlib.nullcontext, None
    dtype = getattr(torch, cfg.train.amp_dtype)
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


@dataclass
class TrainingSession:
    """Everything one worker's training carries from step to step."""

    cfg: ExperimentConfig
    kind: RunKind
    module: DistillStudent  # unwrapped; `model` may be its DDP wrapper
    optimizer: torch.optim.Optimizer
    device: torch.device
    teacher: Teacher | None = None  # in-step teacher (placement=worker); None when batches carry its outputs
    model: torch.nn.Module | None = None
    start_epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    autocast: Callable = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None

    def __post_init__(self) -> None:
        self.model = self.model or self.module
        self.autocast, self.scaler = amp_for(self.device, self.cfg)


def new_session(cfg: ExperimentConfig, kind: RunKind, device: torch.device | str = "cpu",
                teacher_checkpoint: str | None = None, teacher_arch: str | None = None,
                teacher_deconv: int = 256) -> TrainingSession:
    """A fresh session; the teacher runs inside the step when distilling with teacher.placement=worker."""
    device = torch.device(device)
    teacher = None
    if kind.distills and cfg.teacher.placement == "worker":
        teacher = Teacher(teacher_checkpoint, cfg.distill.teacher_tap, str(device), cfg.teacher.channel_order)
    module = build_module(cfg, kind, teacher_arch, teacher_deconv).to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    return TrainingSession(cfg, kind, module, optimizer, device, teacher)


def restore_session(session: TrainingSession, checkpoint_dir: str) -> None:
    """Continue from a checkpoint: weights, optimizer, the next epoch, the step and the history."""
    apply_checkpoint(session, *load_checkpoint(checkpoint_dir))


def apply_checkpoint(session: TrainingSession, model_state: dict, optimizer_state: dict | None,
                     trainer_state: dict) -> None:
    """Put a decoded checkpoint into the session (see restore_session)."""
    session.module.load_state_dict(model_state)
    if optimizer_state:
        session.optimizer.load_state_dict(optimizer_state)
    session.start_epoch, session.step = trainer_state["epoch"] + 1, trainer_state["step"]
    session.history = trainer_state.get("history", [])


def train_step(session: TrainingSession, batch: dict, epoch: int) -> dict[str, float]:
    """One optimiser step on one batch; returns the loss terms (floats)."""
    cfg, device = session.cfg, session.device
    images = batch["image"].to(device)
    target, weight = batch_targets(batch["joints"].to(device), cfg.data)
    t_heat = t_feat = None
    if session.kind.distills:
        if session.teacher is not None:
            t_heat, t_feat = session.teacher.infer(images)
        else:
            t_heat, t_feat = batch["teacher_heatmaps"].to(device), batch["teacher_features"].to(device)
    for group in session.optimizer.param_groups:
        group["lr"] = learning_rate(cfg, session.step, epoch)
    with session.autocast():
        loss, terms, _ = session.model(normalize_images(images, cfg.model.channel_order), target, weight,
                                       t_heat, t_feat, epoch / cfg.train.epochs)
    session.optimizer.zero_grad(set_to_none=True)
    if session.scaler:
        session.scaler.scale(loss).backward()
        session.scaler.step(session.optimizer)
        session.scaler.update()
    else:
        loss.backward()
        session.optimizer.step()
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, step {session.step}")
    session.step += 1
    terms["loss_gt_zeros"] = heatmap_mse(torch.zeros_like(target), target, weight)  # the loss of predicting nothing
    return {key: float(terms[key]) for key in LOSS_TERMS if key in terms}


def batch_digest(digest, batch: dict) -> None:
    """Fold a batch's identity (image ids, crop centres/scales) into a running hash."""
    for key in ("image_id", "center", "scale"):
        digest.update(np.ascontiguousarray(batch[key].cpu().numpy()).tobytes())


def fit_epoch(session: TrainingSession, batches: Iterable[dict], epoch: int, world_size: int = 1) -> dict:
    """Train one epoch over `batches`; returns the epoch's metrics (mean loss terms, speed, data digest)."""
    session.model.train()
    if session.teacher is not None:
        session.teacher.model.eval()
    sums: dict[str, float] = {}
    steps, images_seen, started, digest = 0, 0, time.perf_counter(), hashlib.sha1()
    limit, waited, asked, first = session.cfg.train.max_steps_per_epoch, 0.0, started, None
    for batch in batches:
        waited += time.perf_counter() - asked
        first = waited if first is None else first
        if limit and steps >= limit:
            break
        batch_digest(digest, batch)
        for key, value in train_step(session, batch, epoch).items():
            sums[key] = sums.get(key, 0.0) + value
        steps += 1
        images_seen += len(batch["image"])
        asked = time.perf_counter()
    seconds = time.perf_counter() - started
    metrics = {"epoch": epoch, "step": session.step, "lr": learning_rate(session.cfg, max(session.step - 1, 0), epoch),
               "steps": steps, "images_per_s": images_seen * world_size / max(seconds, 1e-9),
               "epoch_seconds": seconds, "data_wait_seconds": waited,
               "first_batch_seconds": first or 0.0, "finished_at": time.time(), "data_digest": digest.hexdigest()}
    kept = LOSS_TERMS if session.kind.distills else SUPERVISED_TERMS
    metrics.update({k: sums[k] / steps for k in kept if steps and k in sums})
    return metrics


def is_eval_epoch(cfg: ExperimentConfig, epoch: int) -> bool:
    return (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs


def evaluate(model: torch.nn.Module, cfg: ExperimentConfig, batches: Iterable[dict], gt: dict,
             device: torch.device | str = "cpu") -> dict:
    """COCO keypoint AP stats of `model` (the bare student) over a whole val stream, and its val GT loss.

    `val_loss_gt` is the heatmap MSE of the plain (un-flipped) forward, the same measure as the training
    `loss_gt`, so the two show when a model starts to over-fit; it is left out when val batches carry no
    joints or come from detections.
    """
    from cdkd_ray.core.evaluation import evaluate_keypoints, predictions_to_results  # pycocotools: only to evaluate

    model.eval()
    parts: dict[str, list] = {k: [] for k in ("keypoints", "scores", "image_id", "box_score", "area")}
    loss_sum, loss_count = 0.0, 0
    for batch in batches:
        if len(batch["image_id"]) == 0:
            continue
        plain, heatmaps = predict_heatmaps(model, batch["image"].to(device), cfg.model.channel_order,
                                           cfg.data.flip_test, with_plain=True)
        if "joints" in batch and not cfg.data.detections:
            loss = heatmap_mse(plain, *batch_targets(batch["joints"].to(device), cfg.data))
            loss_sum, loss_count = loss_sum + float(loss) * len(plain), loss_count + len(plain)
        kpts, scores = heatmaps_to_keypoints(heatmaps.cpu().numpy(), batch["center"].numpy(), batch["scale"].numpy(),
                                             cfg.data.input_size, cfg.data.decode)
        for key, value in (("keypoints", kpts), ("scores", scores), ("image_id", batch["image_id"].numpy()),
                           ("box_score", batch["score"].numpy()), ("area", batch["area"].numpy())):
            parts[key].append(value)
    val_loss = {"val_loss_gt": loss_sum / loss_count} if loss_count else {}
    if not parts["image_id"]:
        return {**evaluate_keypoints(gt, []), **val_loss}
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    results = predictions_to_results(cat["keypoints"], cat["scores"], cat["image_id"], cat["box_score"], cat["area"])
    return {**evaluate_keypoints(gt, results), **val_loss}


def close_epoch(session: TrainingSession, metrics: dict) -> dict:
    """Carry AP forward on epochs without evaluation, add the selection score and the epochs trained so far,
    append to the history."""
    metrics[EPOCHS_KEY] = metrics["epoch"] + 1
    metrics.setdefault("AP", session.history[-1].get("AP", 0.0) if session.history else 0.0)
    metrics[SCORE_KEY] = selection_score(metrics)
    session.history.append(dict(metrics))
    return metrics


def trainer_state(session: TrainingSession, metrics: dict, teacher_checkpoint: str | None) -> dict:
    """What a checkpoint's trainer_state.json records."""
    return {"version": TRAINER_STATE_VERSION, "epoch": metrics["epoch"], "step": session.step,
            "kind": session.kind.value, "metrics": metrics, "history": session.history,
            "config": to_dict(session.cfg), "teacher": teacher_checkpoint}


def torch_batches(batches: Iterable[dict[str, np.ndarray]], batch_size: int, buffer: int = 0,
                  seed: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Re-batch numpy instance dicts (e.g. from build_instances) into full torch batches of `batch_size`,
    drawn at random from a shuffle buffer of `buffer` instances if `buffer` > 0 (see shuffled_batches)."""
    for batch in shuffled_batches(batches, batch_size, buffer, seed):
        yield {key: torch.from_numpy(column) for key, column in batch.items()}
