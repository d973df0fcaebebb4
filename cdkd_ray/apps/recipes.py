"""The two recipes every workflow shares: synthetic data -> shards, and teacher -> baseline -> CDKD students.

The quickstart, `bench/kd_gain.py` and the tests call these instead of spelling the steps out again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from cdkd_ray.core.coco.synth import synth_split
from cdkd_ray.core.config import load_config
from cdkd_ray.core.experiment import ExperimentConfig, RunKind
from cdkd_ray.core.shards import shard_coco
from cdkd_ray.ray_adapters.train_driver import run_training

SPLITS = ("train", "val")


def make_synthetic(data_dir: str, train_images: int, val_images: int, seed: int, progress=None) -> str:
    """A synthetic COCO-format keypoint set (train and val) in `data_dir`; returns it."""
    for split, count in zip(SPLITS, (train_images, val_images)):
        synth_split(data_dir, split, count, seed, progress=progress)
    return data_dir


def shard_coco_dir(data_dir: str, shard_root: str, rows_per_file: int = 1000, show_progress: bool = False) -> str:
    """Shard both splits of a COCO-layout folder (annotations/person_keypoints_<split>.json, <split>/)."""
    for split in SPLITS:
        shard_coco(os.path.join(data_dir, "annotations", f"person_keypoints_{split}.json"),
                   os.path.join(data_dir, split), shard_root, split=split, rows_per_file=rows_per_file,
                   show_progress=show_progress)
    return shard_root


@dataclass(frozen=True)
class KdPlan:
    """A teacher, then per seed the plain baseline and the CDKD student with the same data, schedule and seed."""

    experiment: str  # preset or YAML of the base experiment
    teacher_overrides: list[str] = field(default_factory=list)
    student_overrides: list[str] = field(default_factory=list)
    seeds: tuple[int, ...] = (0,)
    seed_in_names: bool = False  # "cdkd-seed0" rather than "cdkd" (always so with several seeds)

    def student_runs(self) -> list[tuple[str, RunKind, ExperimentConfig]]:
        """(run name, kind, config) of every student run; names carry the seed when there are several."""
        runs = []
        for seed in self.seeds:
            seeded = [f"train.seed={seed}", f"data.seed={seed}", *self.student_overrides]
            for kind, extra in ((RunKind.BASELINE, ["distill.enabled=false"]), (RunKind.CDKD, [])):
                seeded_name = self.seed_in_names or len(self.seeds) > 1
                name = f"{kind.value}-seed{seed}" if seeded_name else kind.value
                runs.append((name, kind, load_config(ExperimentConfig, self.experiment, [*seeded, *extra])))
        return runs

    def teacher_config(self) -> ExperimentConfig:
        return load_config(ExperimentConfig, self.experiment, self.teacher_overrides)


def run_kd_plan(plan: KdPlan, shard_root: str, runs_dir: str, teacher_checkpoint: str | None = None,
                before_run: Callable[[str, RunKind, ExperimentConfig], None] | None = None,
                after_run: Callable[[dict], None] | None = None) -> dict:
    """Train the teacher (unless one is given) and every student run; returns {"teacher", "students"}."""
    announce = before_run or (lambda *_: None)
    done = after_run or (lambda _: None)
    teacher = None
    if teacher_checkpoint is None:
        cfg = plan.teacher_config()
        announce("teacher", RunKind.TEACHER, cfg)
        teacher = run_training(cfg, RunKind.TEACHER, shard_root, runs_dir, "teacher")
        teacher_checkpoint = teacher["best_checkpoint"]
        done(teacher)
    students = {}
    for name, kind, cfg in plan.student_runs():
        announce(name, kind, cfg)
        students[name] = run_training(cfg, kind, shard_root, runs_dir, name, teacher_checkpoint=teacher_checkpoint)
        done(students[name])
    return {"teacher": teacher, "teacher_checkpoint": teacher_checkpoint, "students": students}
