"""The experiment configuration shared by train-teacher, distill, sweep and model-info."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Literal, Optional

from cdkd_ray.core.data_config import DataConfig
from cdkd_ray.core.losses import DistillConfig
from cdkd_ray.core.errors import ConfigError
from cdkd_ray.core.models.pose_resnet import Arch, ModelConfig


class RunKind(str, enum.Enum):
    """What a training run is: the teacher, the plain baseline student, or the CDKD student."""

    TEACHER = "teacher"
    BASELINE = "baseline"
    CDKD = "cdkd"

    @property
    def distills(self) -> bool:
        return self is RunKind.CDKD


@dataclass
class TeacherConfig:
    arch: Arch = "resnet50"  # what train-teacher trains
    checkpoint: Optional[str] = None  # our checkpoint/export dir or an external SimpleBaseline/mmpose file
    placement: Literal["auto", "pool", "worker"] = "auto"  # auto: see resolve_teacher_placement
    pool_min: int = 1  # Ray Data's pool (persistent: false) scales between these; a persistent one has pool_max
    pool_max: int = 2
    persistent: bool = True  # pool actors kept for the whole run, not started anew every epoch by Ray Data
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 32
    channel_order: Optional[Literal["RGB", "BGR"]] = None  # override the checkpoint's

    def pool_actors_at_start(self) -> tuple[int, str]:
        """(actors, the key that sets it): a persistent pool starts pool_max, Ray Data's pool_min."""
        return (self.pool_max, "pool_max") if self.persistent else (self.pool_min, "pool_min")

    def validate(self, where: str = "teacher") -> None:
        if not 1 <= self.pool_min <= self.pool_max:
            raise ConfigError(f"{where}: need 1 <= pool_min <= pool_max")


@dataclass
class TrainConfig:
    epochs: int = 140
    batch_size: int = 32  # per worker
    lr: float = 1e-3
    lr_steps: list[int] = field(default_factory=lambda: [90, 120])
    lr_factor: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    weight_decay: float = 0.0
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    amp: bool = True  # mixed precision on GPU
    amp_dtype: Literal["float16", "bfloat16"] = "float16"  # float16 uses a gradient scaler, bfloat16 none
    torch_threads: Optional[int] = None
    keep_checkpoints: int = 2
    max_failures: int = 1
    max_steps_per_epoch: Optional[int] = None
    resource_wait_s: Optional[float] = 900.0  # fail a run whose workers wait longer for resources (null: forever)
    val_every: int = 1
    seed: int = 0

    def validate(self, where: str = "train") -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.num_workers < 0:
            raise ConfigError(f"{where}: epochs and batch_size must be >= 1, num_workers >= 0")
        if self.lr <= 0:
            raise ConfigError(f"{where}.lr must be > 0")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"{where}.keep_checkpoints must be >= 1")


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def distill_kind(cfg: ExperimentConfig) -> RunKind:
    """`cdkd-ray distill` trains the CDKD student, or the plain baseline with distill.enabled=false."""
    return RunKind.CDKD if cfg.distill.enabled else RunKind.BASELINE


def experiment_for(kind: RunKind, cfg: ExperimentConfig) -> ExperimentConfig:
    """The config a run of `kind` trains: the teacher trains teacher.arch; only CDKD distils."""
    if kind is RunKind.TEACHER:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=cfg.teacher.arch))
    return dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, enabled=kind.distills))


def resolve_teacher_placement(cfg: ExperimentConfig, cluster_gpus: float) -> tuple[str, str]:
    """(pool | worker, why) for the teacher of a distilling run; `auto` decides from the cluster's GPUs.

    A separate pool pays for moving the teacher's outputs through the object store, which only pays back when
    the teacher gets GPUs of its own; on CPUs it competes with the workers for the same cores.
    """
    t, train = cfg.teacher, cfg.train
    if t.placement != "auto":
        return t.placement, f"teacher.placement={t.placement} in the config"
    spare = cluster_gpus - (train.num_workers if train.use_gpu else 0)
    if t.num_gpus > 0 and spare >= t.num_gpus * t.pool_actors_at_start()[0]:
        return "pool", (f"a GPU teacher pool: the cluster has {cluster_gpus:g} GPUs, the workers take "
                        f"{cluster_gpus - spare:g}, each pool actor gets teacher.num_gpus={t.num_gpus:g}")
    if cluster_gpus > 0:
        return "worker", ("the teacher inside each worker: no GPUs to spare for a pool (teacher.num_gpus="
                          f"{t.num_gpus:g}, {cluster_gpus:g} GPUs in the cluster)")
    return "worker", ("the teacher inside each worker: no GPUs, and on CPUs a pool competes with the workers for "
                      "the same cores and adds object-store traffic (bench/train_throughput.py measures both)")
