"""A run's persistent teacher actors: started once, kept across epochs, called from a Ray Data map task.

Ray Data starts an actor pool anew for every pass over a dataset (it has no persistent actor pools, unlike
a DataLoader's `persistent_workers`), so each epoch used to wait for the teacher's start-up (torch,
weights, first batch) before its first batch. These actors live for the whole run (`teacher.persistent`,
the default): the driver starts `teacher.pool_max` of them before the Train run, without waiting, so
their start-up runs beside the workers' own; each block of the training stream goes to a light map task
that spreads its teacher batches over the actors that are up, waiting for the first if none is.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np

from cdkd_ray.core.errors import CdkdError
from cdkd_ray.core.experiment import ExperimentConfig


@dataclass
class TeacherServers:
    """The actors and, for each, the reference that resolves once it has loaded its teacher."""

    actors: list
    ready: list


def start_teacher_servers(cfg: ExperimentConfig, teacher_checkpoint: str) -> TeacherServers:
    """`teacher.pool_max` teacher actors with the pool's resources; restarted (and their calls retried) if lost."""
    import ray

    from cdkd_ray.ray_adapters.pipeline import TeacherStage, teacher_stage_kwargs

    t = cfg.teacher
    server = ray.remote(TeacherStage).options(
        num_cpus=t.num_cpus, num_gpus=t.num_gpus or None, max_restarts=3, max_task_retries=3)
    kwargs = teacher_stage_kwargs(cfg, teacher_checkpoint)
    actors = [server.remote(**kwargs) for _ in range(t.pool_actors_at_start()[0])]
    return TeacherServers(actors, [a.ready.remote() for a in actors])


def stop_teacher_servers(servers: TeacherServers | None) -> None:
    import ray

    for actor in servers.actors if servers else []:
        with contextlib.suppress(Exception):  # cleanup must not hide the run's own error
            ray.kill(actor)


def _loaded(actors: list, ready: list, done: list) -> tuple[list, list[str]]:
    """Of the actors whose start has ended, those that loaded their teacher, and why the others did not."""
    import ray

    up, failures = [], []
    for actor, ref in zip(actors, ready):
        if ref in done:
            try:
                ray.get(ref)
                up.append(actor)
            except Exception as exc:  # the actor's constructor failed: its error says why
                failures.append(str(exc).strip().splitlines()[-1])
    return up, failures


def _up(actors: list, ready: list, wait_s: float | None) -> list:
    """The actors that have loaded their teacher; waits for the first one when none has yet."""
    import ray

    _, pending = ray.wait(ready, num_returns=len(ready), timeout=0)
    while True:
        up, failures = _loaded(actors, ready, [r for r in ready if r not in pending])
        if up:
            return up
        if not pending:
            raise CdkdError(f"no teacher actor could load the teacher (teacher.checkpoint must be readable "
                            f"from every node): {failures[0]}")
        done, pending = ray.wait(pending, num_returns=1, timeout=wait_s)
        if not done:
            raise CdkdError(f"no teacher actor started within train.resource_wait_s={wait_s:g} s: the cluster has "
                            "no room for one (teacher.num_cpus / teacher.num_gpus), or raise train.resource_wait_s")


def label_block(batch: dict[str, np.ndarray], actors: list, ready: list, batch_size: int,
                wait_s: float | None) -> dict[str, np.ndarray]:
    """Map task: the block's teacher targets, its teacher batches spread over the actors that are up."""
    import ray

    up = _up(actors, ready, wait_s)
    images = batch["image"]  # only the crops travel to the actors, only the teacher's outputs come back
    starts = range(0, max(len(images), 1), batch_size)
    first = random.randrange(len(up))
    outputs = ray.get([up[(first + i) % len(up)].label.remote(images[start:start + batch_size])
                       for i, start in enumerate(starts)])
    return {**batch, **{k: np.concatenate([out[k] for out in outputs]) for k in outputs[0]}}


def with_teacher_servers(train_ds, cfg: ExperimentConfig, servers: TeacherServers):
    """The training stream with `teacher_heatmaps` and `teacher_features` from the run's teacher actors."""
    import ray.data

    return train_ds.map_batches(
        label_block, batch_size=None, batch_format="numpy",
        fn_kwargs={"actors": servers.actors, "ready": servers.ready, "batch_size": cfg.teacher.batch_size,
                   "wait_s": cfg.train.resource_wait_s},
        compute=ray.data.TaskPoolStrategy(size=2 * len(servers.actors)), num_cpus=0.1)
