"""A run that waits longer than a limit for resources the cluster never gives fails, naming what it waits for.

Ray waits forever for a bundle no node can hold; on a cluster that means idle GPUs nobody notices. The
watch looks at the placement groups and actors created after it started that are still pending; when one
has waited longer than the limit, it interrupts the driver's main thread, and the caller reports them.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time
from typing import Callable


def _pending() -> dict[str, str]:
    """{id: description} of pending placement groups and actors in the cluster now."""
    import ray
    from ray._private import state

    found = {}
    for pg_id, pg in ray.util.placement_group_table().items():
        if pg.get("state") == "PENDING":
            bundles = ", ".join("{" + ", ".join(f"{k}: {v:g}" for k, v in b.items()) + "}"
                                for b in pg.get("bundles", {}).values())
            found[f"pg:{pg_id}"] = f"placement group [{bundles}] ({pg.get('stats', {}).get('scheduling_state', '')})"
    for actor_id, actor in state.actors().items():
        if actor.get("State") == "PENDING_CREATION":
            found[f"actor:{actor_id}"] = f"actor {actor.get('ActorClassName', '?')}"
    return found


def _interrupt_main_thread() -> None:
    """Ctrl-C for the main thread, as a real SIGINT: `_thread.interrupt_main()` alone only sets a flag,
    which a main thread blocked in a sleep or a wait notices when that returns (5 s late in the test)."""
    if callable(signal.getsignal(signal.SIGINT)):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    else:  # no Python handler: a real SIGINT could kill the process; interrupt_main's rules apply instead
        _thread.interrupt_main()


class ResourceWatch:
    """Context manager: interrupts the main thread if anything new stays pending longer than `limit_s`."""

    def __init__(self, limit_s: float | None, poll_s: float = 2.0, actor_grace_s: float = 120.0,
                 pending: Callable[[], dict[str, str]] = _pending):
        self.limit_s, self.poll_s, self.pending = limit_s, poll_s, pending
        self.actor_grace_s = actor_grace_s  # starting an actor's process can take a while on a busy node
        self.missing: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        baseline, first_seen = set(self.pending()), {}
        while not self._stop.wait(self.poll_s):
            now, pending = time.monotonic(), self.pending()
            first_seen = {k: first_seen.get(k, now) for k in pending if k not in baseline}
            stuck = [pending[k] for k, t in first_seen.items()
                     if now - t > (self.limit_s if k.startswith("pg:") else max(self.limit_s, self.actor_grace_s))]
            if stuck:
                self.missing = stuck
                _interrupt_main_thread()
                return

    def __enter__(self) -> "ResourceWatch":
        active = self.limit_s and threading.current_thread() is threading.main_thread()
        if active:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
