"""Crash-safe publishing of a shard split: versioned parts, one writer at a time, the manifest switched last.

Layout of a split: ``ROOT/<split>/manifest.json`` (the pointer readers follow) and
``ROOT/<split>/v-<version>/part-*.parquet + annotations.json``. A writer
1. takes the split's lease (``.writer-lease.json``, see core/lease: created exclusively, names its holder and
   expires, so a killed writer blocks others only until then, or not at all from its own host),
2. writes every part of the new version under its own ``v-<version>/`` prefix,
3. switches the pointer in one step (a rename locally, one PUT on S3),
4. only then removes the previous version, and releases the lease.
A crash at any step leaves the old version or the new one complete and readable. What a crash leaves
behind (an unreferenced ``v-*`` prefix) is listed by ``shards-info`` and removed by ``shards-gc``.
"""

from __future__ import annotations

import json
import time
import uuid

from cdkd_ray.core.errors import DataValidationError
from cdkd_ray.core.lease import Lease, LeaseHeld, acquire_lease, live_holder
from cdkd_ray.core.storage import Location

MANIFEST = "manifest.json"
LEASE = ".writer-lease.json"
VERSION_PREFIX = "v-"
LEGACY_TMP_PREFIX = "_tmp-"  # what earlier cdkd-ray versions left behind at the root on a failed write


class SplitBusy(DataValidationError):
    """Another writer holds the split's lease."""


def acquire_split_lease(split_dir: Location, seconds: float = 600.0) -> Lease:
    """Take the split's lease or raise SplitBusy naming the holder; an expired lease is broken, and one whose
    writer on this host has ended (killed) at once."""
    try:
        return acquire_lease(split_dir.join(LEASE), seconds, break_if_gone=True)
    except LeaseHeld as held:
        if not held.held:
            raise SplitBusy(f"split {split_dir.uri} is contended", [str(held)]) from None
        raise SplitBusy(f"split {split_dir.uri} is being written by another writer",
                        [f"{held}; wait for it, or once it has expired run the command again"]) from None


def new_version() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def version_of(manifest: dict) -> str | None:
    """The version prefix a manifest's files live under (None for the flat layout of schema v1 writers)."""
    names = [f["name"] for f in manifest.get("files", [])] + [manifest.get("annotation_file", "")]
    prefixes = {n.split("/", 1)[0] for n in names if "/" in n}
    return next(iter(prefixes)) if len(prefixes) == 1 else None


def read_pointer(split_dir: Location, name: str = MANIFEST) -> dict | None:
    """The published manifest (or another pointer object), or None when there is none (or an unreadable one)."""
    path = split_dir.join(name)
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def switch_pointer(split_dir: Location, manifest: dict) -> None:
    """Publish: the new manifest replaces the old one in a single step."""
    split_dir.join(MANIFEST).write_atomic(json.dumps(manifest, indent=1).encode())
    split_dir.invalidate()


def remove_version(split_dir: Location, previous: dict | None) -> None:
    """Remove what a superseded manifest listed: its version prefix, or its flat files (old layout)."""
    if previous is None:
        return
    version = version_of(previous)
    if version:
        split_dir.join(version).remove()
        return
    for name in [f["name"] for f in previous.get("files", [])] + [previous.get("annotation_file", ""),
                                                                   "skipped_report.json"]:
        if name and "/" not in name:
            split_dir.join(name).remove()


def leftovers(split_dir: Location, manifest: dict | None) -> list[str]:
    """Version prefixes its manifest does not reference, and half-written manifests (from crashed writers)."""
    current = version_of(manifest) if manifest else None
    return [n for n in split_dir.listdir_names()
            if (n.startswith(VERSION_PREFIX) and n != current) or n.startswith(MANIFEST + ".tmp-")]


def root_leftovers(root: Location) -> list[str]:
    return [n for n in root.listdir_names() if n.startswith(LEGACY_TMP_PREFIX)]


def lease_holder(split_dir: Location) -> str | None:
    """Who holds the split's unexpired lease, if anyone (a write is under way)."""
    return live_holder(split_dir.join(LEASE))


def collect_garbage(root: Location, dry_run: bool = False) -> dict:
    """Remove what crashed writers left: unreferenced version prefixes (splits not being written) and old temps."""
    removed, busy = [], []
    for name in root.listdir_names():
        if name.startswith(LEGACY_TMP_PREFIX):
            removed.append(name)
            if not dry_run:
                root.join(name).remove()
            continue
        split_dir = root.join(name)
        stale = leftovers(split_dir, read_pointer(split_dir))
        if not stale:
            continue
        if dry_run:
            removed += [f"{name}/{v}" for v in stale]
            continue
        try:
            lease = acquire_split_lease(split_dir, seconds=120)
        except SplitBusy:
            busy.append(name)
            continue
        try:
            for version in leftovers(split_dir, read_pointer(split_dir)):
                split_dir.join(version).remove()
                removed.append(f"{name}/{version}")
        finally:
            lease.release()
        if not split_dir.listdir_names():
            split_dir.remove()
    return {"root": root.uri, "removed": removed, "busy": busy, "dry_run": dry_run}
