"""Configuration of the top-down input pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from cdkd_ray.core.errors import ConfigError
from cdkd_ray.core.models.strides import HEATMAP_STRIDE, heatmap_size_for


@dataclass
class DataConfig:
    """Input/heatmap geometry, augmentation (the SimpleBaseline recipe) and pipeline options."""

    input_size: tuple[int, int] = (256, 192)  # H, W
    heatmap_size: tuple[int, int] = (64, 48)  # H, W
    sigma: float = 2.0
    subpixel_targets: bool = False
    padding: float = 1.25
    flip_prob: float = 0.5
    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_prob: float = 0.6
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    half_body_padding: float = 1.5
    decode: Literal["argmax", "dark"] = "argmax"
    flip_test: bool = True
    detections: Optional[str] = None  # COCO detection results file for val (None: GT boxes)
    det_score_threshold: float = 0.0
    on_bad_image: Literal["skip", "fail"] = "skip"
    verify_shards: bool = True  # check every part's size and SHA-256 against the manifest when a run starts
    images_per_block: int = 16  # images decoded per output batch of a read/decode task
    images_per_task: int = 256  # a read/decode task reads whole parts, small ones grouped to about this many images
    s3_client: Literal["pyarrow", "s3fs"] = "pyarrow"  # how training reads Parquet parts from s3://
    shuffle_buffer: int = 512  # training instances mixed across images and blocks, reseeded every epoch (0: off)
    num_cpus_per_task: float = 0.5
    max_tasks: int = 0  # concurrent decode/augment tasks (0: as many as fit on this machine's cores on one node)
    keep_freed_heap: bool = True  # decode processes reuse freed memory (glibc) instead of faulting in fresh pages
    seed: Optional[int] = 0

    def validate(self, where: str = "data") -> None:
        h, w = self.input_size
        hh, hw = self.heatmap_size
        if h % 32 or w % 32 or h <= 0 or w <= 0:
            raise ConfigError(f"{where}.input_size {h}x{w}: both sides must be positive multiples of 32 "
                              "(the ResNet stride); the smallest 4:3 input is 128x96")
        if (hh, hw) != heatmap_size_for(self.input_size):
            eh, ew = heatmap_size_for(self.input_size)
            raise ConfigError(f"{where}.heatmap_size {hh}x{hw} must be input_size / {HEATMAP_STRIDE} = {eh}x{ew} "
                              "(three stride-2 deconvolutions after a stride-32 backbone)")
        if self.sigma <= 0:
            raise ConfigError(f"{where}.sigma must be > 0")
        for name in ("flip_prob", "rotation_prob", "half_body_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{where}.{name} must be within [0, 1]")
        if not 0 <= self.scale_factor < 1:
            raise ConfigError(f"{where}.scale_factor must be within [0, 1)")
        if self.images_per_block < 1:
            raise ConfigError(f"{where}.images_per_block must be >= 1")
        if self.images_per_task < 1:
            raise ConfigError(f"{where}.images_per_task must be >= 1 (1: one part a task)")
        if self.max_tasks < 0:
            raise ConfigError(f"{where}.max_tasks must be >= 0 (0: sized from the cores)")
        if self.shuffle_buffer < 0:
            raise ConfigError(f"{where}.shuffle_buffer must be >= 0 (0 turns instance shuffling off)")

    @property
    def aspect(self) -> float:
        return self.input_size[1] / self.input_size[0]
