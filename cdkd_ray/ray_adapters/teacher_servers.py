"""A run's persistent teacher actors: started once, kept across epochs, called by the train workers.

Ray Data starts an actor pool anew for every pass over a dataset (it has no persistent actor pools, unlike
a DataLoader's `persistent_workers`), so each epoch used to wait for the teacher's start-up (torch,
weights, first batch) before its first batch. These actors live for the whole run (`teacher.persistent`,
the default): the driver starts `teacher.pool_max` of them before the Train run, without waiting, so
their start-up runs beside the workers' own. Each train worker sends a training batch's crops to them as
soon as it draws the batch, a few batches before it trains on it, so the teacher labels the next batches
while the student trains on this one.
"""

from __future__ import annotations

import collections
import contextlib
import random
from typing import Iterable, Iterator

import numpy as np

from cdkd_ray.core.errors import CdkdError
from cdkd_ray.core.experiment import ExperimentConfig


def start_teacher_servers(cfg: ExperimentConfig, teacher_checkpoint: str) -> list:
    """`teacher.pool_max` teacher actors with the pool's resources; restarted (and their calls retried) if lost."""
    import ray

    from cdkd_ray.ray_adapters.pipeline import TeacherStage, teacher_stage_kwargs

    t = cfg.teacher
    server = ray.remote(TeacherStage).options(
        num_cpus=t.num_cpus, num_gpus=t.num_gpus or None, max_restarts=3, max_task_retries=3)
    kwargs = teacher_stage_kwargs(cfg, teacher_checkpoint)
    return [server.remote(**kwargs) for _ in range(t.pool_actors_at_start()[0])]


def stop_teacher_servers(actors: list) -> None:
    import ray

    for actor in actors:
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


def _submit(images: np.ndarray, up: list, batch_size: int, turn: int) -> list:
    """The teacher's calls for one batch's crops: `batch_size` crops a call, spread over the actors that are up."""
    return [up[(turn + i) % len(up)].label.remote(images[start:start + batch_size])
            for i, start in enumerate(range(0, max(len(images), 1), batch_size))]


def _labels(refs: list) -> dict[str, np.ndarray]:
    """One batch's teacher outputs, its calls' parts laid end to end (a copy: writable, unlike the store's)."""
    import ray

    outputs = ray.get(refs)
    return {key: np.concatenate([out[key] for out in outputs]) for key in outputs[0]}


def labelled_batches(batches: Iterable[dict], actors: list, batch_size: int, wait_s: float | None,
                     ahead: int | None = None) -> Iterator[dict]:
    """Training batches (torch tensors) with `teacher_heatmaps` and `teacher_features` from the run's actors.

    A batch's crops go to the actors when the batch is drawn, `ahead` batches (default: two per actor)
    before the student trains on it; only the crops travel there and only the teacher's fp16 outputs come
    back. A batch waits for its own labels alone: the first batch of an epoch for one teacher call, not for
    a whole block of the stream. Waits up to `wait_s` for the first actor to load its teacher.
    """
    ready = [actor.ready.remote() for actor in actors]
    ahead = ahead or 2 * len(actors)
    pending: collections.deque = collections.deque()
    turn, up = random.randrange(len(actors)), []
    for batch in batches:
        if len(up) < len(actors):  # until all are up: an actor that finishes loading joins at once
            up = _up(actors, ready, wait_s)
        pending.append((batch, _submit(batch["image"].numpy(), up, batch_size, turn)))
        turn += 1
        if len(pending) > ahead:
            yield _with_labels(*pending.popleft())
    while pending:
        yield _with_labels(*pending.popleft())


def _with_labels(batch: dict, refs: list) -> dict:
    import torch

    return {**batch, **{key: torch.from_numpy(value) for key, value in _labels(refs).items()}}
