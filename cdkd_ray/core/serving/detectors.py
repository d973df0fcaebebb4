"""Person detectors in front of the pose model: a torchvision detection checkpoint, or an ONNX detector.

Nothing is downloaded or shipped: users bring the weights (torchvision's COCO detection checkpoints, or
an mmdeploy/rtmlib ONNX export of RTMDet/YOLOX with the common `dets [1,N,5] + labels [1,N]` outputs).
Every detector answers `detect(image_bgr) -> [M,5]` boxes (x, y, w, h, score) of people, best first.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np
import torch

from cdkd_ray.core.errors import CheckpointError, ConfigError
from cdkd_ray.core.storage import resolve

TORCHVISION_DETECTORS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
                         "fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "ssdlite320_mobilenet_v3_large")
TORCHVISION_PERSON = 1  # torchvision's COCO detection labels count from background = 0


@dataclass
class DetectorConfig:
    kind: Literal["none", "torchvision", "onnx"] = "none"
    checkpoint: str = ""  # a torchvision state_dict file (weights_only) or an .onnx file; a path or s3:// URI
    arch: str = "fasterrcnn_mobilenet_v3_large_320_fpn"  # torchvision only
    score_threshold: float = 0.5
    max_persons: int = 32
    person_label: int = -1  # -1: the detector kind's convention (torchvision 1, ONNX exports 0)
    input_size: tuple[int, int] = (640, 640)  # ONNX only: H, W the export expects (letterboxed)
    mean: tuple[float, float, float] = (103.53, 116.28, 123.675)  # ONNX only, in `channel_order`
    std: tuple[float, float, float] = (57.375, 57.12, 58.395)
    channel_order: Literal["BGR", "RGB"] = "BGR"

    def validate(self, where: str = "detector") -> None:
        if self.kind != "none" and not self.checkpoint:
            raise ConfigError(f"{where}.checkpoint is required for a {self.kind} detector")
        if self.kind == "torchvision" and self.arch not in TORCHVISION_DETECTORS:
            raise ConfigError(f"{where}.arch {self.arch!r} is not one of {', '.join(TORCHVISION_DETECTORS)}")
        if not 0 <= self.score_threshold <= 1 or self.max_persons < 1:
            raise ConfigError(f"{where}: score_threshold must lie in [0, 1] and max_persons be >= 1")


class PersonDetector(Protocol):
    def detect(self, image_bgr: np.ndarray) -> np.ndarray: ...


def _keep_people(xyxy: np.ndarray, scores: np.ndarray, labels: np.ndarray, person: int,
                 cfg: DetectorConfig) -> np.ndarray:
    keep = (labels == person) & (scores >= cfg.score_threshold) & np.isfinite(xyxy).all(1)
    xyxy, scores = xyxy[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")[: cfg.max_persons]
    boxes = np.concatenate([xyxy[order, :2], xyxy[order, 2:] - xyxy[order, :2], scores[order, None]], 1)
    return boxes[(boxes[:, 2] > 0) & (boxes[:, 3] > 0)].astype(np.float32)


class TorchvisionDetector:
    """A torchvision detection model from a state_dict file (read with weights_only=True), people only."""

    def __init__(self, cfg: DetectorConfig, device: str = "cpu"):
        import torchvision

        self.cfg, self.device = cfg, torch.device(device)
        model = getattr(torchvision.models.detection, cfg.arch)(weights=None, weights_backbone=None, num_classes=91)
        try:
            state = torch.load(io.BytesIO(resolve(cfg.checkpoint).read_bytes()), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
            raise CheckpointError(f"cannot read detector checkpoint {cfg.checkpoint}: {str(exc).splitlines()[0]}") from None
        state = state.get("model", state.get("state_dict", state)) if isinstance(state, dict) else state
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise CheckpointError(f"{cfg.checkpoint} does not fit {cfg.arch}: {str(exc).splitlines()[1].strip()}") \
                from None
        if missing or unexpected:
            raise CheckpointError(f"{cfg.checkpoint} does not fit {cfg.arch}: missing {missing[:4]}, "
                                  f"unexpected {unexpected[:4]}")
        self.model = model.to(self.device).eval()
        self.person = TORCHVISION_PERSON if cfg.person_label < 0 else cfg.person_label

    @torch.no_grad()
    def detect(self, image_bgr: np.ndarray) -> np.ndarray:
        rgb = torch.from_numpy(np.ascontiguousarray(image_bgr[:, :, ::-1])).permute(2, 0, 1).float().div_(255)
        out = self.model([rgb.to(self.device)])[0]
        return _keep_people(out["boxes"].cpu().numpy(), out["scores"].cpu().numpy(), out["labels"].cpu().numpy(),
                            self.person, self.cfg)


def letterbox(image_bgr: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio into (H, W), padded bottom/right with 114; returns (image, scale)."""
    h, w = image_bgr.shape[:2]
    scale = min(size[0] / h, size[1] / w)
    resized = cv2.resize(image_bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size[0], size[1], 3), 114, np.uint8)
    canvas[:resized.shape[0], :resized.shape[1]] = resized
    return canvas, scale


class OnnxDetector:
    """An ONNX detector with outputs `dets` [1,N,5] (x1, y1, x2, y2, score) and `labels` [1,N], run by onnxruntime."""

    def __init__(self, cfg: DetectorConfig, providers: list[str] | None = None):
        import onnxruntime as ort

        self.cfg = cfg
        try:
            self.session = ort.InferenceSession(resolve(cfg.checkpoint).read_bytes(),
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any load failure is a bad model file
            raise CheckpointError(f"cannot load ONNX detector {cfg.checkpoint}: {str(exc).splitlines()[0]}") from None
        names = [o.name for o in self.session.get_outputs()]
        if len(names) < 2:
            raise CheckpointError(f"{cfg.checkpoint}: expected outputs dets [1,N,5] and labels [1,N], got {names}")
        self.input_name = self.session.get_inputs()[0].name
        self.person = 0 if cfg.person_label < 0 else cfg.person_label

    def detect(self, image_bgr: np.ndarray) -> np.ndarray:
        padded, scale = letterbox(image_bgr, self.cfg.input_size)
        if self.cfg.channel_order == "RGB":
            padded = padded[:, :, ::-1]
        x = (padded.astype(np.float32) - np.asarray(self.cfg.mean, np.float32)) / np.asarray(self.cfg.std, np.float32)
        dets, labels = self.session.run(None, {self.input_name: x.transpose(2, 0, 1)[None].copy()})[:2]
        dets, labels = np.asarray(dets).reshape(-1, 5), np.asarray(labels).reshape(-1)
        h, w = image_bgr.shape[:2]
        xyxy = np.clip(dets[:, :4] / scale, 0, [w, h, w, h])
        return _keep_people(xyxy, dets[:, 4], labels.astype(np.int64), self.person, self.cfg)


def build_detector(cfg: DetectorConfig, device: str = "cpu") -> PersonDetector | None:
    if cfg.kind == "torchvision":
        return TorchvisionDetector(cfg, device)
    if cfg.kind == "onnx":
        return OnnxDetector(cfg, ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else None)
    return None
