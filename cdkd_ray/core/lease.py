"""A lease object: one holder at a time for a folder, locally or on S3 (a shard split's writer, a quickstart).

The lease is created exclusively (O_EXCL locally, a conditional PUT on S3), names its holder (`host:pid`)
and expires, so a holder that was killed blocks others only until then; the holder refreshes it while it
works. A lease whose holder ran on this host and is gone can be broken at once (`break_if_gone`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import psutil

from cdkd_ray.core.storage import Location

UNREADABLE_GRACE_S = 2.0  # a lease just created locally is empty until its holder has written it


@dataclass
class Lease:
    """One holder's claim; refreshed while it works, released when it is done."""

    location: Location  # the lease object
    token: str
    seconds: float

    def body(self) -> bytes:
        now = time.time()
        return json.dumps({"holder": f"{socket.gethostname()}:{os.getpid()}", "token": self.token,
                           "since": now, "expires": now + self.seconds}).encode()

    def is_mine(self) -> bool:
        return (read_lease(self.location) or {}).get("token") == self.token

    def refresh(self) -> None:
        self.location.write_bytes(self.body())

    def release(self) -> None:
        if self.is_mine():
            try:
                self.location.fs.rm(self.location.path)
            except FileNotFoundError:
                pass  # broken by another between the check and the removal: not ours to remove then


class LeaseHeld(Exception):
    """Another holder has the lease (`held` is its record; empty when two took it at the same moment)."""

    def __init__(self, held: dict):
        super().__init__(describe_holder(held))
        self.held = held


def describe_holder(held: dict) -> str:
    if not held:
        return "another holder took the lease at the same moment"
    return (f"held by {held.get('holder')} since {time.ctime(held.get('since', 0))}, lease until "
            f"{time.ctime(held.get('expires', 0))}")


def read_lease(location: Location) -> dict | None:
    """The lease's record; None when there is none or it does not read (being written, or cut off)."""
    try:
        held = json.loads(location.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return held if isinstance(held, dict) else None


def live_holder(location: Location) -> str | None:
    """Who holds the unexpired lease at `location`, if anyone (not a holder on this host that has ended)."""
    held = read_lease(location) or {}
    return held.get("holder", "?") if held.get("expires", 0) > time.time() and not _holder_gone(held) else None


def acquire_lease(location: Location, seconds: float, break_if_gone: bool = False, wait_s: float = 0.0) -> Lease:
    """Take the lease at `location` or raise LeaseHeld once `wait_s` has passed; an expired one is broken, and
    with `break_if_gone` one whose holder's process on this host has ended."""
    lease = Lease(location, uuid.uuid4().hex, seconds)
    started, broken = time.time(), 0
    while True:
        if location.create_exclusive(lease.body()):
            return lease
        held, now = read_lease(location), time.time()
        if held is None and not location.is_remote and now < started + UNREADABLE_GRACE_S:
            time.sleep(0.05)  # its holder may be writing it right now
            continue
        if held and held.get("expires", 0) > now and not (break_if_gone and _holder_gone(held)):
            if now >= started + wait_s:
                raise LeaseHeld(held)
            time.sleep(min(1.0, started + wait_s - now))
            continue
        if broken == 2:
            raise LeaseHeld({})
        try:
            location.fs.rm(location.path)  # expired, gone or unreadable: its holder died; break it
        except FileNotFoundError:
            pass
        broken += 1


def _holder_gone(held: dict) -> bool:
    """Whether the holder ran on this host and its process has ended (a zombie, or its pid now another's)."""
    host, _, pid = str(held.get("holder", "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        process = psutil.Process(int(pid))
        return process.status() == psutil.STATUS_ZOMBIE or process.create_time() > held.get("since", 0) + 1
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


@contextmanager
def kept(lease: Lease) -> Iterator[Lease]:
    """Keep a taken lease for the block, refreshed every third of its time by a thread; released at the end."""
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(lease.seconds / 3):
            if not lease.is_mine():
                return  # broken by another (this process looked gone): do not take it back
            lease.refresh()

    thread = threading.Thread(target=refresh, name="lease-refresh", daemon=True)
    thread.start()
    try:
        yield lease
    finally:
        stop.set()
        thread.join()
        lease.release()
