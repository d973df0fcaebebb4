"""Checks before long work starts: packages, free disk, a free port. Fail in the first second, naming the fix."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from cdkd_ray.core.errors import CdkdError

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


LOCK_FILE = ".in_use.json"


@contextmanager
def hold_workdir(workdir: str, what: str) -> Iterator[None]:
    """Keep a second `what` out of `workdir` while this process works in it (WORKDIR/.in_use.json).

    Two runs in one folder would write the same data, shards and checkpoints at once. A lock whose process
    is gone (killed, the machine restarted) is taken over; one from another host is refused with its path.
    """
    path = os.path.join(workdir, LOCK_FILE)
    os.makedirs(workdir, exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is None and _seconds_since_written(path) < 2.0:
                time.sleep(0.05)  # its holder may be writing it right now
                continue
            if holder is not None and _holder_alive(holder):
                raise CdkdError(f"{workdir} is in use by another {what} (pid {holder.get('pid')} on "
                                f"{holder.get('host')}, started {holder.get('started')}): wait for it to end or "
                                f"pass another --workdir (if no run is going, delete {path})") from None
            _remove_quietly(path)  # left by a process that is gone
    with os.fdopen(fd, "w") as f:
        json.dump(mine, f)
    try:
        yield
    finally:
        if _lock_holder(path) == mine:
            _remove_quietly(path)


def _lock_holder(path: str) -> dict | None:
    """The lock's record; None when it is gone or unreadable (being written, or its holder killed then)."""
    try:
        with open(path) as f:
            holder = json.load(f)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _seconds_since_written(path: str) -> float:
    try:
        return time.time() - os.path.getmtime(path)
    except OSError:
        return float("inf")


def _holder_alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
