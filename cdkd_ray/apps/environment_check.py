"""Checks before long work starts: packages, free disk, a free port. Fail in the first second, naming the fix."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from cdkd_ray.core.errors import CdkdError
from cdkd_ray.core.lease import LeaseHeld, acquire_lease, kept
from cdkd_ray.core.storage import resolve

# import name -> the requirement that provides it; every base dependency in pyproject.toml is here
# (a test keeps the two in step).
BASE_MODULES: dict[str, str] = {
    "ray": "ray[data,train,tune,serve]", "pandas": "ray[data]", "uvicorn": "ray[serve]",
    "torch": "torch", "torchvision": "torchvision", "pycocotools": "pycocotools", "pyarrow": "pyarrow",
    "s3fs": "s3fs", "fsspec": "fsspec", "cv2": "opencv-python-headless", "numpy": "numpy", "yaml": "pyyaml",
    "tqdm": "tqdm", "matplotlib": "matplotlib", "tensorboardX": "tensorboardX", "multipart": "python-multipart",
    "fastapi": "fastapi", "httpx": "httpx", "psutil": "psutil", "onnx": "onnx", "onnxruntime": "onnxruntime",
}
GIB = 1024 ** 3


@dataclass(frozen=True)
class DiskNeed:
    """Free space a run needs in its work folder and in the temp folder (Ray's session files, spilling)."""

    workdir_gib: float
    temp_gib: float = 1.0


def missing_modules(modules: dict[str, str] = BASE_MODULES) -> list[str]:
    """Requirements whose module cannot be found (found without importing it)."""
    return [req for name, req in modules.items() if importlib.util.find_spec(name) is None]


def free_bytes(path: str) -> int:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _writable_problem(workdir: str) -> str | None:
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir):
            pass
    except OSError as exc:
        return f"cannot write to --workdir {workdir}: {exc.strerror}; choose a folder you can write to"
    return None


def _disk_problems(workdir: str, need: DiskNeed) -> list[str]:
    problems = []
    for where, path, gib in (("--workdir", workdir, need.workdir_gib), ("the temp folder", tempfile.gettempdir(),
                                                                          need.temp_gib)):
        free = free_bytes(path)
        if free < gib * GIB:
            problems.append(f"{where} {path} has {free / GIB:.1f} GiB free, this run needs about {gib:g} GiB: "
                            f"free some space or point it elsewhere" + (" (TMPDIR=...)" if where != "--workdir" else ""))
    return problems


def check_run_environment(workdir: str, need: DiskNeed, serve_port: int | None = None,
                          modules: dict[str, str] = BASE_MODULES) -> None:
    """Raise one CdkdError listing every problem (with its fix) before any work starts."""
    problems = []
    missing = missing_modules(modules)
    if missing:
        problems.append(f"missing package(s) {', '.join(missing)}: run `pip install -e .` in the checkout "
                        f"(or `pip install {' '.join(repr(m) for m in missing)}`)")
    problems += _disk_problems(workdir, need)
    writable = _writable_problem(workdir)
    if writable:
        problems.append(writable)
    if serve_port and not port_is_free(serve_port):
        problems.append(f"port {serve_port} on 127.0.0.1 is in use: pass another --serve-port (0 picks a free one)")
    if problems:
        raise CdkdError("cannot start:\n" + "\n".join(f"  - {p}" for p in problems))


def claim_workdir(workdir: str, marker: str, identity: dict) -> None:
    """Refuse a work folder that already holds a run of another kind (e.g. another quickstart preset)."""
    path = os.path.join(workdir, marker)
    if os.path.exists(path):
        with open(path) as f:
            try:
                previous = json.load(f)
            except json.JSONDecodeError:
                previous = {}
        if previous != identity:
            raise CdkdError(f"{workdir} already holds a run of {previous or 'unknown settings'}, not {identity}: "
                            "pass another --workdir, or delete that folder")
        return
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(identity, f)


WORKDIR_LEASE = ".in_use.json"
WORKDIR_LEASE_S = 60.0  # refreshed every 20 s while the run works; a holder killed elsewhere blocks this long


@contextmanager
def hold_workdir(workdir: str, what: str) -> Iterator[None]:
    """Keep a second `what` out of `workdir` while this process works in it (a lease, WORKDIR/.in_use.json).

    Two runs in one folder would write the same data, shards and checkpoints at once. A lease whose
    process on this host is gone (killed, a restart) is taken over at once, an expired one too.
    """
    os.makedirs(workdir, exist_ok=True)
    try:
        lease = acquire_lease(resolve(workdir).join(WORKDIR_LEASE), WORKDIR_LEASE_S, break_if_gone=True)
    except LeaseHeld as held:
        raise CdkdError(f"{workdir} is in use by another {what} ({held}): wait for it to end or pass "
                        "another --workdir") from None
    with kept(lease):
        yield
