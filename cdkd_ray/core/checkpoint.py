"""The checkpoint formats, and the only place their file names are spelled.

A training checkpoint is a directory `checkpoint_epochNNNN/` with model.pt (state_dict of the student
plus train-only modules), optimizer.pt and trainer_state.json (epoch, step, metrics, history, config).
A student export is a directory with student.pt (the student alone), model_card.json and optionally
student.onnx. Everything is read with torch.load(..., weights_only=True).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cdkd_ray.core.errors import CheckpointError

if TYPE_CHECKING:
    from cdkd_ray.core.storage import Location

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
CHECKPOINT_PREFIX = "checkpoint_epoch"
STUDENT_FILE = "student.pt"
CARD_FILE = "model_card.json"
ONNX_FILE = "student.onnx"
EXPORT_FILES = (STUDENT_FILE, CARD_FILE, ONNX_FILE)
EXPORT_POINTER = "export.json"  # object storage: names the version folder of a published export


def checkpoint_dir_name(epoch: int) -> str:
    return f"{CHECKPOINT_PREFIX}{epoch:04d}"


def save_checkpoint(directory: str, model_state: dict, optimizer_state: dict | None, trainer_state: dict) -> None:
    """Write a checkpoint directory (model state with student.* and distill.* keys)."""
    os.makedirs(directory, exist_ok=True)
    torch.save(model_state, os.path.join(directory, MODEL_FILE))
    if optimizer_state is not None:
        torch.save(optimizer_state, os.path.join(directory, OPTIMIZER_FILE))
    with open(os.path.join(directory, STATE_FILE), "w") as f:
        json.dump(trainer_state, f, indent=1, default=str)


def checkpoint_files(directory: str | Location) -> dict[str, bytes]:
    """The raw files of a checkpoint directory (a path, s3:// URI or Location); model.pt is required."""
    from cdkd_ray.core.storage import Location, resolve

    location = directory if isinstance(directory, Location) else resolve(directory)
    if not location.join(MODEL_FILE).exists():
        raise CheckpointError(f"{location.uri} is not a cdkd-ray checkpoint (no {MODEL_FILE})")
    names = [n for n in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE) if location.join(n).exists()]
    return {name: location.join(name).read_bytes() for name in names}


def decode_checkpoint(files: dict[str, bytes], where: str) -> tuple[dict, dict | None, dict]:
    """(model state, optimizer state or None, trainer state); a file that does not read back is named."""
    def tensors(name: str):
        try:
            return torch.load(io.BytesIO(files[name]), map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, pickle refused, ...: one error that names the file
            raise CheckpointError(f"{where}/{name} cannot be read ({str(exc).splitlines()[0][:200]}): the "
                                  "checkpoint is incomplete or corrupt") from None

    model = tensors(MODEL_FILE)
    optimizer = tensors(OPTIMIZER_FILE) if OPTIMIZER_FILE in files else None
    try:
        state = json.loads(files[STATE_FILE]) if STATE_FILE in files else {}
    except ValueError as exc:
        raise CheckpointError(f"{where}/{STATE_FILE} is not JSON ({exc}): the checkpoint is incomplete") from None
    return model, optimizer, state


def load_checkpoint(directory: str) -> tuple[dict, dict | None, dict]:
    """(model state, optimizer state or None, trainer state) from a checkpoint directory (local or s3://)."""
    files = checkpoint_files(directory)
    return decode_checkpoint(files, str(directory).rstrip("/"))


def epoch_of_checkpoint(name: str) -> int | None:
    """NNNN of a `checkpoint_epochNNNN` directory name; None for any other name."""
    digits = name[len(CHECKPOINT_PREFIX):]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


@dataclass(frozen=True)
class RecoveredCheckpoint:
    """A checkpoint found in a run's folder: its directory name, raw files and what they decode to."""

    name: str
    files: dict[str, bytes]
    model: dict
    optimizer: dict
    state: dict


@dataclass(frozen=True)
class UnrecordedCheckpoints:
    """What a run's folder holds past its recorded epoch: the newest whole checkpoint, and the partly
    written ones newer than it (names), which nothing will ever read and a resume removes."""

    newest: RecoveredCheckpoint | None
    incomplete: tuple[str, ...]


def unrecorded_checkpoints(run_dir: Location, after_epoch: int) -> UnrecordedCheckpoints:
    """The checkpoints in `run_dir` past `after_epoch` that Ray Train's records do not hold.

    A run stopped between writing an epoch's checkpoint and recording it (Ctrl-C, a lost driver) leaves
    a checkpoint that the records lack; resuming from the records alone trains that epoch again. One
    stopped while writing leaves part of one (Ray copies a checkpoint's files in parallel, the small
    trainer state first). Whole means model, optimizer and trainer state all read back and name this
    epoch; the newest whole one is returned, with the names of the partial ones found above it.
    """
    found = sorted(((epoch, name) for name in run_dir.listdir_names()
                    if (epoch := epoch_of_checkpoint(name)) is not None and epoch > after_epoch), reverse=True)
    incomplete = []
    for epoch, name in found:
        try:
            files = checkpoint_files(run_dir.join(name))
            model, optimizer, state = decode_checkpoint(files, run_dir.join(name).uri)
        except (CheckpointError, OSError):  # OSError: removed while read (by another worker's resume)
            incomplete.append(name)
            continue
        if optimizer is not None and state.get("epoch") == epoch and "history" in state:
            return UnrecordedCheckpoints(RecoveredCheckpoint(name, files, model, optimizer, state), tuple(incomplete))
        incomplete.append(name)
    return UnrecordedCheckpoints(None, tuple(incomplete))
