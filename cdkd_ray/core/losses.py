"""CDKD losses: GT heatmap MSE + intermediate distillation with channel dropout + final distillation.

L = L_gt(S, GT) + alpha * L_inter + beta * L_final
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cdkd_ray.core.errors import ConfigError
from cdkd_ray.core.models.pose_resnet import TAP_STRIDES, TAPS, tap_channels


@dataclass
class DistillConfig:
    enabled: bool = True
    alpha: float = 0.001  # weight of the intermediate (feature) loss: raw feature MSE is ~1000x the heatmap MSE
    beta: float = 1.0  # weight of the final (heatmap) loss
    student_tap: str = "layer4"
    teacher_tap: str = "layer4"
    dropout_p: float = 0.2  # per-sample channel dropout on the student feature
    dropout_mode: Literal["dropout2d", "masked_generation"] = "dropout2d"
    keypoint_dropout_p: float = 0.0  # drop whole keypoint channels from the final loss
    decay: bool = False  # linear decay of alpha and beta to 0 over training
    align_bn: bool = True
    resize: Literal["error", "student_to_teacher"] = "error"
    final_use_target_weight: bool = False

    def validate(self, where: str = "distill") -> None:
        for name in ("student_tap", "teacher_tap"):
            if getattr(self, name) not in TAPS:
                raise ConfigError(f"{where}.{name}: unknown tap '{getattr(self, name)}' (choose from {', '.join(TAPS)})")
        for name in ("dropout_p", "keypoint_dropout_p"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name} must be within [0, 1)")
        if self.alpha < 0 or self.beta < 0:
            raise ConfigError(f"{where}.alpha and {where}.beta must be >= 0")
        if self.resize == "error" and TAP_STRIDES[self.student_tap] != TAP_STRIDES[self.teacher_tap]:
            raise ConfigError(
                f"{where}: student tap {self.student_tap} (stride {TAP_STRIDES[self.student_tap]}) and teacher tap "
                f"{self.teacher_tap} (stride {TAP_STRIDES[self.teacher_tap]}) differ in spatial size; pick taps of "
                f"the same stride or set {where}.resize=student_to_teacher")


def heatmap_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """SimpleBaseline's JointsMSELoss: 0.5 * mean squared error of weighted heatmaps."""
    if weight is not None:
        w = weight[..., None, None]
        pred, target = pred * w, target * w
    return 0.5 * F.mse_loss(pred, target)


def channel_dropout_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample keep mask [N,C,1,1]: each channel dropped independently with probability p."""
    return (torch.rand(x.shape[0], x.shape[1], 1, 1, device=x.device) >= p).to(x.dtype)


class FeatureAlign(nn.Module):
    """Train-only: student feature -> teacher channels (1x1 conv + BN), optionally a generator."""

    def __init__(self, in_ch: int, out_ch: int, bn: bool = True, generator: bool = False):
        super().__init__()
        self.align = nn.Conv2d(in_ch, out_ch, 1, bias=not bn)
        self.bn = nn.BatchNorm2d(out_ch) if bn else nn.Identity()
        self.generator = nn.Sequential(
            nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(out_ch, out_ch, 3, padding=1),
        ) if generator else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.align(x))
        return self.generator(x) if self.generator is not None else x


class CDKDLoss(nn.Module):
    """Holds the train-only modules and computes every loss term."""

    def __init__(self, cfg: DistillConfig, student_arch: str, teacher_arch: str, deconv_channels: int = 256,
                 teacher_deconv_channels: int = 256):
        super().__init__()
        self.cfg = cfg
        self.feature_align = FeatureAlign(
            tap_channels(student_arch, cfg.student_tap, deconv_channels),
            tap_channels(teacher_arch, cfg.teacher_tap, teacher_deconv_channels),
            bn=cfg.align_bn, generator=cfg.dropout_mode == "masked_generation")

    def weights(self, progress: float) -> tuple[float, float]:
        """(alpha, beta) at a training progress in [0, 1]."""
        factor = max(0.0, 1.0 - progress) if self.cfg.decay else 1.0
        return self.cfg.alpha * factor, self.cfg.beta * factor

    def drop_channels(self, feature: torch.Tensor) -> torch.Tensor:
        p = self.cfg.dropout_p
        if not self.training or p <= 0:
            return feature
        if self.cfg.dropout_mode == "dropout2d":
            return F.dropout2d(feature, p, training=True)  # whole channels per sample, rescaled by 1/(1-p)
        return feature * channel_dropout_mask(feature, p)  # masked generation: zeroed, the generator fills in

    def intermediate(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
        aligned = self.feature_align(self.drop_channels(student_feature))
        if aligned.shape[-2:] != teacher_feature.shape[-2:]:
            if self.cfg.resize != "student_to_teacher":
                raise ConfigError(f"feature sizes differ: student {tuple(aligned.shape[-2:])} vs teacher "
                                  f"{tuple(teacher_feature.shape[-2:])} (set distill.resize=student_to_teacher)")
            aligned = F.interpolate(aligned, size=teacher_feature.shape[-2:], mode="bilinear", align_corners=False)
        return F.mse_loss(aligned, teacher_feature.to(aligned.dtype))

    def final(self, student_heatmaps: torch.Tensor, teacher_heatmaps: torch.Tensor,
              target_weight: torch.Tensor) -> torch.Tensor:
        weight = target_weight if self.cfg.final_use_target_weight else torch.ones_like(target_weight)
        if self.training and self.cfg.keypoint_dropout_p > 0:
            weight = weight * (torch.rand_like(weight) >= self.cfg.keypoint_dropout_p).to(weight.dtype)
        return heatmap_mse(student_heatmaps, teacher_heatmaps.to(student_heatmaps.dtype), weight)

    def forward(self, student_heatmaps: torch.Tensor, student_feature: torch.Tensor | None, target: torch.Tensor,
                target_weight: torch.Tensor, teacher_heatmaps: torch.Tensor | None = None,
                teacher_feature: torch.Tensor | None = None, progress: float = 0.0) -> tuple[torch.Tensor, dict]:
        gt = heatmap_mse(student_heatmaps, target, target_weight)
        terms = {"loss_gt": gt.detach()}
        if not self.cfg.enabled:
            terms["loss"] = gt.detach()
            return gt, terms
        alpha, beta = self.weights(progress)
        inter = self.intermediate(student_feature, teacher_feature)
        final = self.final(student_heatmaps, teacher_heatmaps, target_weight)
        total = gt + alpha * inter + beta * final
        terms.update(loss_inter=inter.detach(), loss_final=final.detach(), loss=total.detach(),
                     alpha=torch.tensor(alpha), beta=torch.tensor(beta))
        return total, terms


class DistillStudent(nn.Module):
    """The unit trained under DDP: the student plus the train-only CDKD modules.

    Its state_dict has `student.*` (exactly the baseline's parameters) and `distill.*` (dropped
    at export).
    """

    def __init__(self, student: nn.Module, distill: CDKDLoss | None):
        super().__init__()
        self.student = student
        self.distill = distill

    @property
    def taps(self) -> tuple[str, ...]:
        return (self.distill.cfg.student_tap,) if self.distill is not None and self.distill.cfg.enabled else ()

    def forward(self, images: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor,
                teacher_heatmaps: torch.Tensor | None = None, teacher_feature: torch.Tensor | None = None,
                progress: float = 0.0):
        """Returns (loss, terms, student heatmaps); all in one forward so DDP syncs align too."""
        taps = self.taps
        if taps:
            heatmaps, feats = self.student(images, taps)
            feature = feats[taps[0]]
        else:
            heatmaps, feature = self.student(images), None
        if self.distill is None:
            loss = heatmap_mse(heatmaps, target, target_weight)
            return loss, {"loss_gt": loss.detach(), "loss": loss.detach()}, heatmaps
        loss, terms = self.distill(heatmaps, feature, target, target_weight, teacher_heatmaps, teacher_feature, progress)
        return loss, terms, heatmaps
