"""What a training run is: its kind, resolved config, data and teacher, so a re-run can tell "resume" from "other run".

Stored as ``RUN/run_identity.json`` when a run starts. Re-running the same name resumes only when nothing
but the keys in RESUMABLE_KEYS changed (more epochs, say); anything else is refused with a diff.
"""

from __future__ import annotations

import hashlib
import json
from typing import Collection

from cdkd_ray.core.checkpoint import MODEL_FILE, STUDENT_FILE
from cdkd_ray.core.config import to_dict
from cdkd_ray.core.errors import CdkdError
from cdkd_ray.core.experiment import ExperimentConfig, RunKind
from cdkd_ray.core.storage import Location, resolve

IDENTITY_FILE = "run_identity.json"
# What may change when a run is resumed: how long it trains and how it is checkpointed and supervised.
RESUMABLE_KEYS = ("train.epochs", "train.val_every", "train.keep_checkpoints", "train.max_failures",
                  "train.torch_threads", "train.num_workers", "train.cpus_per_worker", "teacher.placement",
                  "teacher.pool_min", "teacher.pool_max", "teacher.persistent", "teacher.num_cpus", "teacher.num_gpus",
                  "data.num_cpus_per_task")


class RunConflict(CdkdError):
    """A run of this name exists and was started with something else."""


def data_digest(manifests: dict[str, dict]) -> str:
    """A digest of the shards' content (the parts' and annotation copies' checksums), not of when they were written."""
    h = hashlib.sha256()
    for split in sorted(manifests):
        m = manifests[split]
        h.update(split.encode())
        h.update(m.get("annotation_sha256", "").encode())
        for f in m.get("files", []):
            h.update(f["sha256"].encode())
    return h.hexdigest()


def file_digest(uri: str | None) -> str | None:
    """SHA-256 of a checkpoint file, or of the weights inside a checkpoint/export folder."""
    if not uri:
        return None
    location = resolve(uri)
    if location.fs.isdir(location.path):
        for name in (STUDENT_FILE, MODEL_FILE):
            if location.join(name).exists():
                location = location.join(name)
                break
    h = hashlib.sha256()
    with location.fs.open(location.path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_identity(cfg: ExperimentConfig, kind: RunKind, data_uri: str, manifests: dict[str, dict],
                 teacher_checkpoint: str | None) -> dict:
    return {"kind": kind.value, "config": to_dict(cfg), "data_uri": data_uri, "data_digest": data_digest(manifests),
            "teacher_checkpoint": teacher_checkpoint, "teacher_digest": file_digest(teacher_checkpoint)}


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


RUN_IGNORED = frozenset({*(f"config.{k}" for k in RESUMABLE_KEYS), "data_uri", "teacher_checkpoint"})


def identity_diff(old: dict, new: dict, ignore: Collection[str] = RUN_IGNORED) -> list[str]:
    """Readable differences (`key: old -> new`) between two identities, skipping the flattened keys in `ignore`.

    For runs that is RESUMABLE_KEYS and where the data or teacher lives (they may move; their digests decide).
    """
    flat_old, flat_new = _flatten(old), _flatten(new)
    return [f"{key}: {flat_old.get(key)!r} -> {flat_new.get(key)!r}"
            for key in sorted(set(flat_old) | set(flat_new))
            if key not in ignore and flat_old.get(key) != flat_new.get(key)]


def shown_diff(changes: list[str], limit: int = 20) -> str:
    """The first `limit` differences from identity_diff, one indented line each, for an error message."""
    return "\n".join(f"    {line}" for line in changes[:limit])


def claim_run(run_dir: Location, name: str, identity: dict) -> None:
    """Record a new run's identity, or check that an existing run of this name is the same run."""
    path = run_dir.join(IDENTITY_FILE)
    if path.exists():
        diff = identity_diff(json.loads(path.read_bytes()), identity)
        if diff:
            shown = "\n".join(f"    {line}" for line in diff[:20])
            raise RunConflict(f"run '{name}' in {run_dir.uri} was started with other settings; resuming it would mix "
                              f"two experiments:\n{shown}\n  use another --name, or --new-run for a fresh run "
                              f"beside it (only {', '.join(RESUMABLE_KEYS[:2])} and the like may change on resume)")
    path.write_bytes(json.dumps(identity, indent=1).encode())
