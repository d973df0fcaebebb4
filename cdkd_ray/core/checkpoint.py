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

import torch

from cdkd_ray.core.errors import CheckpointError

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


def load_checkpoint(directory: str) -> tuple[dict, dict | None, dict]:
    """(model state, optimizer state or None, trainer state) from a local checkpoint directory."""
    from cdkd_ray.core.storage import resolve

    location = resolve(directory)
    model_file = location.join(MODEL_FILE)
    if not model_file.exists():
        raise CheckpointError(f"{directory} is not a cdkd-ray checkpoint (no {MODEL_FILE})")

    def read(name: str):
        return torch.load(io.BytesIO(location.join(name).read_bytes()), map_location="cpu", weights_only=True)

    model = read(MODEL_FILE)
    optimizer = read(OPTIMIZER_FILE) if location.join(OPTIMIZER_FILE).exists() else None
    state = json.loads(location.join(STATE_FILE).read_bytes()) if location.join(STATE_FILE).exists() else {}
    return model, optimizer, state
