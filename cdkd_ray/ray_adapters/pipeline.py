"""The Ray Data input pipeline: shards (local or s3://) -> augmented top-down instances."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterator, Optional

import cv2
import numpy as np

from cdkd_ray.core.bad_images import BadImageRecord
from cdkd_ray.core.data_config import DataConfig
from cdkd_ray.core.instances import build_instances, load_detections, rows_from_arrow
from cdkd_ray.core.keypoints import NUM_KEYPOINTS
from cdkd_ray.core.memory import keep_freed_heap
from cdkd_ray.core.read_plan import read_task_count
from cdkd_ray.core.shards import shard_parts
from cdkd_ray.core.storage import arrow_s3_filesystem
from cdkd_ray.ray_adapters.runtime import local_decode_slots

if TYPE_CHECKING:  # torch stays out of the decode tasks, which import this module for their function
    from cdkd_ray.core.experiment import ExperimentConfig


def execution_index() -> int:
    """How many times this dataset has been executed before: the epoch of a streaming pipeline."""
    from ray.data import DataContext

    return int(getattr(DataContext.get_current(), "_execution_idx", 0))


def _instances_udf(table, cfg: DataConfig, train: bool, epoch: int,
                   detections: Optional[dict[int, np.ndarray]],
                   bad_images: Optional[BadImageRecord] = None) -> Iterator[dict[str, np.ndarray]]:
    """The instances of a read block, `data.images_per_block` images at a time (a generator of output batches).

    It takes whole blocks (no batch_size), so Ray Data fuses it with the read into one task per part.
    """
    # Augmentation is seeded by (seed, epoch, image ids): every epoch differs, every run repeats.
    cv2.setNumThreads(1)  # parallelism comes from the tasks; OpenCV's own threads would oversubscribe the cores
    if cfg.keep_freed_heap:  # for the life of this worker process, from its first task on
        keep_freed_heap()
    on_skip = bad_images.add if bad_images is not None else None
    epoch += execution_index()
    for start in range(0, table.num_rows, cfg.images_per_block):
        rows = rows_from_arrow(table.slice(start, cfg.images_per_block))
        yield build_instances(rows, cfg, train, epoch, detections, on_skip=on_skip)


def _read_filesystem(location, cfg: DataConfig):
    """None for local parts; for s3://, pyarrow's native S3 client (data.s3_client=pyarrow) or s3fs."""
    if not location.is_remote:
        return None
    return arrow_s3_filesystem(location) if cfg.s3_client == "pyarrow" else location.fs


def _read_parts(paths: list[str], filesystem, shuffle, cfg: DataConfig, tasks: int | None, read_tasks: int):
    """Ray Data's file-based Parquet reader over exactly these parts (the manifest's list) in `read_tasks` tasks.

    Not the 2.60 default (datasource V2): that one re-lists the paths every execution through a new
    footer-reader actor (an actor process per epoch, ~1 s more per epoch here) and drops repeated paths.
    The manifest already names every part, so there is nothing to list. With at least as many parts as
    read tasks, each task reads whole parts (several, when they are small: read_task_count), and the
    decode step fuses into it (no second task per block, no trip of the encoded images through the
    object store); with fewer, Ray splits the parts so that all slots work.
    """
    from ray.data import DataContext, read_parquet

    ctx = DataContext.get_current()
    saved, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:
        fusable = len(paths) >= read_tasks
        return read_parquet(paths, filesystem=filesystem, shuffle=shuffle, num_cpus=cfg.num_cpus_per_task,
                            concurrency=tasks if fusable else None, override_num_blocks=read_tasks)
    finally:
        ctx.use_datasource_v2 = saved


def build_dataset(uri: str, split: str, cfg: DataConfig, train: bool | None = None, epoch: int = 0,
                  s3_endpoint: str | None = None, detections_file: str | None = None,
                  shuffle_files: bool = False, bad_images: Optional[BadImageRecord] = None,
                  passes: int = 1):
    """A streaming Ray Dataset of person instances per the training-batch contract.

    Reads the part files the split's manifest lists (with GT boxes, those holding a labelled person),
    from a folder or s3://; `train`
    defaults to split == 'train'. Validation uses GT boxes, or `detections_file` (or
    cfg.detections) with cfg.det_score_threshold. `passes` > 1 lists the parts that many times in one
    execution (benchmarks: a long stream without a per-execution start-up every few seconds).
    """
    import ray.data

    train = (split == "train") if train is None else train
    detections_file = detections_file or (None if train else cfg.detections)
    detections = load_detections(detections_file, cfg.det_score_threshold) if detections_file else None
    # instances of labelled people only (train, GT boxes): the parts of images without any are not read
    location, parts = shard_parts(uri, split, s3_endpoint, labelled_only=detections is None)
    paths = [location.join(part["name"]).path for part in parts] * passes
    shuffle = None
    if shuffle_files:
        from ray.data import FileShuffleConfig

        shuffle = FileShuffleConfig(seed=cfg.seed) if cfg.seed is not None else "files"
    tasks = map_task_limit(cfg)
    # On a cluster (tasks None) Ray Data sizes the pool: parts are grouped while every slot keeps two
    # tasks, but never split (a split part's images would go through the object store to a decode task).
    read_tasks = read_task_count([part["rows"] for part in parts] * passes, cfg.images_per_task,
                                 tasks or task_slots(cfg), split_parts=tasks is not None)
    ds = _read_parts(paths, _read_filesystem(location, cfg), shuffle, cfg, tasks, read_tasks)
    return ds.map_batches(
        _instances_udf,
        fn_kwargs={"cfg": cfg, "train": train, "epoch": epoch, "detections": detections, "bad_images": bad_images},
        batch_size=None,
        batch_format="pyarrow",
        num_cpus=cfg.num_cpus_per_task,
        compute=ray.data.TaskPoolStrategy(size=tasks),
    )


def map_task_limit(cfg: DataConfig) -> int | None:
    """How many decode/augment tasks may run at once: data.max_tasks, else the cores of an over-declared node.

    An embedded local Ray declares more logical CPUs than the machine has (so Train, Tune and Data never
    deadlock); left alone, Ray Data then runs up to logical CPUs / num_cpus_per_task tasks, each a process
    of its own, on a few cores. Elsewhere (a cluster) Ray Data sizes the pool itself (None).
    """
    import ray

    if cfg.max_tasks:
        return cfg.max_tasks
    if not ray.is_initialized():  # Ray Data will start a default local Ray: as many logical CPUs as cores
        return None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cores = local_decode_slots()
    over_declared = len(nodes) == 1 and nodes[0].get("Resources", {}).get("CPU", 0) > cores
    return cores if over_declared else None


def task_slots(cfg: DataConfig) -> int:
    """How many decode tasks the cluster's CPUs hold at once now (where Ray Data sizes the pool itself).

    Without a Ray yet, Ray Data will start a default local one: as many CPUs as this machine's cores.
    """
    import ray

    cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else (os.cpu_count() or 1)
    return max(1, int(cpus / max(cfg.num_cpus_per_task, 1e-3)))


def shuffle_seed(seed: int | None, epoch: int, rank: int) -> int | None:
    """The instance shuffle's seed: fixed by (seed, epoch, rank), so runs repeat and epochs differ (None: random)."""
    return None if seed is None else (seed * 1_000_003 + epoch * 7_919 + rank) % (2**31)


def train_batches(source, cfg: ExperimentConfig, epoch: int, rank: int = 0):
    """An epoch of training batches (torch tensors, on the CPU) from a Dataset or a worker's DataIterator.

    Instances are drawn from a local shuffle buffer of `data.shuffle_buffer` instances across images and
    blocks (as a DataLoader with shuffle=True draws them), reseeded every epoch. Files are shuffled too,
    reseeded by Ray every execution. The buffer is the core's numpy one: Ray's own (`iter_torch_batches`
    with `local_shuffle_buffer_size`) gathers rows with Arrow and took ~2x the consumer's CPU
    per sample (bench/shuffle_buffer.py). Like that one it fills as blocks come, so the first batch
    waits for two batches of instances, not for the whole buffer: behind a teacher pool, a wait for 512
    instances made an epoch of 240 run its teacher and then its training one after the other.
    """
    from cdkd_ray.core.training import torch_batches  # torch, here only: the decode tasks import this module

    size, buffer = cfg.train.batch_size, cfg.data.shuffle_buffer
    return torch_batches(record_batches(source), size, buffer, shuffle_seed(cfg.data.seed, epoch, rank))


def record_batches(source) -> Iterator[dict[str, np.ndarray]]:
    """Each block's Arrow record batches as numpy columns, as the blocks come and without a copy.

    Ray's numpy format first joins a block's chunks (~20 in a decode task's output block), a copy of every
    crop; these are views of the block instead, for the shuffle buffer to copy each row out of once.
    """
    for table in source.iter_batches(batch_size=None, batch_format="pyarrow"):
        for batch in table.to_batches():
            yield {name: batch.column(i).to_numpy(zero_copy_only=False) for i, name in enumerate(batch.schema.names)}


class TeacherStage:
    """Adds `teacher_heatmaps` and `teacher_features` to each batch: a Ray Data actor-pool stage, or a
    run's persistent teacher actor (teacher_servers)."""

    def __init__(self, checkpoint: str, tap: str = "layer4", num_threads: int | None = None,
                 channel_order: str | None = None):
        import torch

        from cdkd_ray.core.teacher import Teacher

        if num_threads:
            torch.set_num_threads(num_threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.teacher = Teacher(checkpoint, tap, device, channel_order)

    def ready(self) -> bool:
        """Resolves once the teacher is loaded (a persistent actor's first answer)."""
        return True

    def label(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The teacher's fp16 `teacher_heatmaps` and `teacher_features` of uint8 crops [N,3,H,W].

        A persistent teacher actor is sent only the crops and sends back only these two: the rest of a
        block (and the crops) need not go through the object store to the actor and back.
        """
        if len(images) == 0:
            return {"teacher_heatmaps": np.zeros((0, NUM_KEYPOINTS, 1, 1), np.float16),
                    "teacher_features": np.zeros((0, 1, 1, 1), np.float16)}
        import torch

        heatmaps, feature = self.teacher.infer(torch.from_numpy(np.ascontiguousarray(images)))
        return {"teacher_heatmaps": heatmaps.cpu().numpy(), "teacher_features": feature.cpu().numpy()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**batch, **self.label(batch["image"])}


def teacher_stage_kwargs(cfg: ExperimentConfig, teacher_checkpoint: str) -> dict:
    """TeacherStage's constructor arguments for a run: one thread per CPU the pool's actors get."""
    return {"checkpoint": teacher_checkpoint, "tap": cfg.distill.teacher_tap,
            "num_threads": max(1, int(cfg.teacher.num_cpus)), "channel_order": cfg.teacher.channel_order}


def with_teacher_pool(train_ds, cfg: ExperimentConfig, teacher_checkpoint: str):
    """Attach the frozen teacher as a Ray Data actor-pool stage (fp16 heatmaps and features), scaled
    between pool_min and pool_max and started anew every epoch (teacher.persistent=false)."""
    import ray.data

    t = cfg.teacher
    return train_ds.map_batches(
        TeacherStage,
        fn_constructor_kwargs=teacher_stage_kwargs(cfg, teacher_checkpoint),
        compute=ray.data.ActorPoolStrategy(min_size=t.pool_min, max_size=t.pool_max),
        batch_size=t.batch_size, batch_format="numpy", num_cpus=t.num_cpus, num_gpus=t.num_gpus or None,
    )
